"""Synthesis on an EntiGraph-shaped workload, measured side by side in one run with one engine and model.

Workload: documents of about 1,500 tokens (demo articles joined), 20 pair requests each, the whole document
in every prompt: the cost shape of ENTIGRAPH.md. Greedy decoding, so variants generate the same tokens.

  raw        the engine alone on the same prompts: engine start + `generate` per document (what a user's own
             script would do), prefix reuse on; run before and after the pipeline (the machine's speed drifts)
  pipeline   the whole synthesize stage through Ray Data (planning, actor pool, commits, ledger), from
             committed entities to committed synthetic rows, actor start and model load included; run
             twice: one unit of work at a time per actor, then `--in-flight` units at once on its engine
             (resources.units_in_flight_per_actor), each with the time its engine sat idle between units
  naive      one request at a time, as the paper's reference code sends them (sequential, synchronous);
             run on the first document only and compared by generated tokens/s
  no-reuse   the engine alone with document-prefix reuse off (transformers: no shared KV cache; vLLM:
             prefix caching off), same prompts as raw

Prints (a) pipeline vs raw throughput, (b) pipeline vs naive throughput, (c) raw wall time with reuse vs
without and the share of prompt tokens served from cache.

    .venv/bin/python benchmarks/engine_synthesis.py --engine transformers [--docs 3] [--pairs 20]
    .venv/bin/python benchmarks/engine_synthesis.py --engine vllm --docs 6 --pairs 24 --docs-per-call 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def build_config(args, out: str, *extra: str):
    from ray_entigraph.config import load_config

    overrides = [
        f"output_dir={out}", f"model.name={args.model}", f"engine.kind={args.engine}", "model.dtype=bfloat16",
        "model.max_model_len=2560", "ingest.max_document_tokens=1700", f"resources.batch_size={args.docs_per_call}",
        f"plan.tasks_per_group={args.pairs}", f"plan.max_pairs_per_doc={args.pairs}", "plan.max_triplets_per_doc=0",
        "synthesis.sampling.temperature=0", f"synthesis.sampling.max_new_tokens={args.max_new_tokens}",
        f"engine.max_batch_size={args.batch}", "engine.vllm.enforce_eager=true", "engine.vllm.cpu_kv_cache_gib=2",
    ] + ([f"engine.vllm.max_num_seqs={args.max_num_seqs}"] if args.max_num_seqs else [])
    return load_config(None, overrides + list(extra))


def long_documents(num_docs: int, target_tokens: int, count_tokens) -> list[dict]:
    """Demo articles joined (rotated per document) until each document holds about `target_tokens`."""
    from ray_entigraph.inputs import DEMO_CORPUS

    articles = [json.loads(line) for line in open(DEMO_CORPUS)]
    docs = []
    for i in range(num_docs):
        parts, n = [], 0
        j = i
        while n < target_tokens:
            art = articles[j % len(articles)]["article"]
            parts.append(art)
            n += count_tokens(art)
            j += 1
        text = "\n\n".join(parts)
        while count_tokens(text) > target_tokens + 100:
            text = text[: int(len(text) * 0.95)].rsplit(" ", 1)[0] + "."
        # the volume number keeps documents distinct beyond the six articles (equal texts are one document)
        docs.append({"title": f"Kestavel compendium, volume {i + 1}", "text": f"Volume {i + 1}.\n\n{text}"})
    return docs


def main() -> None:  # noqa: C901 - a linear script
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    ap.add_argument("--docs", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=20, help="pair requests per document")
    ap.add_argument("--doc-tokens", type=int, default=1500)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=10, help="transformers: requests per generate call")
    ap.add_argument("--docs-per-call", type=int, default=1,
                    help="documents (task groups) per unit of work, for raw and pipeline alike (vLLM batches them)")
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--in-flight", type=int, default=2,
                    help="units in flight per actor in the second pipeline run (resources.units_in_flight_per_actor)")
    ap.add_argument("--max-num-seqs", type=int, default=None,
                    help="vLLM: engine.vllm.max_num_seqs (benchmarks/engine_sweep.py finds it); default vLLM's own")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from ray_entigraph import schema
    from ray_entigraph.context import RunContext
    from ray_entigraph.engines import make_engine, sampling_params
    from ray_entigraph.engines.bundled import resolve_model_path
    from ray_entigraph.planning import entigraph_tasks, group_tasks
    from ray_entigraph.stages.synthesize import relation_request
    from ray_entigraph.text.identity import doc_id_for, normalise_text
    from ray_entigraph.text.parse import heuristic_entities

    out = tempfile.mkdtemp(prefix="bench-engine-")
    tok = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    count = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    documents = long_documents(args.docs, args.doc_tokens, count)
    corpus = f"{out}/corpus.jsonl"
    with open(corpus, "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in documents)
    config = build_config(args, f"{out}/pipeline", f"input.path={corpus}")
    ctx = RunContext.resolve(config)
    prompts = ctx.prompts
    entity_rows = []
    for d in documents:
        text = normalise_text(d["text"])
        doc_id = doc_id_for(text)
        entity_rows.append({"request_key": ctx.extraction_key(doc_id), "doc_id": doc_id, "title": d["title"],
                            "text": text, "summary": None, "entities": heuristic_entities(text, 24),
                            "entities_source": "heuristic", "num_tokens": count(text)})
    groups = []
    for row in entity_rows:
        groups.extend(group_tasks(row, entigraph_tasks(config, prompts, row, None), set(), config.plan.tasks_per_group))
    sampling = sampling_params(config.synthesis.sampling)

    per_group = [[relation_request(prompts, g, t, sampling) for t in g["tasks"] if t["kind"] != schema.KIND_SUMMARY]
                 for g in groups]
    # the units of work the pipeline will hand its actor: `--docs-per-call` task groups each
    per_doc = [sum(per_group[i:i + args.docs_per_call], []) for i in range(0, len(per_group), args.docs_per_call)]
    num_requests = sum(len(r) for r in per_doc)
    print(f"workload: {len(entity_rows)} documents of {[r['num_tokens'] for r in entity_rows]} tokens, "
          f"{num_requests} requests ({num_requests // len(entity_rows)} per document), greedy, "
          f"max_new_tokens={args.max_new_tokens}, engine={args.engine}, model={args.model}, cpus={os.cpu_count()}",
          flush=True)

    def close(engine):
        if hasattr(engine, "close"):
            engine.close()

    def run_engine(cfg, docs, one_at_a_time=False):
        """(wall incl. engine start, wall of generate alone, results)."""
        t0 = time.perf_counter()
        engine = make_engine(cfg)
        t1 = time.perf_counter()
        results = []
        for reqs in docs:
            if one_at_a_time:
                for r in reqs:
                    results += engine.generate([r])
            else:
                results += engine.generate(reqs)
        t2 = time.perf_counter()
        close(engine)
        return t2 - t0, t2 - t1, results

    def gen(results):
        return sum(r.num_generated_tokens for r in results)

    # raw: the engine alone with prefix reuse on
    raw_total, raw_gen_s, raw_res = run_engine(config, per_doc)
    print(f"raw       done: {raw_total:.1f}s ({raw_gen_s:.1f}s generating)", flush=True)

    # pipeline: committed entities in, committed synthetic rows out, through Ray Data
    from committed_layout import write_run

    from ray_entigraph.runtime import init_ray
    from ray_entigraph.stages.base import run_stage
    from ray_entigraph.stages.synthesize import Synthesize

    def engine_idle_s(run_ctx) -> float:
        """Time between the first unit's engine call and the last one's end with no unit in the engine
        (from the commit markers' engine_started / engine_s; one actor)."""
        spans = sorted({(float(e["engine_started"]), float(e["engine_started"]) + float(e["engine_s"]))
                        for p in range(run_ctx.config.num_partitions)
                        for e in run_ctx.synthetic_store.entries(p, run_ctx.synthetic_identity) if "engine_s" in e})
        busy, end = 0.0, None
        for a, b in spans:
            if end is None or a > end:
                busy += b - a
                end = b
            elif b > end:
                busy += b - end
                end = b
        return (spans[-1][1] - spans[0][0] - busy) if spans else float("nan")

    entities = {r["doc_id"]: r["entities"] for r in entity_rows}  # as ingest and extraction would have committed
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")

    def run_pipeline(name: str, in_flight: int):
        """(wall, totals, engine idle s between its units' engine calls) of the synthesize stage."""
        cfg = build_config(args, f"{out}/{name}", f"input.path={corpus}",
                           f"resources.units_in_flight_per_actor={in_flight}")
        write_run(cfg, entity_rows, lambda r: entities[r["doc_id"]])
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        init_ray(cfg)
        t0 = time.perf_counter()
        run_ctx = RunContext.resolve(cfg)
        totals = run_stage(Synthesize(), run_ctx)
        wall = time.perf_counter() - t0
        ray.shutdown()
        return wall, totals, engine_idle_s(run_ctx)

    pipe_s, totals, idle_1 = run_pipeline("pipeline", 1)
    print(f"pipeline  done: {pipe_s:.1f}s (engine idle between units {idle_1:.1f}s)", flush=True)
    pipe_k_s, totals_k, idle_k = run_pipeline("pipeline-k", args.in_flight)
    print(f"pipeline with {args.in_flight} units in flight done: {pipe_k_s:.1f}s (engine idle between units "
          f"{idle_k:.1f}s)", flush=True)

    # raw again: this machine's speed drifts (shared cores), so raw brackets the pipeline and the ratio uses
    # the mean of the two raw runs
    raw2_total, raw2_gen_s, _ = run_engine(config, per_doc)
    print(f"raw again done: {raw2_total:.1f}s ({raw2_gen_s:.1f}s generating)", flush=True)

    # naive: one request at a time (first document only)
    naive_cfg = build_config(args, f"{out}/naive", "engine.prefix_reuse=false")
    naive_total, naive_gen_s, naive_res = run_engine(naive_cfg, per_group[:1], one_at_a_time=True)
    print(f"naive     done: {naive_total:.1f}s ({naive_gen_s:.1f}s generating)", flush=True)

    # no reuse: the engine alone, document-prefix reuse off
    off = ["engine.prefix_reuse=false", "engine.vllm.enable_prefix_caching=false"]
    off_total, off_gen_s, off_res = run_engine(build_config(args, f"{out}/off", *off), per_doc)
    print(f"no-reuse  done: {off_total:.1f}s ({off_gen_s:.1f}s generating)", flush=True)

    raw_tps = gen(raw_res) / ((raw_total + raw2_total) / 2)
    pipe_tps = totals.num_generated_tokens / pipe_s
    pipe_k_tps = totals_k.num_generated_tokens / pipe_k_s
    naive_tps = gen(naive_res) / naive_gen_s
    prompt_tokens = sum(r.num_prompt_tokens for r in raw_res)
    cached = sum(r.num_cached_tokens for r in raw_res)
    same = sum(a.text == b.text for a, b in zip(raw_res, off_res))
    print()
    print(f"{'variant':<10} {'requests':>8} {'wall s':>8} {'generate s':>10} {'gen tokens':>10} {'gen tok/s':>9}")
    for name, n, total, gen_s, toks in (
        ("raw", num_requests, raw_total, raw_gen_s, gen(raw_res)),
        ("raw again", num_requests, raw2_total, raw2_gen_s, gen(raw_res)),
        ("pipeline", totals.num_ok, pipe_s, float("nan"), totals.num_generated_tokens),
        (f"pipe x{args.in_flight}", totals_k.num_ok, pipe_k_s, float("nan"), totals_k.num_generated_tokens),
        ("naive", len(naive_res), naive_total, naive_gen_s, gen(naive_res)),
        ("no-reuse", num_requests, off_total, off_gen_s, gen(off_res)),
    ):
        print(f"{name:<10} {n:>8} {total:>8.1f} {gen_s:>10.1f} {toks:>10} {toks / total:>9.1f}")
    print()
    print(f"(a) pipeline vs raw engine (mean of its two runs), tokens/s, both including engine start: "
          f"{pipe_tps / raw_tps:.3f}  (target >= 0.85)")
    print(f"    with {args.in_flight} units in flight per actor: {pipe_k_tps / raw_tps:.3f}")
    print(f"(b) pipeline vs naive one-at-a-time loop, tokens/s:                "
          f"{pipe_tps / naive_tps:.2f}x  (target >= 5x)"
          f"  [naive tokens/s over generate time only: {naive_tps:.1f}]")
    reuse_gen_s = (raw_gen_s + raw2_gen_s) / 2
    print(f"(c) generate wall time, no reuse / reuse (mean of the raw runs):  "
          f"{off_gen_s / reuse_gen_s:.2f}x  (target >= 2x)")
    print(f"    prompt tokens served from cache with reuse: {cached} of {prompt_tokens} "
          f"({cached / prompt_tokens:.1%}); "
          f"pipeline: {totals.num_cached_tokens} of {totals.num_prompt_tokens} "
          f"({totals.num_cached_tokens / max(totals.num_prompt_tokens, 1):.1%})")
    print(f"    identical outputs with and without reuse (greedy): {same} of {num_requests}")
    print(f"RESULT engine={args.engine} raw_tok_s={raw_tps:.1f} pipeline_tok_s={pipe_tps:.1f} "
          f"pipeline_vs_raw={pipe_tps / raw_tps:.3f} in_flight={args.in_flight} "
          f"pipeline_in_flight_tok_s={pipe_k_tps:.1f} pipeline_in_flight_vs_raw={pipe_k_tps / raw_tps:.3f} "
          f"engine_idle_s={idle_1:.1f} engine_idle_in_flight_s={idle_k:.1f} "
          f"pipeline_vs_naive={pipe_tps / naive_tps:.2f} pipeline_in_flight_vs_naive={pipe_k_tps / naive_tps:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
