"""`workflows.sweep` without training: the token budgets, and the report (points, curve fit, plot, JSON)
from a made-up evaluation report."""

from __future__ import annotations

import json

from ray_entigraph import storage
from ray_entigraph.config import load_config
from ray_entigraph.workflows.sweep import sweep_budgets, sweep_report


def test_sweep_budgets_halve_down_from_the_corpus_or_are_the_configured_ones():
    config = load_config(None, ["train.block_len=64", "sweep.num_budgets=4"])
    assert sweep_budgets(config, 40) == [5 * 64, 10 * 64, 20 * 64, 40 * 64]
    assert sweep_budgets(config, 2) == [64, 128]  # duplicates removed, at least one block
    assert sweep_budgets(load_config(None, ["sweep.budgets=[900, 100]"]), 40) == [100, 900]


def test_sweep_report_fits_the_entigraph_points_and_writes_plot_and_json():
    accuracy = {"base": 0.30, "entigraph-320": 0.40, "entigraph-640": 0.47, "entigraph-1280": 0.52,
                "entigraph-2560": 0.54, "raw-cpt": 0.33, "rephrase": None}
    report = {"summary": [{"label": k, "accuracy": a, "accuracy_ci95": None if a is None else [a - 0.05, a + 0.05]}
                          for k, a in accuracy.items()]}
    tokens = {"entigraph-320": 320, "entigraph-640": 640, "entigraph-1280": 1280, "entigraph-2560": 2560,
              "raw-cpt": 0}
    config = load_config(None, ["output_dir=memory://sweep-report"])
    summary = sweep_report(config, report, tokens, 1.0)
    assert [p["arm"] for p in summary.points] == ["base", "entigraph-320", "entigraph-640", "entigraph-1280",
                                                  "entigraph-2560", "raw-cpt"]  # an arm without accuracy is left out
    assert [p["series"] for p in summary.points][1:5] == ["entigraph"] * 4
    assert summary.fit is not None and summary.fit["num_points"] == 5 and summary.fit["rises"]
    assert storage.read_bytes(summary.plot_url).startswith(b"\x89PNG")
    written = json.loads(storage.read_text(summary.report_url))
    assert written["points"] == summary.points and written["fit"] == summary.fit
    lines = summary.lines()
    assert lines[0].startswith("base") and any(line.startswith("fit ") for line in lines)
    assert lines[-1] == f"plot             {summary.plot_url}"
