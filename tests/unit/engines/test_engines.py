"""The engine registry (engines/__init__.py): which engines decode under a JSON schema, building an engine
from a config, sampling parameters, cheap imports, and the driver-side preflight."""

from __future__ import annotations

import pytest

from ray_entigraph.config import SamplingConfig, load_config
from ray_entigraph.engines import (
    ENGINES,
    SamplingParams,
    constrains_json,
    engine_class,
    make_engine,
    preflight,
    sampling_params,
)
from ray_entigraph.errors import EngineError


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_every_engine_class_says_whether_it_decodes_under_a_json_schema():
    expected = {"transformers": True, "echo": False, "openai": True, "vllm": True}  # transformers: with xgrammar
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
    assert not engine_class("transformers").supports_json_schema_for(_cfg("engine.structured_extraction=false"))
    echo = _cfg("engine.kind=echo")
    assert make_engine(echo).supports_json_schema is constrains_json(echo)


def test_sampling_params_have_no_defaults_of_their_own():
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


def test_preflight_refuses_a_hosted_api_without_its_key_before_workers_start(monkeypatch):
    monkeypatch.delenv("EG_TEST_KEY", raising=False)
    hosted = _cfg("engine.kind=openai", "engine.openai.base_url=https://api.example.com/v1",
                  "engine.openai.api_key_env=EG_TEST_KEY", "engine.openai.send_repetition_penalty=false")
    with pytest.raises(EngineError, match="EG_TEST_KEY.*is not set"):
        preflight(hosted)
    monkeypatch.setenv("EG_TEST_KEY", "sk-test")
    assert preflight(hosted) == []
    monkeypatch.delenv("EG_TEST_KEY")
    local = _cfg("engine.kind=openai", "engine.openai.base_url=http://127.0.0.1:8000/v1",
                 "engine.openai.api_key_env=EG_TEST_KEY", "engine.openai.send_repetition_penalty=false")
    assert preflight(local) == []  # a local server gets no key


def test_preflight_warns_when_vllm_or_a_server_would_penalise_the_documents_own_words():
    demo = lambda *o: load_config("configs/demo.yaml", list(o))  # noqa: E731
    assert preflight(demo()) == []  # transformers penalises generated tokens only
    warnings = preflight(demo("engine.kind=vllm"))
    assert [w.split(" with ")[0] for w in warnings] == ["synthesis.sampling.repetition_penalty=1.15",
                                                        "extract.sampling.repetition_penalty=1.2"]
    assert "Fix: synthesis.sampling.repetition_penalty=1.0 synthesis.sampling.frequency_penalty=0.3" in warnings[0]
    assert preflight(demo("engine.kind=vllm", "extract.source=heuristic", "synthesis.sampling.repetition_penalty=1.0",
                          "synthesis.sampling.frequency_penalty=0.3")) == []
    for preset in ("demo-vllm", "demo-gpu"):  # the vLLM presets use a frequency penalty instead
        assert preflight(load_config(preset, [])) == []
    server = ["engine.kind=openai", "engine.openai.base_url=http://127.0.0.1:8000/v1", "engine.openai.api_key_env=null"]
    assert len(preflight(demo(*server))) == 2
    assert preflight(demo(*server, "engine.openai.send_repetition_penalty=false")) == []
