"""The rewrite augmenter's formats with a real small model: every document rewritten in every format of
`rewrite-v1`, then, per format, how grounded the rewrites are in their document and what the output
filters would drop.

Documents: `--docs` invented articles from the knowledge benchmark's seeded generator (people, places, dates
and numbers that no model knows, so every fact in a rewrite either comes from the document or is made up).
The whole `synthesize` path runs (ingest, plan, the engine on Ray actors, commits); per format it reports:
rows, mean grounding (text/grounding.py: the share of the text's entities, numbers and content words the
document has), copy rate (share of 8-word spans found verbatim in the document), and the share of rows each
output filter (text/output_filters.py) would drop: looping, truncated (stopped at its max_new_tokens),
refusal, language.

    .venv/bin/python benchmarks/rewrite_formats.py --engine vllm --docs 50

Prints `RESULT format=<name> rows=<n> mean_grounding=<x> copy_rate=<x> looping=<x> truncated=<x>
refusal=<x> language=<x> mean_generated_tokens=<x>` per format, and the run's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["vllm", "transformers"], default="vllm")
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--docs", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=8, help="resources.batch_size: documents per unit of work")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ray_entigraph.config import load_config
    from ray_entigraph.context import RunContext
    from ray_entigraph.corpus import read_documents, read_synthetic
    from ray_entigraph.demo.knowledge import generate
    from ray_entigraph.pipeline import synthesize
    from ray_entigraph.text.grounding import DocumentIndex, score_text
    from ray_entigraph.text.output_filters import output_problem
    from ray_entigraph.text.overlap import COPY_N, copy_rate, ngrams, words

    out = args.out or tempfile.mkdtemp(prefix="bench-rewrite-formats-")
    records = [r for split in generate(docs_per_split=-(-args.docs // 2)).values() for r in split][: args.docs]
    corpus = os.path.join(out, "corpus.jsonl")
    os.makedirs(out, exist_ok=True)
    with open(corpus, "w") as f:
        f.writelines(json.dumps({"title": r["title"], "text": r["article"]}) + "\n" for r in records)
    config = load_config(None, [
        f"input.path={corpus}", f"output_dir={out}/run", f"model.name={args.model}", f"engine.kind={args.engine}",
        "synthesis.augmenter=rewrite", "synthesis.prompts=rewrite-v1", "rewrite.output_ratio=1.0",
        "rewrite.min_new_tokens=128", f"synthesis.sampling.max_new_tokens={args.max_new_tokens}",
        f"synthesis.sampling.temperature={args.temperature}", "synthesis.sampling.top_p=0.95",
        "synthesis.sampling.repetition_penalty=1.0", f"resources.batch_size={args.batch_size}",
        "plan.tasks_per_group=5", "model.max_model_len=2048", "engine.vllm.enforce_eager=true",
        "engine.vllm.cpu_kv_cache_gib=2", "engine.vllm.max_num_seqs=64", "resources.max_actors=1",
        "model.dtype=bfloat16"])
    started = time.time()
    summary = synthesize(config)
    wall = time.time() - started
    ctx = RunContext.resolve(config)
    c = ctx.corpus()
    stats: dict[str, dict] = {}
    for p in range(c.num_partitions):
        docs = {d["doc_id"]: d for d in read_documents(c, p, ["doc_id", "title", "text"])}
        for row in read_synthetic(c, p, ["doc_id", "kind", "text", "finish_reason", "num_generated_tokens"]):
            doc = docs.get(row["doc_id"])
            if doc is None or not row["text"]:
                continue
            s = stats.setdefault(row["kind"].removeprefix("rewrite:"), {
                "rows": 0, "grounding": 0.0, "copy": 0.0, "copy_rows": 0, "tokens": 0,
                "looping": 0, "truncated": 0, "refusal": 0, "language": 0})
            s["rows"] += 1
            s["tokens"] += int(row["num_generated_tokens"] or 0)
            s["grounding"] += score_text(row["text"], DocumentIndex.from_text(doc["text"], title=doc["title"])).score
            rate = copy_rate(row["text"], ngrams(words(doc["text"]), COPY_N))
            if rate is not None:
                s["copy"] += rate
                s["copy_rows"] += 1
            for check in ("looping", "truncated", "refusal", "language"):
                s[check] += output_problem(row["text"], row["finish_reason"], doc["text"], (check,)) is not None
    print(f"synthesize: {summary.num_tasks_planned} rewrites planned over {len(records)} documents, "
          f"wall {wall:.1f}s, engine={args.engine}, model={args.model}", flush=True)
    for name, s in sorted(stats.items()):
        n = max(s["rows"], 1)
        print(f"RESULT format={name} rows={s['rows']} mean_grounding={s['grounding'] / n:.3f} "
              f"copy_rate={s['copy'] / max(s['copy_rows'], 1):.3f} looping={s['looping'] / n:.3f} "
              f"truncated={s['truncated'] / n:.3f} refusal={s['refusal'] / n:.3f} language={s['language'] / n:.3f} "
              f"mean_generated_tokens={s['tokens'] / n:.0f}", flush=True)
    print(f"RESULT docs={len(records)} rows={sum(s['rows'] for s in stats.values())} wall_s={wall:.1f} "
          f"engine={args.engine}")


if __name__ == "__main__":
    main()
