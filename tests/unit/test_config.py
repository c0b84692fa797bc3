"""Typed configuration (config.py): defaults, overrides, files, and every check that fails before Ray
starts, each naming the key and the fix."""

from pathlib import Path

import pytest

from ray_entigraph.config import ConfigError, EntiGraphConfig, load_config, parse_overrides

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_validate():
    cfg = load_config()
    assert cfg.model.name == "bundled:smollm2-135m-instruct"
    assert cfg.output_dir


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    load_config(path)


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["plan.max_triplets_per_doc=5", "synthesis.sampling.temperature=1.0", "output_dir=/tmp/x"])
    assert cfg.plan.max_triplets_per_doc == 5
    assert cfg.synthesis.sampling.temperature == 1.0
    assert cfg.output_dir == "/tmp/x"
    assert parse_overrides(["a.b.c=true"]) == {"a": {"b": {"c": True}}}


def test_misspelt_key_names_key_and_suggests_fix():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["plan.max_tripletz_per_doc=5"])
    assert "plan.max_tripletz_per_doc" in str(err.value)
    assert "plan.max_triplets_per_doc" in str(err.value)


def test_misspelt_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("synthesis:\n  sampling:\n    temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"synthesis.sampling.temprature: unknown key. "
                                          r"Did you mean 'synthesis.sampling.temperature'"):
        load_config(path)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"resources.batch_size.*integer.*'many'"):
        load_config(None, ["resources.batch_size=many"])


def test_impossible_combinations():
    with pytest.raises(ConfigError, match="min_actors .* > resources.max_actors"):
        load_config(None, ["resources.min_actors=4", "resources.max_actors=2"])
    with pytest.raises(ConfigError, match="does not fit"):
        load_config(None, ["synthesis.sampling.max_new_tokens=4000"])
    with pytest.raises(ConfigError, match="rephrase-v1"):
        load_config(None, ["synthesis.augmenter=rephrase"])


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/config.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["plan"])


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["seed=7", "plan.max_tasks_total=100"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()
    assert load_config(None, ["seed=8"]).config_hash() != cfg.config_hash()


def test_every_field_has_a_description():
    from pydantic import BaseModel

    def walk(model: type[BaseModel], prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                yield from walk(ann, prefix + name + ".")
            else:
                yield prefix + name, field.description

    missing = [k for k, d in walk(EntiGraphConfig) if not d]
    assert missing == []


def test_configuration_reference_is_up_to_date():
    from ray_entigraph.config import config_reference_markdown

    path = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert path.read_text() == config_reference_markdown(), (
        "docs/configuration.md is stale: run `python -m ray_entigraph.config > docs/configuration.md`"
    )


def test_missing_local_model_path_is_named_before_workers_start(tmp_path):
    with pytest.raises(ConfigError, match="model.name .* local path that does not exist"):
        load_config(None, [f"model.name={tmp_path}/nope"])
    with pytest.raises(ConfigError, match="train.base_model"):
        load_config(None, ["train.base_model=./no-such-model"])
    assert load_config(None, ["model.name=HuggingFaceTB/SmolLM2-135M"]).model.name == "HuggingFaceTB/SmolLM2-135M"


def test_gpu_preset_extends_the_demo_and_changes_only_engine_resources_and_output_dir():
    import yaml

    from ray_entigraph.config import PRESETS_DIR

    on_vllm = yaml.safe_load((PRESETS_DIR / "demo-vllm.yaml").read_text())
    assert on_vllm["extends"] == "demo" and set(on_vllm) == {"extends", "engine", "output_dir", "extract", "synthesis"}
    cluster = yaml.safe_load((PRESETS_DIR / "demo-gpu.yaml").read_text())
    assert cluster["extends"] == "demo-vllm" and set(cluster) == {"extends", "engine", "resources", "output_dir"}
    laptop, cpu_vllm, gpu = load_config("demo"), load_config("demo-vllm"), load_config("demo-gpu")
    assert gpu.engine.kind == cpu_vllm.engine.kind == "vllm" and gpu.resources.num_gpus_per_actor == 1
    assert gpu.train == laptop.train and gpu.plan == laptop.plan and gpu.synthesis == cpu_vllm.synthesis
    assert cpu_vllm.resources == laptop.resources
    # vLLM penalises prompt tokens with repetition_penalty: the same sampling with a frequency penalty instead
    for section in ("synthesis", "extract"):
        same = {"repetition_penalty": 1.0, "frequency_penalty": 0.3}
        assert getattr(gpu, section).sampling == getattr(laptop, section).sampling.model_copy(update=same)
        assert getattr(gpu, section).model_copy(update={"sampling": None}) == \
            getattr(laptop, section).model_copy(update={"sampling": None})


def test_presets_load_by_name_from_any_folder_and_extends_chains_merge(tmp_path, monkeypatch):
    from ray_entigraph.config import presets

    monkeypatch.chdir(tmp_path)  # outside the repository: no configs/ folder here
    assert {"demo", "demo-gpu", "knowledge", "paper-llama3-8b", "hosted-api"} <= set(presets())
    assert load_config("hosted-api").engine.openai.requests_per_minute == 500
    for name in ("demo", "demo.yaml", "configs/demo.yaml"):
        assert load_config(name).output_dir == str(tmp_path / "runs" / "demo")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "base.yaml").write_text("extends: demo\nplan:\n  max_pairs_per_doc: 3\n")
    (tmp_path / "mine" / "child.yaml").write_text("extends: base.yaml\nplan:\n  max_triplets_per_doc: 0\n")
    child = load_config(tmp_path / "mine" / "child.yaml", ["seed=7"])
    assert (child.plan.max_pairs_per_doc, child.plan.max_triplets_per_doc, child.seed) == (3, 0, 7)
    assert child.input.path == "builtin:demo" and child.train == load_config("demo").train  # the rest from demo
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="does not exist.*preset.*demo"):
        load_config("no-such-preset")


def test_tensor_parallel_needs_as_many_gpus_per_actor():
    with pytest.raises(ConfigError, match="resources.num_gpus_per_actor=2"):
        load_config(None, ["engine.kind=vllm", "engine.vllm.tensor_parallel_size=2", "resources.num_gpus_per_actor=1"])


def test_unknown_engine_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="engine.kind"):
        load_config(None, ["engine.kind=sglang"])


def test_unknown_variant_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="ablation.variants") as err:
        load_config("configs/demo.yaml", ["ablation.variants=[entigraph,magic]"])
    assert "'magic'" in str(err.value) and "entigraph+raw" in str(err.value) and "raw-cpt" in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean 'dedup'"):
        load_config("configs/demo.yaml", ["ablation.variants=[dedupe]"])


def test_min_judge_score_without_a_judge_is_a_config_error_naming_the_fix():
    with pytest.raises(ConfigError, match="curate.judge=true"):
        load_config("configs/demo.yaml", ["curate.min_judge_score=0.5"])


@pytest.mark.parametrize("overrides, fragment", [
    (["engine.openai.api_key_env=AWS_SECRET_ACCESS_KEY"], "a credential for something other than a model API"),
    (["engine.openai.base_url=http://10.0.0.7:8000/v1"], "plain HTTP to another machine"),
])
def test_an_api_key_is_never_sent_where_it_should_not_go(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, ["engine.kind=openai", *overrides])


def test_plain_http_is_fine_on_loopback_without_a_key_or_when_allowed():
    for extra in (["engine.openai.base_url=http://127.0.0.1:8000/v1"],
                  ["engine.openai.base_url=http://10.0.0.7:8000/v1", "engine.openai.api_key_env=null"],
                  ["engine.openai.base_url=http://10.0.0.7:8000/v1", "engine.openai.allow_plain_http_key=true"],
                  ["engine.openai.base_url=https://api.example.com/v1"]):
        load_config(None, ["engine.kind=openai", *extra])


def test_an_override_that_is_not_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match=r"Override 'seed=\[1': its value is not valid YAML"):
        load_config(None, ["seed=[1"])
