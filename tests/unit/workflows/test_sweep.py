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


def test_raw_cpt_trains_its_own_steps_not_a_few_passes_over_the_documents():
    from ray_entigraph.workflows.sweep import raw_cpt_steps

    config = load_config("configs/demo.yaml", ["train.epochs=2"])  # block_len 256, global batch 4
    assert raw_cpt_steps(config, 40 * 256) == 2 * 40 // 4
    assert raw_cpt_steps(load_config("configs/demo.yaml", ["sweep.raw_cpt_steps=90"]), 40 * 256) == 90


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
    # no paired change in this made-up report: the control cannot be read, and the summary says so
    assert any(line.startswith("positive control: no Raw CPT arm") for line in lines)
    assert lines[-1] == f"plot             {summary.plot_url}"


def test_a_sweep_with_a_new_budget_trains_only_that_arm_and_evaluates_every_arm_again(tmp_path, monkeypatch, capsys):
    import importlib
    from dataclasses import dataclass
    from types import SimpleNamespace

    from ray_entigraph import schema

    # the module, not the `sweep` function that ray_entigraph.workflows exports under the same name
    sweep_module = importlib.import_module("ray_entigraph.workflows.sweep")

    @dataclass
    class _Done:
        rows: int = 0
        synthetic_tokens_used: int = 0

        def lines(self) -> list[str]:
            return []

    calls: dict[str, list] = {"synthesize": [], "train": [], "eval": []}

    def fake_eval(config, models, out_url):
        calls["eval"].append([label for label, _ in models])
        summary = [{"label": label, "accuracy": 0.3 + 0.01 * i, "accuracy_ci95": [0.2, 0.4]}
                   for i, (label, _) in enumerate(models)]
        storage.write_text(storage.join(out_url, "report.json"), json.dumps({"summary": summary}))
        return _Done()

    ctx = SimpleNamespace(input_identity=lambda: "inputs-v1")
    monkeypatch.setattr(sweep_module, "preflight", lambda config, command: (ctx, []))
    monkeypatch.setattr(sweep_module, "synthesize",
                        lambda config, ctx=None: calls["synthesize"].append(1) or _Done(rows=40))
    monkeypatch.setattr(sweep_module, "init_ray", lambda config: None)
    monkeypatch.setattr(sweep_module, "run_pack", lambda config: {schema.SYNTHETIC_SOURCE: 10})
    trained: list = []  # every training's config
    monkeypatch.setattr(sweep_module, "run_train", lambda arm: calls["train"].append(arm.train.max_synthetic_tokens)
                        or trained.append(arm) or _Done(synthetic_tokens_used=arm.train.max_synthetic_tokens or 0))
    monkeypatch.setattr(sweep_module, "run_eval", fake_eval)
    monkeypatch.setattr(sweep_module, "accuracy_vs_tokens_plot", lambda points, fitted, url: None)

    def sweep(budgets: str, baselines: str = "[]"):
        for key in calls:
            calls[key].clear()
        summary = sweep_module.sweep(load_config(None, [f"output_dir={tmp_path}", f"sweep.budgets={budgets}",
                                                        f"sweep.baselines={baselines}", "train.block_len=64"]))
        return summary, capsys.readouterr().out

    first, _ = sweep("[128]")
    assert calls == {"synthesize": [1], "train": [128], "eval": [["base", "entigraph-128"]]}
    assert [p["arm"] for p in first.points] == ["base", "entigraph-128"]

    second, log = sweep("[128, 256]")
    assert calls == {"synthesize": [], "train": [256], "eval": [["base", "entigraph-128", "entigraph-256"]]}
    assert "sweep/train-entigraph-128: done earlier" in log and "sweep/train-entigraph-256: starting" in log
    assert "sweep/eval: starting" in log
    assert [(p["arm"], p["synthetic_tokens"]) for p in second.points] == [
        ("base", 0), ("entigraph-128", 128), ("entigraph-256", 256)]

    third, log = sweep("[256, 128]")  # the same budgets in another order: nothing runs
    assert calls == {"synthesize": [], "train": [], "eval": []}
    assert "starting" not in log and log.count("done earlier") == 4  # synthesize, two trainings, the evaluation
    assert third.points == second.points

    # the baselines: Raw CPT at its own steps (the largest budget's), Rephrase synthesized and trained in its own
    # output_dir; every arm evaluated again in one report
    trained.clear()
    _, log = sweep("[128, 256]", "[raw, rephrase]")
    assert calls["synthesize"] == [1] and calls["train"] == [None, None]
    raw, rephrase = trained
    steps = sweep_module.raw_cpt_steps(load_config(None, ["train.block_len=64"]), 256)
    assert raw.train.corpus == "raw" and raw.train.max_steps == steps and raw.train.epochs >= steps
    assert raw.train.name.startswith("sweep/raw-cpt-") and raw.output_dir == str(tmp_path)
    assert rephrase.synthesis.augmenter == "rephrase" and rephrase.output_dir.endswith("sweep/rephrase")
    assert calls["eval"] == [["base", "entigraph-128", "entigraph-256", "raw-cpt", "rephrase"]]


def test_sweep_over_stream_shares_trains_one_arm_per_mixture_at_equal_steps():
    """sweep.mixtures: one arm per mixture of train.streams (the human text and each format by token share),
    each trained for train.max_steps; Raw CPT the same steps, on the documents alone."""
    import pytest

    from ray_entigraph.errors import ConfigError
    from ray_entigraph.workflows.sweep import sweep_arms

    mixtures = "sweep.mixtures=[{documents: 0.7, 'format:faq': 0.3}, {documents: 0.3, 'format:faq': 0.7}]"
    config = load_config(None, ["synthesis.augmenter=rewrite", "synthesis.prompts=rewrite-v1", mixtures,
                                "train.max_steps=30", "train.streams={documents: 1.0}"])
    arms = dict(sweep_arms(config, 100))
    assert list(arms) == ["mix-0", "mix-1", "raw-cpt"]
    assert arms["mix-0"].train.streams == {"documents": 0.7, "format:faq": 0.3}  # replaced, not merged
    assert arms["mix-1"].train.streams == {"documents": 0.3, "format:faq": 0.7}
    assert {a.train.max_steps for a in arms.values()} == {30} and arms["mix-1"].train.epochs >= 64
    assert arms["raw-cpt"].train.corpus == "raw" and not arms["raw-cpt"].train.streams
    assert arms["mix-0"].train.name == "sweep/mix-0"
    with pytest.raises(ConfigError, match="train.max_steps"):
        sweep_arms(load_config(None, [mixtures]), 100)
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(None, ["sweep.mixtures=[{documents: 0.7}]"])
