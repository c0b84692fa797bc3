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
