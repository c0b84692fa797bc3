"""`ablate` end to end on a tiny configuration: arms built, trained at equal tokens and steps, evaluated."""

from __future__ import annotations

import json

import pytest

from ray_entigraph import schema, storage

from .test_eval_run import SMALL
from .test_pipeline import tiny_config

pytestmark = pytest.mark.timeout(900)


def test_ablation_trains_every_arm_at_equal_tokens_and_steps(ray_local, tiny_model_dir, tmp_path):
    from ray_entigraph.workflows import ablate

    out = tmp_path / "ablation"
    # the tiny model writes random tokens: every row would fail a real grounding threshold, so the grounded
    # arm here only checks the wiring (threshold 0); docs/faithfulness.md has the real run
    config = tiny_config(tiny_model_dir, "builtin:demo", out, *SMALL,
                         "ablation.variants=[entigraph,grounded]", "ablation.min_grounding=0.0")
    summary = ablate(config)
    arms = {r["variant"]: r for r in summary.rows}
    # two arms, one seed (Raw CPT trains in the sweep test and test_train.py; more seeds are more runs of the same
    # code, planned in tests/unit/workflows/test_ablation.py; two arms keep this test short)
    assert set(arms) == {"base", "entigraph", "grounded"}
    trained = [r for r in summary.rows if r["variant"] != "base"]
    assert len({r["steps"] for r in trained}) == 1 and trained[0]["steps"] >= 1  # equal steps
    synthetic = [r["synthetic_tokens"] for r in trained]
    assert len(set(synthetic)) == 1 and synthetic[0] > 0  # equal synthetic tokens
    for r in trained:
        assert r["seeds"] == [0] and len(r["accuracy_per_seed"]) == 1
        # each arm's folder names its step count
        metrics = (out / "ablation" / f"{r['arm']}-{r['steps']}steps" / "metrics.jsonl").read_text().splitlines()
        assert json.loads(metrics[-1])["step"] == r["steps"]  # each training really ran that many steps
        assert (out / "ablation" / f"{r['arm']}-{r['steps']}steps" / "model" / "model.safetensors").exists()
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] and r["delta_vs_base_ci95"] is not None
    assert next(r for r in trained if r["variant"] == "grounded")["delta_vs_entigraph_ci95"] is not None
    # the curated arm trained on a curated copy, with scores, beside the untouched synthetic corpus (dedup is
    # tested in test_curate.py)
    curated = sorted(p.name for p in (out / "curated").iterdir())
    assert len(curated) == 1
    for cid in curated:
        rows = storage.StageStore(str(out), f"{schema.CURATE}/{cid}").read(schema=schema.CURATED).to_pylist()
        assert rows and all(0.0 <= r["grounding"] <= 1.0 for r in rows)
    # the arm on the main synthetic rows is measured (grounding, copy rate, decontamination); a curated copy is not
    measured = next(r for r in trained if r["variant"] == "entigraph")
    assert 0.0 <= measured["mean_grounding"] <= 1.0 and measured["contaminated_questions"] >= 0
    assert next(r for r in trained if r["variant"] == "grounded")["mean_grounding"] is None
    assert summary.control.startswith("positive control: no Raw CPT arm")  # not among this test's arms
    assert (out / "ablation" / "accuracy_vs_tokens.png").stat().st_size > 5000
    assert (out / "ablation" / "arms.png").stat().st_size > 5000
    assert json.loads((out / "ablation" / "ablation.json").read_text())["rows"] == summary.rows
    assert any(line.startswith("grounded-") for line in summary.lines())
