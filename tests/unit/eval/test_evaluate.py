"""Evaluation's choice of an option (eval/evaluate.py)."""

from ray_entigraph.eval.evaluate import pick


def test_pick_takes_the_highest_score_and_the_first_option_on_a_tie():
    assert pick([-2.0, -0.5, -1.0]) == 1
    assert pick([-1.0, -0.5, -0.5]) == 1
    assert pick([0.0]) == 0
