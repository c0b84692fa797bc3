"""GPU check of the training path, with PyTorch and transformers only (no Ray, no vLLM): `torchrun`, NCCL,
world size 1, FSDP2 with bfloat16 compute on a small randomly initialised Llama, a sharded checkpoint, a
resume from it that must give the identical next loss, and MFU. Runs in well under 5 minutes on one GPU.

    python benchmarks/gpu_check.py [--cpu] [--steps 8] [--hidden 1024] [--layers 8] [--block-len 1024]

`--cpu` runs the same path with gloo on the CPU (a plumbing check; MFU is not printed). The package's own
pure-Python dependencies must be importable (pydantic and what config.py needs); nothing is downloaded:
the tokenizer is a small word-level one built here. Prints `RESULT` lines:

    RESULT check=train steps=<n> first_loss=<x> last_loss=<x> mfu=<x> tokens_per_s=<x>
    RESULT check=resume step=<k> loss=<x> uninterrupted=<x> identical=<bool>
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_tiny_model(folder: Path, *, vocab: int, hidden: int, layers: int, max_len: int) -> None:
    """A randomly initialised Llama and a word-level tokenizer built here (nothing downloaded)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(vocab - 3)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                      num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 256, 1),
                      max_position_embeddings=max_len, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)


def prepare(root: Path, args) -> None:
    """A small Llama, random blocks and the training stream."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    make_tiny_model(root / "model", vocab=args.vocab, hidden=args.hidden, layers=args.layers, max_len=args.block_len)
    n = args.steps * args.batch
    ids = np.random.default_rng(0).integers(3, args.vocab, size=(n, args.block_len)).astype(np.int32)
    pq.write_table(pa.table({"input_ids": pa.array(ids.tolist(), type=pa.list_(pa.int32()))}), root / "b.parquet")
    (root / "blocks.json").write_text(json.dumps({"synthetic": [[str(root / "b.parquet"), n]]}))


def train(root: Path, out: str, ckpt: str, args) -> list[dict]:
    (root / out / "train").mkdir(parents=True, exist_ok=True)
    (root / out / "train" / "mixture.json").write_text(
        json.dumps({"spec": {"num_synthetic": args.steps * args.batch},
                    "counts": {"synthetic": args.steps * args.batch}}))
    overrides = [f"output_dir={root / out}", f"model.name={root / 'model'}", f"train.block_len={args.block_len}",
                 f"train.global_batch_size={args.batch}", f"train.micro_batch_size={args.batch // 2}",
                 "train.num_workers=1", "train.epochs=1", f"train.max_steps={args.steps}",
                 f"train.checkpoint_every={args.steps // 2}", "train.strategy=fsdp", "train.lr=1e-4",
                 f"train.use_gpu={'false' if args.cpu else 'true'}",
                 f"train.dtype={'float32' if args.cpu else 'bfloat16'}",
                 f"train.peak_tflops_per_gpu={args.peak_tflops}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
           "-m", "ray_entigraph.train.standalone", "--blocks", str(root / "blocks.json"),
           "--checkpoints", str(root / ckpt), *overrides]
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    sys.path.insert(0, str(ROOT))
    from ray_entigraph.train.metrics import read_metrics

    return read_metrics(str(root / out / "train"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--block-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200: 989)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        prepare(root, args)
        full = train(root, "full", "ck_full", args)
        half = args.steps // 2
        name = f"checkpoint-step-{half:08d}"
        shutil.copytree(root / "ck_full" / name, root / "ck_resume" / name)
        resumed = train(root, "resumed", "ck_resume", args)
        after = [m for m in full if m["step"] > 1]
        mfu = sum(m.get("mfu", 0.0) for m in after) / max(len(after), 1)
        tps = sum(m["tokens_per_s"] for m in after) / max(len(after), 1)
        print(f"RESULT check=train steps={len(full)} first_loss={full[0]['loss']:.6f} "
              f"last_loss={full[-1]['loss']:.6f} mfu={mfu:.4f} tokens_per_s={tps:.0f}", flush=True)
        nxt, again = full[half], resumed[0]
        print(f"RESULT check=resume step={again['step']} loss={again['loss']:.8f} uninterrupted={nxt['loss']:.8f} "
              f"identical={again['step'] == nxt['step'] and again['loss'] == nxt['loss']}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
