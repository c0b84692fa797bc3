"""Training memory and bytes read per rank when the corpus outgrows memory: a toy Llama (small vocabulary)
passes once over generated token streams of 10^7 and 10^8 tokens on 2 `torchrun` workers (gloo DDP, the same
`run_training` Ray Train launches). The blocks are written as packing writes them (flat int32 shards) on
local disk; each rank memory-maps them and reads only the blocks of its own micro-batches.

    .venv/bin/python benchmarks/train_memory.py [--sizes 10000000 100000000] [--block-len 2048]

Prints per size `RESULT tokens=<n> rss_anon_growth_mb=<mb> bytes_read_per_rank=<n> ...`: anonymous memory
(the processes' own heap, not mapped file pages) at the end of training minus at its start, the largest over
ranks; bytes each rank fetched against total / world. Then `RESULT anon_end_growth_mb=<10^8 minus 10^7>`
(target: at most 100) and the largest deviation of a rank's bytes from its share (target: within 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARD_BLOCKS = 4096


def write_stream(folder: Path, tokens: int, block_len: int, vocab: int) -> int:
    import numpy as np

    blocks = tokens // block_len
    rng = np.random.default_rng(0)
    files = []
    for k, start in enumerate(range(0, blocks, SHARD_BLOCKS)):
        n = min(SHARD_BLOCKS, blocks - start)
        path = folder / f"shard{k:05d}.i32"
        rng.integers(3, vocab, size=(n, block_len), dtype=np.int32).astype("<i4").tofile(path)
        files.append([str(path), n])
    (folder / "blocks.json").write_text(json.dumps({"synthetic": files}))
    (folder / "out" / "train").mkdir(parents=True)
    (folder / "out" / "train" / "mixture.json").write_text(
        json.dumps({"spec": {"num_synthetic": blocks}, "counts": {"synthetic": blocks}}))
    return blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    ap.add_argument("--block-len", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(ROOT))
    from gpu_check import make_tiny_model

    results = {}
    base = Path(tempfile.mkdtemp(prefix="bench-train-mem-"))
    try:
        make_tiny_model(base / "model", vocab=args.vocab, hidden=32, layers=1, max_len=args.block_len)
        for tokens in args.sizes:
            folder = base / f"t{tokens}"
            folder.mkdir()
            blocks = write_stream(folder, tokens, args.block_len, args.vocab)
            overrides = [f"output_dir={folder / 'out'}", f"model.name={base / 'model'}",
                         f"train.block_len={args.block_len}", f"train.global_batch_size={args.batch}",
                         f"train.micro_batch_size={args.batch // args.workers // 2}",
                         f"train.num_workers={args.workers}", "train.epochs=1", "train.lr=1e-3",
                         "train.checkpoint_every=1000000", "train.log_every=100", "train.torch_threads=1"]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.workers}",
                   "-m", "ray_entigraph.train.standalone", "--blocks", str(folder / "blocks.json"),
                   "--checkpoints", str(folder / "ckpt"), *overrides]
            t0 = time.time()
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
            wall = time.time() - t0
            ranks = [json.loads(p.read_text()) for p in sorted((folder / "out" / "train" / "workers").glob("*.json"))]
            trained = (blocks * args.block_len // (args.batch * args.block_len)) * args.batch * args.block_len * 4
            share = trained / args.workers
            growth = max(r["rss_anon_end_mb"] - r["rss_anon_start_mb"] for r in ranks)
            end = max(r["rss_anon_end_mb"] for r in ranks)
            per_rank = [r["block_bytes_read"] for r in ranks]
            deviation = max(abs(b - share) / share for b in per_rank)
            lines = [json.loads(x) for x in (folder / "out" / "train" / "metrics.jsonl").read_text().splitlines()]
            tps = sorted(m["tokens_per_s"] for m in lines)[len(lines) // 2]
            results[tokens] = (end, deviation)
            print(f"RESULT tokens={tokens} rss_anon_growth_mb={growth:.1f} rss_anon_end_mb={end:.1f} "
                  f"bytes_read_per_rank={'/'.join(str(b) for b in per_rank)} share_bytes={share:.0f} "
                  f"max_share_deviation={deviation:.4f} median_tokens_per_s={tps:.0f} wall_s={wall:.1f}", flush=True)
            shutil.rmtree(folder)
        if len(results) >= 2:
            small, big = min(results), max(results)
            print(f"RESULT anon_end_growth_mb={results[big][0] - results[small][0]:.1f} "
                  f"max_share_deviation={max(d for _, d in results.values()):.4f}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
