"""The run folder's layout and the identities that name folders and requests (layout.py): each folder where
the module docstring says it is, and identities stable for the same config and different for anything that
changes the output."""

from __future__ import annotations

import os

import pytest

from ray_entigraph.config import derive, load_config
from ray_entigraph.layout import (
    Layout,
    base_model_name,
    curation_id,
    extraction_id,
    extraction_key,
    judge_id,
    shard_basename,
    synthesis_id,
    train_url,
)

RUN = "s3://bucket/run"
JUDGE = dict(model="m", prompt_version="judge-v1", constrained=False, sampling={"temperature": 0.0})


def test_folder_names():
    layout = Layout(RUN, num_partitions=8)
    assert layout.config_url == f"{RUN}/config.yaml" and layout.run_state_url == f"{RUN}/run.json"
    assert layout.layout_url == f"{RUN}/_layout.json" and layout.lease_url == f"{RUN}/_lease.json"
    assert layout.step_marker_url("sweep/budget-1") == f"{RUN}/_steps/sweep-budget-1.json"
    assert [layout.documents.url, layout.entities("e1").url, layout.synthetic("s1").url] == [
        f"{RUN}/documents", f"{RUN}/entities/e1", f"{RUN}/synthetic/s1"]
    assert layout.documents.part(3).url == f"{RUN}/documents/p=00003"
    assert layout.synthetic("s1").manifest_url(3) == f"{RUN}/synthetic/s1/_manifest/p=00003.json"
    assert layout.synthetic("s1").summary_url == f"{RUN}/synthetic/s1/_manifest/_stage.json"
    assert layout.files_url("f1.json") == f"{RUN}/documents/_files/f1.json"
    assert layout.blocks("replay:wiki").url == f"{RUN}/train/blocks/replay-wiki"
    assert layout.training("sweep/b1", "model") == f"{RUN}/sweep/b1/model"
    assert layout.eval_url("report.json") == f"{RUN}/eval/report.json"
    assert Layout.judged_stage("abc") == "judged/abc" and Layout.curated_stage("def") == "curated/def"
    assert layout.stage_folders() == {"documents": "documents"}
    assert layout.stage_folders({"curated": "curated/def"})["curated"] == "curated/def"
    assert Layout("/tmp/run").url("a", "b") == os.path.join("/tmp/run", "a", "b")
    assert shard_basename(f"{RUN}/synthetic/part-ab12.parquet") == "part-ab12"


def test_the_configured_training_folder_and_base_model():
    config = load_config(None, [f"output_dir={RUN}", "train.name=cpt/small"])
    assert train_url(config, "metrics.jsonl") == f"{RUN}/cpt/small/metrics.jsonl"
    assert base_model_name(config) == config.model.name
    other = derive(config, ["train.base_model=HuggingFaceTB/SmolLM2-360M"])
    assert base_model_name(other) == "HuggingFaceTB/SmolLM2-360M"


def test_the_same_config_gives_the_same_identities():
    a, b = load_config(None, ["seed=3"]), load_config(None, ["seed=3"])  # loaded twice: equal, not identical
    assert extraction_key(a, "d1", prompt_version="entigraph-v1", constrained=False) == extraction_key(
        b, "d1", prompt_version="entigraph-v1", constrained=False)
    assert judge_id(**JUDGE) == judge_id(**dict(JUDGE, sampling={"temperature": 0.0}))
    assert curation_id(a.curate, "s1") == curation_id(b.curate, "s1")
    for ident in (extraction_id, ):
        assert ident(a, prompt_version="v", constrained=False) == ident(b, prompt_version="v", constrained=False)
    assert synthesis_id(a, prompt_version="v", extraction="e") == synthesis_id(b, prompt_version="v", extraction="e")


@pytest.mark.parametrize("overrides, kwargs", [
    ([], {"prompt_version": "entigraph-v2"}),  # another prompt version: another request
    ([], {"constrained": True}),
    ([], {"doc_id": "d2"}),
    (["seed=4"], {}),
    (["model.name=HuggingFaceTB/SmolLM2-360M"], {}),
    (["extract.sampling.temperature=0.9"], {}),
    (["extract.max_attempts=1"], {}),
    (["extract.max_entities=5"], {}),
], ids=["prompt-version", "constrained", "doc", "seed", "model", "temperature", "max-attempts", "max-entities"])
def test_extraction_key_changes_with_what_decides_the_extraction(overrides, kwargs):
    config = load_config(None, ["seed=3"])
    base = {"doc_id": "d1", "prompt_version": "entigraph-v1", "constrained": False}
    assert extraction_key(derive(config, overrides), **{**base, **kwargs}) != extraction_key(config, **base)


def test_extraction_key_ignores_what_does_not_touch_the_extraction():
    config = load_config(None, [])
    other = derive(config, ["synthesis.sampling.temperature=0.3", "plan.max_triplets_per_doc=2", "output_dir=/x"])
    kwargs = {"prompt_version": "entigraph-v1", "constrained": False}
    assert extraction_key(config, "d1", **kwargs) == extraction_key(other, "d1", **kwargs)


@pytest.mark.parametrize("field, value", [("model", "m2"), ("prompt_version", "judge-v2"), ("constrained", True),
                                          ("sampling", {"temperature": 0.5})])
def test_judge_id_changes_with_the_judge_model_prompts_and_decoding(field, value):
    assert judge_id(**{**JUDGE, field: value}) != judge_id(**JUDGE)


def test_curation_id_changes_with_settings_and_inputs_but_not_with_enabled():
    def curate(*overrides):
        return load_config("configs/demo.yaml", list(overrides)).curate

    base = curate("curate.min_grounding=0.5")
    assert curation_id(base, "a") != curation_id(base, "b")
    assert curation_id(base, "a") != curation_id(curate("curate.min_grounding=0.6"), "a")
    assert curation_id(base, "a") == curation_id(curate("curate.min_grounding=0.5", "curate.enabled=true"), "a")


@pytest.mark.parametrize("overrides", [
    ["synthesis.prompts=entigraph-freeform-v1"], ["seed=4"], ["model.name=HuggingFaceTB/SmolLM2-360M"],
    ["synthesis.sampling.temperature=0.1"], ["extract.max_entities=5"]])
def test_synthesis_id_names_every_setting_that_changes_a_row(overrides):
    """Rows of another prompt version, model, sampling, seed or extraction live in another synthetic/ folder."""
    from ray_entigraph.context import RunContext

    base = RunContext.resolve(load_config("configs/demo.yaml", []), list_inputs=False)
    other = RunContext.resolve(load_config("configs/demo.yaml", overrides), list_inputs=False)
    assert base.synthesis_id != other.synthesis_id and base.synthetic_identity != other.synthetic_identity
    budget = RunContext.resolve(load_config("configs/demo.yaml", ["plan.max_tasks_total=5"]), list_inputs=False)
    assert budget.synthesis_id == base.synthesis_id  # the same rows, fewer of them planned
    assert budget.synthetic_identity != base.synthetic_identity


def test_layout_version_recorded_once_and_another_version_refused(tmp_path):
    from ray_entigraph import storage
    from ray_entigraph.errors import LayoutVersionError
    from ray_entigraph.layout import LAYOUT_VERSION

    new = Layout(str(tmp_path / "new"))
    assert new.layout_version() is None
    new.check_version()  # a new folder: nothing to refuse, nothing written without create
    assert new.layout_version() is None
    new.check_version(create=True)
    assert new.layout_version() == LAYOUT_VERSION
    new.check_version(create=True)  # idempotent
    # a run folder from before versions were recorded (layout 1): a config.yaml and no _layout.json
    old = Layout(str(tmp_path / "old"))
    storage.write_text(old.config_url, "seed: 0\n")
    with pytest.raises(LayoutVersionError, match=r"layout version 1.*reads and writes layout 2.*Fix: set output_dir"):
        old.check_version(create=True)
    storage.write_text(new.layout_url, '{"layout_version": 3}')
    with pytest.raises(LayoutVersionError, match="layout version 3"):
        new.check_version()
