"""Synthesis overhead, measured side by side in one run on the same requests and the same model:

  raw      the engine alone: TransformersEngine.generate on each unit of work's requests
  stage    our synthesis stage in-process on the same units: prompt rendering, result rows, the commit
           protocol (shard + errors + marker) and the ledger's manifest entry -- i.e. raw + ledger
  ray      the whole synthesize stage through Ray Data (planning, actor pool, streaming, commits), from
           committed entities to committed synthetic rows, including actor start and model load

Prints wall time, generated tokens/s and the ratios stage/raw (the ledger's overhead) and ray/raw.
Greedy decoding, so every variant generates the same tokens.

    .venv/bin/python benchmarks/synthesis_overhead.py [--docs 2] [--pairs 4] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import pyarrow as pa


def main() -> None:  # noqa: C901 - a linear script
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=4, help="pairs per document")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    args = ap.parse_args()

    from ray_entigraph import schema
    from ray_entigraph.config import load_config
    from ray_entigraph.context import RunContext
    from ray_entigraph.inputs import DEMO_CORPUS
    from ray_entigraph.planning import entigraph_tasks, group_tasks
    from ray_entigraph.stages.synthesize import RelationSynthesisWorker
    from ray_entigraph.text.identity import doc_id_for, normalise_text
    from ray_entigraph.text.parse import heuristic_entities

    out = tempfile.mkdtemp(prefix="bench-synth-")
    config = load_config(None, [
        f"output_dir={out}/stage", f"model.name={args.model}", "resources.batch_size=1",
        f"plan.tasks_per_group={args.pairs}", f"plan.max_pairs_per_doc={args.pairs}", "plan.max_triplets_per_doc=0",
        "synthesis.sampling.temperature=0",
        f"synthesis.sampling.max_new_tokens={args.max_new_tokens}", "engine.max_batch_size=8",
    ])
    ctx = RunContext.resolve(config)
    prompts = ctx.prompts
    docs = [json.loads(line) for line in open(DEMO_CORPUS)][: args.docs]
    entity_rows = []
    for d in docs:
        text = normalise_text(d["article"])
        doc_id = doc_id_for(text)
        entity_rows.append({"request_key": ctx.extraction_key(doc_id), "doc_id": doc_id, "title": d["title"],
                            "text": text, "summary": None, "entities": heuristic_entities(text),
                            "entities_source": "heuristic"})
    groups = []
    for row in entity_rows:
        groups.extend(group_tasks(row, entigraph_tasks(config, prompts, row, None), set(), config.plan.tasks_per_group))

    stage = RelationSynthesisWorker(config, prompts, ctx.synthesis_id)
    engine = stage.engine

    def requests_of(group):
        from ray_entigraph.stages.synthesize import relation_request

        return [relation_request(prompts, group, t, stage.sampling) for t in group["tasks"]
                if t["kind"] != schema.KIND_SUMMARY]

    engine.generate(requests_of(groups[0])[:2])  # warm-up
    raw_s = stage_s = 0.0
    raw_tokens = stage_tokens = 0
    def run_raw(group):
        nonlocal raw_s, raw_tokens
        t0 = time.perf_counter()
        results = engine.generate(requests_of(group))
        raw_s += time.perf_counter() - t0
        raw_tokens += sum(r.num_generated_tokens for r in results)

    def run_stage(group):
        nonlocal stage_s, stage_tokens
        t0 = time.perf_counter()
        manifest = stage(pa.Table.from_pylist([group]))
        stage_s += time.perf_counter() - t0
        stage_tokens += sum(manifest.column("num_generated_tokens").to_pylist())

    for i, group in enumerate(groups):  # interleaved, each going first half the time: noise hits both alike
        for fn in ((run_raw, run_stage) if i % 2 == 0 else (run_stage, run_raw)):
            fn(group)

    # the same work through Ray Data: committed entities in, committed synthetic rows out
    from ray_entigraph.runtime import init_ray
    from ray_entigraph.stages.base import run_stage as run_ray_stage
    from ray_entigraph.stages.synthesize import Synthesize

    ray_config = config.model_copy(update={"output_dir": f"{out}/ray"})
    from committed_layout import write_run

    entities = {r["doc_id"]: r["entities"] for r in entity_rows}  # as ingest and extraction would have committed
    write_run(ray_config, entity_rows, lambda r: entities[r["doc_id"]])
    init_ray(ray_config)
    t0 = time.perf_counter()
    totals = run_ray_stage(Synthesize(), RunContext.resolve(ray_config))
    ray_s = time.perf_counter() - t0

    n = sum(len(g["tasks"]) for g in groups)
    print(f"\nsynthesis overhead: {n} requests, {len(groups)} units of work, greedy, "
          f"max_new_tokens={args.max_new_tokens}, "
          f"model={args.model}, torch threads={engine._torch.get_num_threads()}, cpus={os.cpu_count()}")
    print(f"{'variant':<8} {'wall s':>8} {'gen tokens':>11} {'gen tok/s':>10} {'ratio vs raw':>13}")
    for name, secs, toks in (("raw", raw_s, raw_tokens), ("stage", stage_s, stage_tokens),
                             ("ray", ray_s, totals.num_generated_tokens)):
        print(f"{name:<8} {secs:>8.2f} {toks:>11} {toks / secs:>10.1f} {secs / raw_s:>13.3f}")
    print(f"ledger + commit overhead (stage/raw - 1): {100 * (stage_s / raw_s - 1):+.1f}%")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
