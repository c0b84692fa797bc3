"""The training loop as plain PyTorch under `torchrun` (no Ray): FSDP2 on two gloo processes against a
single-process reference (loss and clipped norm), a resume from an FSDP2 checkpoint that continues the
identical trajectory, and a resume of that checkpoint on another world size. Ray Train's FSDP2 run against
DDP is in test_train.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
STEPS = 10


@pytest.fixture(scope="module")
def blocks(tmp_path_factory) -> Path:
    """64 blocks of 32 tokens drawn from a small vocabulary range, as packing would commit them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("parallel")
    ids = np.random.default_rng(0).integers(0, 2000, size=(64, 32)).astype(np.int32)
    pq.write_table(pa.table({"input_ids": pa.array(ids.tolist(), type=pa.list_(pa.int32()))}), root / "b.parquet")
    (root / "blocks.json").write_text(json.dumps({"synthetic": [[str(root / "b.parquet"), 64]]}))
    return root


def _run(blocks: Path, out: Path, ckpt: Path, model: str, strategy: str, nproc: int | None) -> list[dict]:
    """One training of STEPS steps; nproc None: a plain process (no process group)."""
    (out / "train").mkdir(parents=True, exist_ok=True)
    mixture = {"spec": {"num_synthetic": 64}, "counts": {"synthetic": 64}}
    (out / "train" / "mixture.json").write_text(json.dumps(mixture))
    args = ["--blocks", str(blocks / "blocks.json"), "--checkpoints", str(ckpt), f"output_dir={out}",
            f"model.name={model}", "train.block_len=32", "train.global_batch_size=4", "train.micro_batch_size=1",
            f"train.num_workers={nproc or 1}", "train.lr=3e-3", "train.warmup_ratio=0.1", "train.checkpoint_every=5",
            f"train.max_steps={STEPS}", f"train.strategy={strategy}", "train.weight_decay=0.1",
            "train.grad_clip=0.5", "train.torch_threads=1"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc else [sys.executable])
    proc = subprocess.Popen([*launcher, "-m", "ray_entigraph.train.standalone", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        _, err = proc.communicate()
        raise AssertionError(f"training did not finish in 300 s:\n{err[-4000:]}") from None
    assert proc.returncode == 0, err[-4000:]
    from ray_entigraph.train.metrics import read_metrics

    return read_metrics(str(out / "train"))


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * abs(a)


def test_fsdp2_two_processes_match_one_and_resume_identically(blocks, tiny_model_dir, tmp_path):
    fsdp = _run(blocks, tmp_path / "fsdp", tmp_path / "ck", tiny_model_dir, "fsdp", 2)
    single = _run(blocks, tmp_path / "single", tmp_path / "ck1", tiny_model_dir, "ddp", None)
    assert [m["step"] for m in fsdp] == list(range(1, STEPS + 1))
    for a, b in zip(single, fsdp):
        assert _close(a["loss"], b["loss"], 1e-4), (a["step"], a["loss"], b["loss"])
        assert _close(a["grad_norm"], b["grad_norm"], 1e-5), (a["step"], a["grad_norm"], b["grad_norm"])
    assert fsdp[-1]["loss"] < fsdp[0]["loss"]
    # the export is one Hugging Face model (gathered from the shards), loadable
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "train" / "model")

    # resume from the step-5 checkpoint: steps 6..10 are the uninterrupted run's, on 2 processes and on 1
    for nproc, rel in ((2, 1e-6), (1, 1e-4)):
        ck = tmp_path / f"resume{nproc}"
        shutil.copytree(tmp_path / "ck" / "checkpoint-step-00000005", ck / "checkpoint-step-00000005")
        resumed = _run(blocks, tmp_path / f"out{nproc}", ck, tiny_model_dir, "fsdp", nproc)
        assert [m["step"] for m in resumed] == list(range(6, STEPS + 1)), nproc  # only the steps after it ran
        for a, b in zip(fsdp[5:], resumed):
            assert _close(a["loss"], b["loss"], rel), (nproc, a["step"], a["loss"], b["loss"])
