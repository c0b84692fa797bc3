"""Training throughput, side by side in one run on the same model, data and threads:

  plain        a single-process torch loop (AdamW, same micro-batching, clipping, schedule), N threads
  ray-1x{N}    our Ray Train loop, 1 worker with N threads
  ray-2x{N/2}  our Ray Train loop, 2 workers (gloo DDP) with N/2 threads each
  fsdp-2x{N/2} the same with FSDP2 (`fully_shard` per decoder layer, fp32, gloo)

Prints median training tokens/s over the steps after the first, the ratio to the plain loop (target on CPU:
at least 0.9 for DDP), and peak RSS per worker, as a table and as `RESULT variant=... tokens_per_s=...` lines.

    .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--block-len 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--block-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    args = ap.parse_args()

    import torch
    from committed_layout import write_run

    from ray_entigraph import storage
    from ray_entigraph.config import load_config
    from ray_entigraph.engines.bundled import resolve_model_path
    from ray_entigraph.inputs import DEMO_CORPUS
    from ray_entigraph.text.identity import doc_id_for, normalise_text
    from ray_entigraph.train.data import load_blocks
    from ray_entigraph.train.launch import run_train
    from ray_entigraph.train.mix import MixSpec, stream_item
    from ray_entigraph.train.schedule import warmup_cosine

    out = tempfile.mkdtemp(prefix="bench-train-")
    # the demo's documents, each the text of 3 synthetic rows (3 planned pairs; only the model output is stubbed)
    docs = [{"doc_id": doc_id_for(d["article"]), "title": d["title"], "text": normalise_text(d["article"]),
             "num_tokens": 0} for d in map(json.loads, open(DEMO_CORPUS))]

    def config_for(workers: int, threads: int, run: str, strategy: str = "ddp"):
        return load_config(None, [
            f"output_dir={out}/{run}", f"model.name={args.model}", f"train.block_len={args.block_len}",
            "train.global_batch_size=2", "train.micro_batch_size=1", f"train.num_workers={workers}",
            f"train.torch_threads={threads}", f"train.max_steps={args.steps}", "train.lr=1e-5",
            "train.checkpoint_every=1000", "train.warmup_ratio=0.1", "plan.max_pairs_per_doc=3",
            "plan.max_triplets_per_doc=0", f"train.strategy={strategy}",
        ])

    results = {}
    # Ray Train variants first, each in its own output_dir (the synthetic shard is copied there)
    half = args.threads // 2
    variants = ((f"ray-1x{args.threads}", 1, args.threads, "ddp"), (f"ray-2x{half}", 2, half, "ddp"),
                (f"fsdp-2x{half}", 2, half, "fsdp"))
    for name, workers, threads, strategy in variants:
        cfg = config_for(workers, threads, name, strategy)
        write_run(cfg, docs, lambda d: ["Kestavel", "Orrin Vale", "the Guild"], synthetic=True)
        run_train(cfg)
        lines = [json.loads(x) for x in storage.read_text(f"{cfg.output_dir}/train/metrics.jsonl").splitlines()]
        results[name] = (statistics.median(m["tokens_per_s"] for m in lines[1:]), max(m["peak_rss_mb"] for m in lines))

    # the plain loop on the same blocks, order, model and schedule
    cfg = config_for(1, args.threads, f"ray-1x{args.threads}")
    torch.set_num_threads(args.threads)
    spec = MixSpec.from_json(json.loads(storage.read_text(f"{cfg.output_dir}/train/mixture.json"))["spec"])
    from ray_entigraph.context import RunContext
    from ray_entigraph.train.data import block_files

    blocks = torch.from_numpy(load_blocks(block_files(RunContext.resolve(cfg))["synthetic"], args.block_len)
                              .astype("int64"))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total_steps=args.steps, warmup_steps=1))
    rates = []
    for step in range(args.steps):
        t0 = time.time()
        for p in range(step * 2, step * 2 + 2):
            _, i = stream_item(spec, p)
            ids = blocks[i : i + 1]
            logits = model(input_ids=ids).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                     ids[:, 1:].reshape(-1)) / 2
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        rates.append(2 * args.block_len / (time.time() - t0))
    import resource

    results["plain"] = (statistics.median(rates[1:]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    base = results["plain"][0]
    print(f"\ntraining throughput: model={args.model}, block_len={args.block_len}, global batch 2, "
          f"{args.steps} steps (median over steps 2..{args.steps}), {args.threads} threads in total")
    print(f"{'variant':<10} {'tokens/s':>9} {'vs plain':>9} {'peak RSS MB/worker':>19}")
    for name in ("plain", *(v[0] for v in variants)):
        tps, rss = results[name]
        print(f"{name:<10} {tps:>9.1f} {tps / base:>9.3f} {rss:>19.0f}")
    for name in ("plain", *(v[0] for v in variants)):
        tps, rss = results[name]
        print(f"RESULT variant={name} tokens_per_s={tps:.1f} vs_plain={tps / base:.3f} peak_rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
