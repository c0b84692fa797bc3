"""Engine throughput sweep: the settings that matter on the engine at hand, on a rewrite-shaped workload.

Each engine setting (what needs a restart: vLLM's `max_num_seqs`, prefix caching, the model's dtype) starts
the engine once; on it, the same requests are sent `--concurrency` at a time (one `generate` call each:
what `resources.batch_size` x tasks per document gives an actor). Workload: demo articles as documents of
about `--doc-tokens` tokens, each rewritten in the `rewrite-v1` formats with `--max-new-tokens` each,
greedy. Prints a table and a `RESULT` line per point: generated tokens/s, prompt tokens/s, generated
tokens/s per device (per core on a CPU: the engine's threads use every core), and device-hours per 10^9
generated tokens (on a CPU: core-hours), then the best setting.

    .venv/bin/python benchmarks/engine_sweep.py --engine vllm
    .venv/bin/python benchmarks/engine_sweep.py --engine vllm --max-num-seqs 16 64 --concurrency 1 8 32 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["vllm", "transformers"], default="vllm")
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--doc-tokens", type=int, default=400)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--max-num-seqs", type=int, nargs="+", default=[16, 64],
                    help="vLLM max_num_seqs values (one engine start each); transformers: engine.max_batch_size")
    ap.add_argument("--prefix-caching", choices=["on", "off", "both"], default="on")
    ap.add_argument("--dtype", nargs="+", default=["bfloat16"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--requests", type=int, default=64, help="requests per point (at most the workload's)")
    args = ap.parse_args()

    from engine_synthesis import long_documents
    from transformers import AutoTokenizer

    from ray_entigraph.config import load_config
    from ray_entigraph.engines import make_engine, sampling_params
    from ray_entigraph.engines.bundled import resolve_model_path
    from ray_entigraph.planning import group_tasks, rewrite_tasks
    from ray_entigraph.prompts import load_prompt_set
    from ray_entigraph.stages.synthesize import relation_request
    from ray_entigraph.text.identity import doc_id_for, normalise_text

    out = tempfile.mkdtemp(prefix="bench-engine-sweep-")
    tok = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    count = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    documents = long_documents(args.docs, args.doc_tokens, count)

    def config_for(max_num_seqs: int, caching: bool, dtype: str):
        return load_config(None, [
            f"output_dir={out}", f"model.name={args.model}", f"engine.kind={args.engine}", f"model.dtype={dtype}",
            "model.max_model_len=2048", "synthesis.augmenter=rewrite", "synthesis.prompts=rewrite-v1",
            "synthesis.sampling.temperature=0", f"synthesis.sampling.max_new_tokens={args.max_new_tokens}",
            f"rewrite.min_new_tokens={args.max_new_tokens}", "rewrite.output_ratio=8",  # every budget the same
            f"engine.vllm.max_num_seqs={max_num_seqs}", f"engine.max_batch_size={max_num_seqs}",
            f"engine.vllm.enable_prefix_caching={str(caching).lower()}", "engine.vllm.enforce_eager=true",
            "engine.vllm.cpu_kv_cache_gib=2"])

    base = config_for(args.max_num_seqs[0], True, args.dtype[0])
    prompts = load_prompt_set(base.synthesis.prompts)
    sampling = sampling_params(base.synthesis.sampling)
    requests = []
    for d in documents:
        text = normalise_text(d["text"])
        row = {"doc_id": doc_id_for(text), "title": d["title"], "text": text, "num_tokens": count(text)}
        for group in group_tasks(row, rewrite_tasks(base, prompts, row), set(), 100):
            requests += [relation_request(prompts, group, t, sampling) for t in group["tasks"]]
    requests = requests[: args.requests]
    cores = os.cpu_count() or 1
    import torch

    device, devices = ("GPU", torch.cuda.device_count()) if torch.cuda.is_available() else ("core", cores)
    print(f"workload: {len(requests)} rewrite requests over {len(documents)} documents of about {args.doc_tokens} "
          f"tokens, max_new_tokens={args.max_new_tokens}, greedy; engine={args.engine}, model={args.model}, "
          f"{devices} {device}s", flush=True)

    settings = [(m, c, d) for m in args.max_num_seqs for d in args.dtype
                for c in ({"on": [True], "off": [False], "both": [True, False]}[args.prefix_caching])]
    rows = []
    for max_num_seqs, caching, dtype in settings:
        t0 = time.perf_counter()
        engine = make_engine(config_for(max_num_seqs, caching, dtype))
        start_s = time.perf_counter() - t0
        engine.generate(requests[:2])  # warm-up (graph capture, first allocations)
        for concurrency in args.concurrency:
            t1 = time.perf_counter()
            results = []
            for i in range(0, len(requests), concurrency):
                results += engine.generate(requests[i:i + concurrency])
            wall = time.perf_counter() - t1
            gen = sum(r.num_generated_tokens for r in results)
            prompt = sum(r.num_prompt_tokens for r in results)
            failed = sum(1 for r in results if r.error)
            per_device = gen / wall / devices
            row = {"max_num_seqs": max_num_seqs, "prefix_caching": caching, "dtype": dtype,
                   "concurrency": concurrency, "requests": len(results), "failed": failed, "wall_s": wall,
                   "gen_tok_s": gen / wall, "prompt_tok_s": prompt / wall, "gen_tok_s_per_device": per_device,
                   "device_hours_per_1b": 1e9 / per_device / 3600, "engine_start_s": start_s}
            rows.append(row)
            print(f"RESULT engine={args.engine} device={device} max_num_seqs={max_num_seqs} "
                  f"prefix_caching={caching} dtype={dtype} concurrency={concurrency} requests={len(results)} "
                  f"failed={failed} wall_s={wall:.1f} gen_tok_s={gen / wall:.1f} prompt_tok_s={prompt / wall:.1f} "
                  f"gen_tok_s_per_{device}={per_device:.2f} {device}_hours_per_1b_tokens={1e9 / per_device / 3600:.0f} "
                  f"engine_start_s={start_s:.1f}", flush=True)
        if hasattr(engine, "close"):
            engine.close()
    print()
    print(f"{'max_num_seqs':>12} {'caching':>7} {'dtype':>8} {'conc':>5} {'gen tok/s':>9} {'prompt tok/s':>12} "
          f"{'tok/s/' + device:>11} {device + '-h/1B':>10}")
    for r in rows:
        print(f"{r['max_num_seqs']:>12} {str(r['prefix_caching']):>7} {r['dtype']:>8} {r['concurrency']:>5} "
              f"{r['gen_tok_s']:>9.1f} {r['prompt_tok_s']:>12.1f} {r['gen_tok_s_per_device']:>11.2f} "
              f"{r['device_hours_per_1b']:>10.0f}")
    best = max(rows, key=lambda r: r["gen_tok_s"])
    one = min((r for r in rows if r["concurrency"] == 1), key=lambda r: -r["gen_tok_s"], default=None)
    print(f"RESULT best max_num_seqs={best['max_num_seqs']} prefix_caching={best['prefix_caching']} "
          f"dtype={best['dtype']} concurrency={best['concurrency']} gen_tok_s={best['gen_tok_s']:.1f} "
          f"vs_one_at_a_time={best['gen_tok_s'] / one['gen_tok_s'] if one else float('nan'):.2f}")
    with open(os.path.join(out, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"table: {os.path.join(out, 'sweep.json')}")


if __name__ == "__main__":
    main()
