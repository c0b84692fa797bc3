"""`workflows.ablation` without training: each arm's config, budgets and equal steps, and the report
(statistics, verdicts, plots) from a made-up evaluation report."""

from __future__ import annotations

import json

import pytest

from ray_entigraph import storage
from ray_entigraph.arms import ARMS, REFERENCE_ARM
from ray_entigraph.config import derive, load_config
from ray_entigraph.workflows.ablation import (
    AblationRun,
    ablation_budgets,
    ablation_report,
    aggregate_arms,
    arm_config,
    common_budget_blocks,
    equal_steps,
    plan_runs,
    verdict,
)
from ray_entigraph.workflows.plots import SERIES_STYLES


def _cfg(*overrides):
    return load_config("configs/demo.yaml", list(overrides))


def test_every_ablation_arm_is_a_valid_config_that_differs_in_its_own_setting():
    config = _cfg()
    arms = {name: arm_config(config, name) for name in ARMS}
    assert set(arms) == {"entigraph", "grounded", "repaired", "dedup", "judged", "freeform", "temperature",
                         "focused", "qa-mix", "megadoc", "entigraph+raw", "raw-cpt"}
    for name, arm in arms.items():  # new synthetic rows, own output_dir
        assert (arm.output_dir != config.output_dir) == (name in ("freeform", "temperature", "focused", "qa-mix"))
    assert arms["focused"].synthesis.prompts == "entigraph-focused-v1"
    assert arms["qa-mix"].synthesis.prompts == "entigraph-qa-v1"
    assert arms["megadoc"].train.packing == "megadocs" and arms["entigraph"].train.packing == "shuffled"
    assert arms["freeform"].output_dir == storage.join(config.output_dir, "ablation", "freeform")
    assert arms["temperature"].output_dir.endswith(f"temperature-{config.ablation.temperature:g}")
    assert not arms["entigraph"].curate.enabled
    assert arms["grounded"].curate.enabled and arms["grounded"].curate.min_grounding == config.ablation.min_grounding
    assert arms["repaired"].curate.min_sentence_grounding == config.ablation.min_sentence_grounding
    assert arms["dedup"].curate.dedup and arms["dedup"].curate.min_grounding is None
    assert arms["judged"].curate.judge and arms["judged"].curate.min_judge_score == config.ablation.min_judge_score
    assert arms["freeform"].synthesis.prompts == "entigraph-freeform-v1"
    assert arms["temperature"].synthesis.sampling.temperature == config.ablation.temperature
    assert arms["entigraph+raw"].train.corpus == "synthetic+raw" and arms["raw-cpt"].train.corpus == "raw"
    assert [name for name, arm in ARMS.items() if not arm.synthetic] == ["raw-cpt"]  # no synthetic budget


def test_every_arm_is_a_valid_variant_with_its_own_plot_style():
    config = _cfg(f"ablation.variants=[{','.join(ARMS)}]")
    assert config.ablation.variants == list(ARMS) and REFERENCE_ARM in ARMS
    styles = [SERIES_STYLES[name] for name in ARMS]
    assert len(set(styles)) == len(styles)


def test_budgets_are_whole_blocks_every_arm_can_fill():
    assert ablation_budgets(36, 256, 1) == [36 * 256]
    assert ablation_budgets(36, 256, 3) == [9 * 256, 18 * 256, 36 * 256]
    assert ablation_budgets(1, 64, 4) == [64]


def test_equal_steps_follow_epochs_over_the_budget():
    config = _cfg("ablation.epochs=null", "train.epochs=2")  # block_len 256, global batch 4
    assert equal_steps(config, 36 * 256) == 2 * 36 // 4
    assert equal_steps(config, 10) == 1
    assert equal_steps(derive(config, ["ablation.epochs=4"]), 36 * 256) == 4 * 36 // 4


def test_ablation_report_compares_each_arm_with_entigraph_on_the_same_questions():
    qs = lambda bits: [{"qid": f"q{i}", "correct": bool(b)} for i, b in enumerate(bits)]  # noqa: E731
    models = {"base": qs([0] * 20), "entigraph-512": qs([0] * 10 + [1] * 10), "dedup-512": qs([0] * 10 + [1] * 10),
              "raw-cpt-512": qs([1] * 20)}
    summary = [{"label": k, "accuracy": sum(q["correct"] for q in v) / 20, "accuracy_ci95": (0.0, 1.0),
                "perplexity_knowledge": 3.0, "perplexity_forgetting": 20.0} for k, v in models.items()]
    report = {"summary": summary, "models": [{"label": k, "questions": v} for k, v in models.items()]}
    runs = [AblationRun(name, name.rsplit("-", 1)[0], 512, 0, 5) for name in models if name != "base"]
    config = _cfg("output_dir=memory://ablation-report")
    summary = ablation_report(config, report, runs, {n: 512 for n in models}, 1.0)
    rows = {r["arm"]: r for r in summary.rows}
    for url in (summary.plot_url, summary.arms_plot_url):  # accuracy against tokens, and per arm
        assert storage.read_bytes(url).startswith(b"\x89PNG")
    assert rows["entigraph-512"]["delta_vs_entigraph"] is None  # the reference itself
    assert rows["dedup-512"]["delta_vs_entigraph"] == 0
    assert rows["dedup-512"]["verdict_vs_entigraph"] == "within interval"
    assert rows["raw-cpt-512"]["delta_vs_entigraph"] == pytest.approx(0.5)
    assert rows["raw-cpt-512"]["verdict_vs_entigraph"] == "helped"
    # every other trained arm is also paired with the positive control, whatever the difference
    assert rows["dedup-512"]["delta_vs_raw_cpt"] == pytest.approx(-0.5)
    assert rows["dedup-512"]["delta_vs_raw_cpt_ci95"][1] < 0
    assert rows["raw-cpt-512"]["delta_vs_raw_cpt"] is None and rows["base"]["delta_vs_raw_cpt"] is None
    assert verdict((-0.3, -0.1)) == "hurt" and verdict(None) == "-"
    lines = summary.lines()
    assert lines[0].startswith("arm") and any(line.startswith("raw-cpt-512") and "helped" in line for line in lines)
    assert lines[-3] == f"report           {summary.report_url}"
    assert lines[-4].startswith("positive control passed: Raw CPT beat the base model by +100.0 pts")


def test_when_raw_cpt_does_not_beat_base_the_report_calls_the_comparison_uninformative():
    qs = lambda bits: [{"qid": f"a{i // 5}/{i}", "article_id": f"a{i // 5}", "correct": bool(b)}  # noqa: E731
                       for i, b in enumerate(bits)]
    # Raw CPT answers 5 more questions than base, all about one article: inside a cluster interval
    models = {"base": qs([0] * 30), "entigraph-512": qs([1] * 5 + [0] * 25), "raw-cpt-512": qs([1] * 5 + [0] * 25)}
    summary = [{"label": k, "accuracy": sum(q["correct"] for q in v) / 30, "accuracy_ci95": (0.0, 1.0),
                "perplexity_knowledge": 3.0, "perplexity_forgetting": 20.0} for k, v in models.items()]
    report = {"summary": summary, "models": [{"label": k, "questions": v} for k, v in models.items()]}
    runs = [AblationRun(name, name.rsplit("-", 1)[0], 512, 0, 5) for name in models if name != "base"]
    result = ablation_report(_cfg("output_dir=memory://ablation-control"), report, runs, {n: 512 for n in models}, 1.0)
    assert "positive control failed" in result.control
    assert result.control.endswith("so the comparison between arms is uninformative")
    assert json.loads(storage.read_text(result.report_url))["positive_control"] == result.control


def test_a_fixed_budget_is_not_shrunk_by_a_filter_and_raw_cpt_has_its_own_steps():
    config = _cfg("ablation.budget_tokens=8192", "ablation.raw_cpt_steps=60", "ablation.epochs=2")
    assert common_budget_blocks(config, {"entigraph": 80, "grounded": 12}) == 8192 // 256
    assert common_budget_blocks(_cfg(), {"entigraph": 80, "grounded": 12}) == 12  # the most aggressive filter
    arms = {v: arm_config(config, v) for v in ("entigraph", "grounded", "raw-cpt")}
    runs = {r.variant: r for r in plan_runs(config, arms, common_budget_blocks(config, {"entigraph": 80}))}
    assert runs["entigraph"].steps == runs["grounded"].steps == 2 * 32 // 4
    assert runs["raw-cpt"].steps == 60 and runs["raw-cpt"].config.train.max_steps == 60


def test_ablation_averages_seeds_per_question_and_pairs_arms_on_those_means():
    qs = lambda bits: [{"qid": f"q{i}", "correct": bool(b)} for i, b in enumerate(bits)]  # noqa: E731
    models = {"base": qs([0, 0, 0, 0]), "entigraph-512": qs([1, 1, 0, 0]), "entigraph-512-seed1": qs([1, 0, 0, 0]),
              "dedup-512": qs([1, 1, 1, 0]), "dedup-512-seed1": qs([1, 1, 1, 1])}
    assert [(q["qid"], q["correct"]) for q in aggregate_arms(models, {"e": ["entigraph-512", "entigraph-512-seed1"]})[
        "e"]] == [("q0", 1.0), ("q1", 0.5), ("q2", 0.0), ("q3", 0.0)]
    summary = [{"label": k, "accuracy": sum(q["correct"] for q in v) / 4, "accuracy_ci95": (0.0, 1.0),
                "perplexity_knowledge": 3.0 if "seed1" in k else 5.0, "perplexity_forgetting": 20.0}
               for k, v in models.items()]
    report = {"summary": summary, "models": [{"label": k, "questions": v} for k, v in models.items()]}
    runs = [AblationRun(n, n.split("-")[0], 512, 1 if "seed1" in n else 0, 5) for n in models if n != "base"]
    rows = {r["arm"]: r for r in ablation_report(_cfg("output_dir=memory://ablation-seeds"), report, runs,
                                                   {n: 512 for n in models}, 1.0).rows}
    assert set(rows) == {"base", "entigraph-512", "dedup-512"}
    e, d = rows["entigraph-512"], rows["dedup-512"]
    assert e["seeds"] == [0, 1] and e["accuracy"] == pytest.approx(0.375) and e["accuracy_per_seed"] == [0.5, 0.25]
    assert d["accuracy"] == pytest.approx(0.875) and d["delta_vs_entigraph"] == pytest.approx(0.5)
    assert d["perplexity_knowledge"] == pytest.approx(4.0)  # the mean over its seeds


def test_other_epochs_train_each_arm_in_a_new_folder_never_resuming_old_checkpoints():
    config = load_config("configs/demo.yaml", [])
    arms = {v: arm_config(config, v) for v in ("entigraph", "raw-cpt")}
    before = plan_runs(config, arms, 36)
    after = plan_runs(derive(config, [f"ablation.epochs={config.ablation.epochs + 3}"]), arms, 36)
    assert [r.name for r in before] == [r.name for r in after]  # the same arms in the report
    for old, new in zip(before, after):
        assert new.steps != old.steps and new.config.train.max_steps == new.steps
        assert new.config.train.name != old.config.train.name and new.config.train.name.endswith(f"-{new.steps}steps")


def test_each_training_seed_is_its_own_run_with_its_own_data_order():
    """Seeds multiply the runs: the run seed's arm keeps its plain name and train.seed unset, another seed gets
    its own name, folder and train.seed, and so another data order (the mixture is a seeded shuffle)."""
    from ray_entigraph.train.mix import plan_mixture

    config = _cfg("ablation.variants=[entigraph,grounded]", "ablation.seeds=[0,1]")
    arms = {name: arm_config(config, name) for name in config.ablation.variants}
    runs = plan_runs(config, arms, 36)
    assert [(r.variant, r.seed) for r in runs] == [("entigraph", 0), ("grounded", 0), ("entigraph", 1),
                                                   ("grounded", 1)]
    assert len({r.config.train.name for r in runs}) == 4
    plain, seeded = runs[0], runs[2]
    assert "seed" not in plain.name and plain.config.train.seed is None
    assert seeded.name.endswith("-seed1") and seeded.config.train.seed == 1
    seeds = [r.config.train.effective_seed(r.config.seed) for r in (plain, seeded)]
    orders = [plan_mixture(200, {"r": 50}, {"r": 1.0}, share=0.1, mode="replace", seed=s) for s in seeds]
    assert seeds[0] != seeds[1] and orders[0] != orders[1]


def test_the_arms_plot_title_names_the_synthetic_steps_and_raw_cpts_own():
    from ray_entigraph.workflows.plots import arms_title

    rows = [{"arm": "base", "variant": "base", "steps": 0}, {"arm": "e", "variant": "entigraph", "steps": 77},
            {"arm": "r", "variant": "raw-cpt", "steps": 120}]
    assert arms_title(rows) == "Ablation at equal synthetic tokens and steps (77 steps; Raw CPT 120 steps)"
    assert arms_title(rows[:2]) == "Ablation at equal synthetic tokens and steps (77 steps)"
