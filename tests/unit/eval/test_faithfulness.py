"""Corpus faithfulness figures (eval/faithfulness.py): looping rows, and partitions' sums combined."""

from ray_entigraph.eval.faithfulness import combine, loops


def test_a_text_stuck_on_one_phrase_loops_and_ordinary_prose_does_not():
    stuck = "The guild met at Orrin Hall. " + "The guild met at the hall. " * 8
    prose = ("Mara Vell founded the guild in 1841 in the harbour town of Orrin. Its members made nets for the "
             "fishing fleet, and in 1862 they built a hall of their own near the quay, where they still meet.")
    assert loops(stuck) and not loops(prose) and not loops("short text")


def test_partitions_combine_into_means_over_rows_and_a_count_of_questions():
    parts = [{"rows": 2, "grounding_sum": 1.0, "copy_sum": 0.2, "copy_rows": 2, "loop_rows": 1,
              "contaminated": {"q1": 1}},
             {"rows": 2, "grounding_sum": 0.6, "copy_sum": 0.0, "copy_rows": 1, "loop_rows": 0,
              "contaminated": {"q1": 2, "q2": 1}},
             {"rows": 0, "grounding_sum": 0.0, "copy_sum": 0.0, "copy_rows": 0, "loop_rows": 0, "contaminated": {}}]
    out = combine(parts)
    assert out["rows"] == 4 and abs(out["mean_grounding"] - 0.4) < 1e-9 and abs(out["copy_rate"] - 0.2 / 3) < 1e-9
    assert out["loop_share"] == 0.25 and out["contaminated_questions"] == 2
    assert out["contaminated"] == {"q1": 3, "q2": 1}
    assert combine([])["mean_grounding"] is None
