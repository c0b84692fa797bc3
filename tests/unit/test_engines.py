"""Pure parts of the engines: prefix detection and padding, request grouping, vLLM arguments, engine config,
the engine registry and which engines decode under a JSON schema."""

from __future__ import annotations

import random

import pytest

from ray_entigraph.config import ConfigError, load_config
from ray_entigraph.engines import ENGINES, GenerationRequest, SamplingParams, constrains_json, engine_class, make_engine
from ray_entigraph.engines.transformers_engine import group_requests, pad_batch, shared_prefix_length
from ray_entigraph.engines.vllm_engine import engine_kwargs
from ray_entigraph.errors import EngineError


def test_shared_prefix_length_leaves_every_sequence_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # [1,2,3] must keep its last token
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0
    assert shared_prefix_length([[7]]) == 0
    assert shared_prefix_length([]) == 0


def test_shared_prefix_length_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        common = [rng.randrange(5) for _ in range(rng.randrange(6))]
        seqs = [common + [rng.randrange(5) for _ in range(rng.randrange(1, 5))] for _ in range(rng.randrange(1, 5))]
        n = shared_prefix_length(seqs)
        assert all(s[:n] == seqs[0][:n] for s in seqs)
        assert all(len(s) > n for s in seqs)
        # maximal: one more token is either not shared or would leave a sequence empty
        assert any(len(s) <= n + 1 or s[n] != seqs[0][n] for s in seqs)


def test_pad_batch_puts_padding_between_prefix_and_own_tokens():
    ids, mask = pad_batch([[1, 2, 3, 9], [1, 2, 3, 8, 8, 8]], prefix_len=3, pad_id=0)
    assert ids == [[1, 2, 3, 0, 0, 9], [1, 2, 3, 8, 8, 8]]
    assert mask == [[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]]
    # positions follow the mask: the own tokens of both rows continue right after the prefix
    positions = [[sum(m[: i + 1]) - 1 for i in range(len(m))] for m in mask]
    assert positions[0][-1] == 3 and positions[1][3] == 3


def test_pad_batch_without_prefix_is_left_padding():
    ids, mask = pad_batch([[5], [6, 7, 8]], prefix_len=0, pad_id=0)
    assert ids == [[0, 0, 5], [6, 7, 8]] and mask == [[0, 0, 1], [1, 1, 1]]


def _req(key, doc, temperature=0.7):
    return GenerationRequest(key=key, messages=[{"role": "user", "content": key}],
                             sampling=SamplingParams(temperature=temperature, top_p=0.9, max_new_tokens=16,
                                                     repetition_penalty=1.0), prefix_key=doc)


def test_group_requests_by_sampling_then_document_in_caller_order():
    reqs = [_req("a1", "A"), _req("b1", "B"), _req("a2", "A"), _req("g", "A", temperature=0.0), _req("b2", "B")]
    groups = [[reqs[i].key for i in g] for g in group_requests(reqs)]
    assert groups == [["a1", "a2"], ["b1", "b2"], ["g"]]


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_vllm_engine_kwargs_pass_config_through():
    cfg = _cfg("engine.kind=vllm", "engine.vllm.enforce_eager=true", "engine.vllm.max_num_seqs=32",
               "engine.vllm.engine_args.kv_cache_dtype=fp8", "model.max_model_len=4096", "seed=3")
    kw = engine_kwargs(cfg.model, cfg.engine.vllm, cfg.seed, "/models/m")
    assert kw["model"] == "/models/m" and kw["max_model_len"] == 4096 and kw["enable_prefix_caching"] is True
    assert kw["enforce_eager"] is True and kw["max_num_seqs"] == 32 and kw["kv_cache_dtype"] == "fp8"
    assert kw["seed"] == 3 and "distributed_executor_backend" not in kw
    tp = _cfg("engine.kind=vllm", "engine.vllm.tensor_parallel_size=4", "resources.num_gpus_per_actor=4")
    kw = engine_kwargs(tp.model, tp.engine.vllm, tp.seed, "/models/m")
    assert kw["tensor_parallel_size"] == 4 and kw["distributed_executor_backend"] == "mp"


def test_tensor_parallel_needs_as_many_gpus_per_actor():
    with pytest.raises(ConfigError, match="resources.num_gpus_per_actor=2"):
        _cfg("engine.kind=vllm", "engine.vllm.tensor_parallel_size=2", "resources.num_gpus_per_actor=1")


def test_unknown_engine_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="engine.kind"):
        _cfg("engine.kind=sglang")


def test_structured_extraction_changes_the_request_key_only_where_it_applies():
    plain = _cfg()
    vllm = _cfg("engine.kind=vllm")
    vllm_free = _cfg("engine.kind=vllm", "engine.vllm.structured_extraction=false")
    assert not constrains_json(plain) and constrains_json(vllm) and not constrains_json(vllm_free)
    from ray_entigraph.context import RunContext

    def extraction_key(config, doc_id):
        return RunContext.resolve(config, list_inputs=False).extraction_key(doc_id)

    assert extraction_key(plain, "d") == extraction_key(vllm_free, "d")  # same request on either engine
    assert extraction_key(plain, "d") != extraction_key(vllm, "d")  # a constrained request is another request


def test_every_engine_class_says_whether_it_decodes_under_a_json_schema():
    expected = {"transformers": False, "echo": False, "openai": True, "vllm": True}
    assert set(ENGINES) == set(expected)
    for kind, constrained in expected.items():
        config = _cfg(f"engine.kind={kind}")
        cls = engine_class(kind)
        assert cls.supports_json_schema_for(config) is constrained and constrains_json(config) is constrained
        assert callable(cls.from_config)
    # an engine built from a config agrees with its class
    from ray_entigraph.engines.openai_engine import OpenAIEngine

    openai = _cfg("engine.kind=openai", "engine.openai.api_key_env=null")
    assert OpenAIEngine.from_config(openai).supports_json_schema is constrains_json(openai)
    echo = _cfg("engine.kind=echo")
    assert make_engine(echo).supports_json_schema is constrains_json(echo)


def test_sampling_params_have_no_defaults_of_their_own():
    from ray_entigraph.config import SamplingConfig
    from ray_entigraph.engines import sampling_params

    with pytest.raises(TypeError):
        SamplingParams()  # type: ignore[call-arg]
    assert sampling_params(SamplingConfig()).as_dict() == SamplingConfig().model_dump()


def test_engine_modules_import_without_their_heavy_packages():
    """constrains_json imports the configured engine's module on the driver: that must stay cheap."""
    import subprocess
    import sys

    code = ("import sys, ray_entigraph.engines as e\n"
            "from ray_entigraph.config import load_config\n"
            "for kind in e.ENGINES:\n"
            "    e.constrains_json(load_config(None, [f'engine.kind={kind}']))\n"
            "print('HEAVY', [m for m in ('torch', 'transformers', 'vllm', 'httpx') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_echo_engine_answers_instantly_and_deterministically():
    engine = make_engine(_cfg("engine.kind=echo"))
    reqs = [_req("k1", "A"), _req("k2", "A")]
    first, second = engine.generate(reqs), engine.generate(reqs)
    assert [r.key for r in first] == ["k1", "k2"]
    assert [r.text for r in first] == [r.text for r in second] and all(r.text.strip() for r in first)
    assert all(r.num_generated_tokens > 0 and r.error is None for r in first)


def test_preflight_refuses_a_hosted_api_without_its_key_before_workers_start(monkeypatch):
    from ray_entigraph.engines import preflight

    monkeypatch.delenv("EG_TEST_KEY", raising=False)
    hosted = _cfg("engine.kind=openai", "engine.openai.base_url=https://api.example.com/v1",
                  "engine.openai.api_key_env=EG_TEST_KEY")
    with pytest.raises(EngineError, match="EG_TEST_KEY.*is not set"):
        preflight(hosted)
    monkeypatch.setenv("EG_TEST_KEY", "sk-test")
    assert preflight(hosted) == []
    monkeypatch.delenv("EG_TEST_KEY")
    local = _cfg("engine.kind=openai", "engine.openai.base_url=http://127.0.0.1:8000/v1",
                 "engine.openai.api_key_env=EG_TEST_KEY")
    assert preflight(local) == []  # a local server gets no key


def test_cli_validate_names_the_missing_key(tmp_path, monkeypatch):
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "EG_TEST_KEY"}
    proc = subprocess.run([sys.executable, "-m", "ray_entigraph", "validate", "engine.kind=openai",
                           "engine.openai.base_url=https://api.example.com/v1", "engine.openai.api_key_env=EG_TEST_KEY"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "EG_TEST_KEY" in proc.stderr and "Fix:" in proc.stderr
