import subprocess
import sys
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
    with pytest.raises(ConfigError, match=r"synthesis.sampling.temprature: unknown key. Did you mean 'synthesis.sampling.temperature'"):
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


def test_cli_rejects_bad_config_before_starting_ray():
    proc = subprocess.run(
        [sys.executable, "-m", "ray_entigraph", "synthesize", "plan.max_tripletz_per_doc=3"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown key" in proc.stderr and "max_triplets_per_doc" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_cli_missing_input_is_a_clear_error():
    proc = subprocess.run(
        [sys.executable, "-m", "ray_entigraph", "synthesize", "input.path=/no/such/corpus.jsonl"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "/no/such/corpus.jsonl" in proc.stderr and "does not exist" in proc.stderr


def test_import_and_help_stay_light():
    code = (
        "import sys, ray_entigraph, ray_entigraph.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ray', 'transformers', 'vllm') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "synthesize" in proc.stdout and "status" in proc.stdout


def test_configuration_reference_is_up_to_date():
    from ray_entigraph.config import config_reference_markdown

    path = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert path.read_text() == config_reference_markdown(), (
        "docs/configuration.md is stale: run `python -m ray_entigraph.config > docs/configuration.md`"
    )


def test_cli_dry_run_starts_no_model_and_prices_the_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ray_entigraph", "synthesize", "--config", "configs/demo.yaml", "--dry-run", "--json",
         f"output_dir={tmp_path}", "cost.usd_per_million_prompt_tokens=1", "cost.usd_per_million_generated_tokens=2",
         "plan.max_tasks_total=10"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    import json

    est = json.loads(proc.stdout)
    assert est["num_documents"] == 6 and est["num_extract_requests"] == 6
    assert est["num_relation_requests"] == 10  # the global budget
    expected_cost = (est["num_prompt_tokens"] * 1 + est["max_generated_tokens"] * 2) / 1e6
    assert abs(est["estimated_cost_usd"] - expected_cost) < 1e-9
    assert not (tmp_path / "documents").exists()  # nothing ran


def test_missing_local_model_path_is_named_before_workers_start(tmp_path):
    with pytest.raises(ConfigError, match="model.name .* local path that does not exist"):
        load_config(None, [f"model.name={tmp_path}/nope"])
    with pytest.raises(ConfigError, match="train.base_model"):
        load_config(None, ["train.base_model=./no-such-model"])
    assert load_config(None, ["model.name=HuggingFaceTB/SmolLM2-135M"]).model.name == "HuggingFaceTB/SmolLM2-135M"


def test_gpu_cluster_config_differs_from_the_laptop_demo_only_in_engine_and_resources():
    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    laptop, cluster = (yaml.safe_load((root / name).read_text()) for name in ("demo.yaml", "demo-gpu.yaml"))
    differing = {key for key in set(laptop) | set(cluster) if laptop.get(key) != cluster.get(key)}
    assert differing == {"engine", "resources", "output_dir"}
    assert cluster["engine"]["kind"] == "vllm" and cluster["resources"]["num_gpus_per_actor"] == 1
