"""Shared fixtures: a local Ray instance, a tiny random model with the bundled tokenizer, small corpora."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
FIXTURES = Path(__file__).parent / "fixtures"
DEMO = Path(__file__).resolve().parent.parent / "ray_entigraph" / "demo" / "quality_demo.jsonl"


@pytest.fixture(scope="session")
def bundled_model_dir() -> str:
    from ray_entigraph.engines.bundled import BUNDLED_NAME, resolve_model_path

    return resolve_model_path(BUNDLED_NAME)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model_dir) -> str:
    """A randomly initialised 2-layer Llama with the bundled tokenizer: real transformers, fast on CPU."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture()
def demo_docs() -> list[dict]:
    return [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]


@pytest.fixture()
def small_corpus(tmp_path, demo_docs) -> Path:
    """Two demo documents as JSON Lines."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"title": d["title"], "text": d["article"]}) for d in demo_docs[:2]) + "\n")
    return path
