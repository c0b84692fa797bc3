"""Driver memory does not grow with the corpus: the whole synthesis (ingest -> extract -> plan -> synthesize)
on 1,000 and on 20,000 documents with the `echo` engine, which answers instantly, so only the framework is
measured. Each size runs in its own process; the driver's peak RSS (getrusage) is compared.

    .venv/bin/python benchmarks/driver_memory.py [--sizes 1000 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

_NAMES = ["Orrin", "Hala", "Veyne", "Dunmark", "Cressby", "Pale", "Kestavel", "Imbrel", "Tarrow", "Selka",
          "Marrow", "Quill", "Odell", "Brannoc", "Ysolde", "Fenwick", "Caddis", "Loxley", "Amber", "Rook"]


def write_corpus(path: str, n: int) -> None:
    """n distinct short documents, each naming a few capitalised entities (the heuristic extractor's input)."""
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            a, b, c = rng.sample(_NAMES, 3)
            text = (f"Record {i}. {a} {b} met {c} Harbour at the {b} Guild in the year {1800 + i % 200}. "
                    f"The {a} Archive keeps the letters of {c} and {b}; the {c} Council sealed them. " * 3)
            f.write(json.dumps({"title": f"Record {i}", "text": text}) + "\n")


def child(n: int) -> None:
    from ray_entigraph.config import load_config
    from ray_entigraph.pipeline import synthesize

    out = tempfile.mkdtemp(prefix=f"bench-mem-{n}-")
    corpus = os.path.join(out, "corpus.jsonl")
    write_corpus(corpus, n)
    config = load_config(None, [
        f"input.path={corpus}", f"output_dir={out}/run", "engine.kind=echo", "extract.max_attempts=1",
        "extract.fallback=heuristic", "plan.max_pairs_per_doc=2", "plan.max_triplets_per_doc=0",
        "plan.tasks_per_group=4", "resources.batch_size=500", "ingest.max_document_tokens=256",
    ])
    t0 = time.perf_counter()
    summary = synthesize(config)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"documents": summary.num_documents, "synthetic_rows": summary.num_synthetic_rows,
                      "wall_s": round(wall, 1), "driver_peak_rss_mb": round(peak_mb, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    results = []
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"run with {n} documents failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{n:>7} documents: {results[-1]}", flush=True)
    base = results[0]["driver_peak_rss_mb"]
    for n, r in zip(args.sizes, results):
        print(f"driver peak RSS at {n:>6} documents: {r['driver_peak_rss_mb']:8.1f} MB  "
              f"({r['driver_peak_rss_mb'] / base:.3f}x of {args.sizes[0]})")
    print(f"(d) driver peak memory, {args.sizes[-1]} vs {args.sizes[0]} documents: "
          f"{results[-1]['driver_peak_rss_mb'] / base:.3f}x  (target <= 1.2x)")


if __name__ == "__main__":
    main()
