"""The run context (context.py): the identities it resolves from a config, without Ray or a model."""

from __future__ import annotations

from ray_entigraph.config import derive, load_config
from ray_entigraph.context import RunContext, judge_config
from ray_entigraph.engines import constrains_json


def _ctx(config) -> RunContext:
    return RunContext.resolve(config, list_inputs=False)


def test_judge_identity_follows_the_judge_model_and_not_the_filter_threshold():
    config = load_config("configs/demo.yaml", ["curate.enabled=true", "curate.judge=true"])
    same = derive(config, ["curate.min_judge_score=0.5"])
    other = derive(config, ["curate.judge_model=some-org/bigger-model"])
    assert _ctx(config).judge_stage == _ctx(same).judge_stage and _ctx(config).judge_stage != _ctx(other).judge_stage
    assert _ctx(config).judge_stage.startswith("judged/")
    assert judge_config(other).model.name == "some-org/bigger-model" and judge_config(config) is config


def test_structured_extraction_changes_the_request_key_only_where_it_applies():
    plain = load_config(None, ["engine.structured_extraction=false"])
    vllm = load_config(None, ["engine.kind=vllm"])
    vllm_free = load_config(None, ["engine.kind=vllm", "engine.vllm.structured_extraction=false"])
    assert not constrains_json(plain) and constrains_json(vllm) and not constrains_json(vllm_free)
    assert _ctx(plain).extraction_key("d") == _ctx(vllm_free).extraction_key("d")  # same request on either engine
    assert _ctx(plain).extraction_key("d") != _ctx(vllm).extraction_key("d")  # a constrained request is another one


def test_how_ingest_work_is_cut_up_is_not_part_of_a_files_identity(tmp_path):
    from ray_entigraph.config import load_config
    from ray_entigraph.context import RunContext

    (tmp_path / "a.md").write_text("A document long enough to be one.")
    base = [f"input.path={tmp_path / 'a.md'}", f"output_dir={tmp_path}/run"]
    ids = RunContext.resolve(load_config(None, base)).file_ids()
    for setting in ("ingest.bytes_per_task=1", "ingest.files_per_task=2", "resources.cpu.max_workers=2",
                    "resources.cpu.num_cpus_per_worker=0.5"):
        assert RunContext.resolve(load_config(None, [*base, setting])).file_ids() == ids, setting
    assert RunContext.resolve(load_config(None, [*base, "ingest.max_document_tokens=64"])).file_ids() != ids
