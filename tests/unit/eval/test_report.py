"""The evaluation report's statistics (eval/report.py): bootstrap intervals and the paired change against
the base model."""

from __future__ import annotations

import pytest

from ray_entigraph.eval.report import bootstrap_ci, summarize


def test_bootstrap_interval_and_paired_change():
    lo, hi = bootstrap_ci([1.0] * 30 + [0.0] * 70)
    assert lo < 0.3 < hi and hi - lo < 0.25
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    results = [
        {"label": "base", "model": "m", "protocol": "options", "wall_s": 1,
         "questions": [{"qid": str(i), "correct": i < 5, "pick": 0} for i in range(30)], "accuracy": 5 / 30},
        {"label": "trained", "model": "t", "protocol": "options", "wall_s": 1,
         "questions": [{"qid": str(i), "correct": i < 20, "pick": 0} for i in range(30)], "accuracy": 20 / 30},
    ]
    rows = summarize(results, "base")
    assert "delta_vs_base" not in rows[0]
    assert rows[1]["delta_vs_base"] == pytest.approx(0.5)
    assert rows[1]["delta_vs_base_ci95"][0] > 0.2  # every changed question changed in the same direction


def test_cluster_bootstrap_is_wider_when_an_articles_questions_move_together():
    # 10 articles of 5 questions; each article all right or all wrong: 50 answers carry 10 outcomes' worth
    values = [1.0 if a < 4 else 0.0 for a in range(10) for _ in range(5)]
    articles = [f"a{a}" for a in range(10) for _ in range(5)]
    q_lo, q_hi = bootstrap_ci(values)
    c_lo, c_hi = bootstrap_ci(values, articles)
    assert c_lo <= 0.4 <= c_hi and (c_hi - c_lo) > 1.8 * (q_hi - q_lo)
    assert bootstrap_ci(values, articles) == (c_lo, c_hi)  # seeded


def test_paired_change_resamples_articles():
    from ray_entigraph.eval.report import paired_delta

    base = [{"qid": f"{a}/{i}", "article_id": f"{a}", "correct": False} for a in range(6) for i in range(5)]
    trained = [{**q, "correct": q["article_id"] in {"0", "1"}} for q in base]  # two articles learned, wholly
    delta, (lo, hi) = paired_delta(trained, base)
    assert delta == pytest.approx(1 / 3) and lo == 0.0 and hi > 0.6


def test_verdicts_read_the_control_first_then_say_plainly_whether_each_model_beat_base():
    from ray_entigraph.eval.report import verdict_lines

    rows = [{"label": "base"},
            {"label": "trained", "delta_vs_base": 0.05, "delta_vs_base_ci95": (-0.02, 0.12)},
            {"label": "raw-cpt", "delta_vs_base": 0.2, "delta_vs_base_ci95": (0.1, 0.3)}]
    lines = verdict_lines(rows)
    assert lines[0] == "positive control passed: Raw CPT beat the base model by +20.0 pts [+10.0, +30.0]"
    assert lines[1] == "trained did not beat the base model outside its 95% interval (+5.0 pts [-2.0, +12.0])"
    rows[2]["delta_vs_base_ci95"] = (-0.05, 0.4)
    assert verdict_lines(rows)[0].endswith("so the comparison between arms is uninformative")
