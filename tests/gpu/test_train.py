"""Continued pretraining on GPUs: a few FSDP steps in bfloat16 on every visible GPU, then the exported model
loads. Skipped without CUDA; the CPU path (gloo DDP, resume, S3) is tested in tests/integration/test_train.py."""

from __future__ import annotations

import json

import pytest

from ray_entigraph import storage
from ray_entigraph.pipeline import synthesize
from tests.integration.test_pipeline import tiny_config
from tests.integration.test_train import TRAIN

pytestmark = pytest.mark.timeout(900)


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() == 0, reason="needs CUDA: runs a few FSDP steps on GPUs")
def test_fsdp_steps_on_gpu(tiny_model_dir, ray_local, tmp_path):
    from ray_entigraph.train.launch import run_train

    out = tmp_path / "gpu"
    synthesize(tiny_config(tiny_model_dir, "builtin:demo", out, "synthesis.sampling.max_new_tokens=48",
                           "input.max_documents=3"))
    workers = _cuda_devices()
    config = tiny_config(tiny_model_dir, "builtin:demo", out, "input.max_documents=3", *TRAIN,
                         f"train.num_workers={workers}", f"train.global_batch_size={4 * workers}", "train.use_gpu=true",
                         "train.strategy=fsdp", "train.dtype=bfloat16", "train.max_steps=4")
    summary = run_train(config)
    metrics = [json.loads(x) for x in storage.read_text(f"{out}/train/metrics.jsonl").splitlines()]
    assert summary.steps == 4 and summary.final_loss < metrics[0]["loss"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "train" / "model")
