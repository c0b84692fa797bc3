"""Pure parts of the model-based grounding check (curate.judge) and of the ablation's report."""

from __future__ import annotations

import pytest

from ray_entigraph.config import CurateConfig, derive, load_config
from ray_entigraph.engines import GenerationResult
from ray_entigraph.prompts import load_prompt_set
from ray_entigraph.stages.judge import (RATING_SCHEMA, judge_config, judge_request, judge_stage, judged_row,
                                        parse_rating)


def _cfg(*overrides):
    return load_config("configs/demo.yaml", list(overrides))


@pytest.mark.parametrize("answer, rating", [
    ("4", 4), (" 5\n", 5), ('{"rating": 2}', 2), ("I would say 3 out of 5.", 3), ("4/5", 4),
    ("Rating 1 - mostly invented", 1), ("1. The document supports only the first claim.", 1),
])
def test_parse_rating_reads_json_or_the_first_digit_from_1_to_5(answer, rating):
    assert parse_rating(answer) == rating


@pytest.mark.parametrize("answer", ["", "The text is fine.", "0", "7", "10", "2.5", "1.5/10", '{"rating": 9}'])
def test_parse_rating_refuses_to_guess(answer):
    assert parse_rating(answer) is None


def test_judge_request_puts_the_document_first_and_constrains_only_when_the_engine_can():
    template = load_prompt_set("judge-v1").judge
    row = {"task_id": "t1", "doc_id": "d1", "text": "The Guild was founded in 1742."}
    doc = {"doc_id": "d1", "title": "Kestavel", "text": "The Harbour Guild of Kestavel was founded in 1742."}
    free = judge_request(template, row, doc, constrained=False)
    user = free.messages[-1]["content"]
    assert user.index(doc["text"]) < user.index(row["text"])  # shared document prefix, then the text
    assert free.prefix_key == "d1" and free.key == "t1" and free.sampling.temperature == 0.0
    assert free.response_prefix == "Rating: " and free.json_schema is None
    constrained = judge_request(template, row, doc, constrained=True)
    assert constrained.response_prefix == "" and constrained.json_schema == RATING_SCHEMA


def test_judged_row_scales_the_rating_and_records_why_there_is_none():
    row = {"task_id": "t1", "doc_id": "d1"}
    out, reason = judged_row(row, GenerationResult(key="t1", text="4"), "m", "judge-v1")
    assert reason is None and out["rating"] == 4 and out["judge_score"] == pytest.approx(0.75)
    out, reason = judged_row(row, GenerationResult(key="t1", text="It is well written."), "m", "judge-v1")
    assert out is None and "no rating" in reason and "It is well written." in reason
    out, reason = judged_row(row, GenerationResult.failed("t1", "prompt too long"), "m", "judge-v1")
    assert out is None and reason == "prompt too long"


def test_judge_identity_follows_the_judge_model_and_not_the_filter_threshold():
    config = _cfg("curate.enabled=true", "curate.judge=true")
    same = derive(config, ["curate.min_judge_score=0.5"])
    other = derive(config, ["curate.judge_model=some-org/bigger-model"])
    assert judge_stage(config) == judge_stage(same) and judge_stage(config) != judge_stage(other)
    assert judge_stage(config).startswith("judged/")
    assert judge_config(other).model.name == "some-org/bigger-model" and judge_config(config) is config


def test_min_judge_score_without_a_judge_is_a_config_error_naming_the_fix():
    with pytest.raises(Exception, match="curate.judge=true"):
        _cfg("curate.min_judge_score=0.5")


def test_curate_row_drops_rows_the_judge_rated_low_or_not_at_all():
    from ray_entigraph.stages.curate import curate_row
    from ray_entigraph.text.grounding import DocumentIndex

    index = DocumentIndex.from_text("The Harbour Guild of Kestavel was founded in 1742 by Mara Odell, a salt trader.")
    cfg = CurateConfig(enabled=True, judge=True, min_judge_score=0.75, min_chars=10)
    row = {"task_id": "a", "text": "The Harbour Guild was founded in 1742 by Mara Odell."}
    kept, category, _ = curate_row(row, index, cfg, "", judge_score=1.0)
    assert category is None and kept["judge_score"] == 1.0
    kept, category, reason = curate_row(row, index, cfg, "", judge_score=0.5)
    assert kept is None and category == "judge" and "0.50 < min_judge_score 0.75" in reason
    kept, category, reason = curate_row(row, index, cfg, "", judge_score=None)
    assert kept is None and category == "judge" and "no rating" in reason
    # scores alone (no threshold) filter nothing
    kept, category, _ = curate_row(row, index, CurateConfig(enabled=True, judge=True, min_chars=10), "", judge_score=0.0)
    assert category is None and kept["judge_score"] == 0.0


def test_ablation_report_compares_each_arm_with_entigraph_on_the_same_questions():
    from ray_entigraph.workflow import AblationRun, _ablation_report, verdict

    qs = lambda bits: [{"qid": f"q{i}", "correct": bool(b)} for i, b in enumerate(bits)]  # noqa: E731
    models = {"base": qs([0] * 20), "entigraph-512": qs([0] * 10 + [1] * 10), "dedup-512": qs([0] * 10 + [1] * 10),
              "raw-cpt-512": qs([1] * 20)}
    summary = [{"label": k, "accuracy": sum(q["correct"] for q in v) / 20, "accuracy_ci95": (0.0, 1.0),
                "perplexity_knowledge": 3.0, "perplexity_forgetting": 20.0} for k, v in models.items()]
    report = {"summary": summary, "models": [{"label": k, "questions": v} for k, v in models.items()]}
    runs = [AblationRun(name, name.rsplit("-", 1)[0], 512, 0, 5) for name in models if name != "base"]
    config = _cfg("output_dir=memory://ablation-report")
    summary = _ablation_report(config, report, runs, {n: 512 for n in models}, 1.0)
    rows = {r["arm"]: r for r in summary.rows}
    from ray_entigraph import storage

    for url in (summary.plot_url, summary.arms_plot_url):  # accuracy against tokens, and per arm
        assert storage.read_bytes(url).startswith(b"\x89PNG")
    assert rows["entigraph-512"]["delta_vs_entigraph"] is None  # the reference itself
    assert rows["dedup-512"]["delta_vs_entigraph"] == 0 and rows["dedup-512"]["verdict_vs_entigraph"] == "within interval"
    assert rows["raw-cpt-512"]["delta_vs_entigraph"] == pytest.approx(0.5)
    assert rows["raw-cpt-512"]["verdict_vs_entigraph"] == "helped"
    assert verdict((-0.3, -0.1)) == "hurt" and verdict(None) == "-"


def test_ablation_averages_seeds_per_question_and_pairs_arms_on_those_means():
    from ray_entigraph.workflow import AblationRun, _ablation_report, aggregate_arms

    qs = lambda bits: [{"qid": f"q{i}", "correct": bool(b)} for i, b in enumerate(bits)]  # noqa: E731
    models = {"base": qs([0, 0, 0, 0]), "entigraph-512": qs([1, 1, 0, 0]), "entigraph-512-seed1": qs([1, 0, 0, 0]),
              "dedup-512": qs([1, 1, 1, 0]), "dedup-512-seed1": qs([1, 1, 1, 1])}
    assert aggregate_arms(models, {"e": ["entigraph-512", "entigraph-512-seed1"]})["e"] == [
        {"qid": "q0", "correct": 1.0}, {"qid": "q1", "correct": 0.5}, {"qid": "q2", "correct": 0.0},
        {"qid": "q3", "correct": 0.0}]
    summary = [{"label": k, "accuracy": sum(q["correct"] for q in v) / 4, "accuracy_ci95": (0.0, 1.0),
                "perplexity_knowledge": 3.0 if "seed1" in k else 5.0, "perplexity_forgetting": 20.0}
               for k, v in models.items()]
    report = {"summary": summary, "models": [{"label": k, "questions": v} for k, v in models.items()]}
    runs = [AblationRun(n, n.split("-")[0], 512, 1 if "seed1" in n else 0, 5) for n in models if n != "base"]
    rows = {r["arm"]: r for r in _ablation_report(_cfg("output_dir=memory://ablation-seeds"), report, runs,
                                                    {n: 512 for n in models}, 1.0).rows}
    assert set(rows) == {"base", "entigraph-512", "dedup-512"}
    e, d = rows["entigraph-512"], rows["dedup-512"]
    assert e["seeds"] == [0, 1] and e["accuracy"] == pytest.approx(0.375) and e["accuracy_per_seed"] == [0.5, 0.25]
    assert d["accuracy"] == pytest.approx(0.875) and d["delta_vs_entigraph"] == pytest.approx(0.5)
    assert d["perplexity_knowledge"] == pytest.approx(4.0)  # the mean over its seeds
