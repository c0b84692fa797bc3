"""The vLLM engine's pure part (engines/vllm_engine.py): the arguments it builds vLLM with. vLLM itself runs
in tests/integration/test_vllm_engine.py and tests/gpu/test_vllm_engine.py."""

from __future__ import annotations

from ray_entigraph.config import load_config
from ray_entigraph.engines.vllm_engine import engine_kwargs


def test_vllm_engine_kwargs_pass_config_through():
    cfg = load_config(None, ["engine.kind=vllm", "engine.vllm.enforce_eager=true", "engine.vllm.max_num_seqs=32",
                             "engine.vllm.engine_args.kv_cache_dtype=fp8", "model.max_model_len=4096", "seed=3"])
    kw = engine_kwargs(cfg.model, cfg.engine.vllm, cfg.seed, "/models/m")
    assert kw["model"] == "/models/m" and kw["max_model_len"] == 4096 and kw["enable_prefix_caching"] is True
    assert kw["enforce_eager"] is True and kw["max_num_seqs"] == 32 and kw["kv_cache_dtype"] == "fp8"
    assert kw["seed"] == 3 and "distributed_executor_backend" not in kw
    tp = load_config(None, ["engine.kind=vllm", "engine.vllm.tensor_parallel_size=4", "resources.num_gpus_per_actor=4"])
    kw = engine_kwargs(tp.model, tp.engine.vllm, tp.seed, "/models/m")
    assert kw["tensor_parallel_size"] == 4 and kw["distributed_executor_backend"] == "mp"
    assert "enable_chunked_prefill" not in kw  # on GPUs vLLM keeps its default


def test_the_cpu_build_never_splits_a_prefill_unless_told_to():
    cfg = load_config(None, ["engine.kind=vllm"])
    assert engine_kwargs(cfg.model, cfg.engine.vllm, 0, "/m", cpu=True)["enable_chunked_prefill"] is False
    told = load_config(None, ["engine.kind=vllm", "engine.vllm.engine_args.enable_chunked_prefill=true"])
    assert engine_kwargs(told.model, told.engine.vllm, 0, "/m", cpu=True)["enable_chunked_prefill"] is True


def test_the_cpu_build_gets_a_bounded_kv_cache_unless_one_is_configured():
    """vLLM's CPU build would otherwise reserve 90% of the machine's memory and refuse to start when that much
    is not free (`make demo`'s config with engine.kind=vllm failed so on this 24 GB machine)."""
    from ray_entigraph.engines.vllm_engine import CPU_KV_CACHE_GIB, cpu_kv_cache_space

    assert cpu_kv_cache_space(load_config(None, []).engine.vllm, cpu=True) == str(CPU_KV_CACHE_GIB)
    assert cpu_kv_cache_space(load_config(None, ["engine.vllm.cpu_kv_cache_gib=2"]).engine.vllm, cpu=True) == "2"
    assert cpu_kv_cache_space(load_config(None, []).engine.vllm, cpu=False) is None  # GPUs: vLLM's own sizing
