"""Curation with corpus-wide dedup at scale, with the model taken out: a finished synthesis of `--rows`
synthetic rows is written straight into the committed layout (committed_layout.py: documents, entities and
synthetic rows whose texts this script makes up, as an engine would have left them), then the curate stage
runs with `curate.dedup` through the pipeline as `synthesize` runs it (earlier stages find everything
committed), on local storage, in a fresh process.

Every row's text is its own: 60 words drawn from a 5,000-word vocabulary (two unrelated rows share almost
no 5-word shingle). Planted near-duplicates, each one word changed from its original:
- within a document (a copy of the document's first row): found by the partitions' own checked pass;
- across documents (a copy of a row of a document 7 places on, almost always another partition);
- one hot cluster of `--hot` rows, every one a copy of the same text, spread over the corpus.

The run is written by one process and curated by another, so the driver's memory is the curate stage's
alone. Prints `RESULT rows=<n> planted=<n> found=<n> recall=<x> unplanted_dropped=<n> wall_s=<s>
driver_rss_growth_mb=<mb> shuffle_rows=<band rows> shuffle_bytes_per_row=<bytes per synthetic row>
cross_partition_edges=<n>` (the driver's peak RSS growth over its RSS once Ray is up; shuffle bytes are
the Ray Data size of the (band key, row id) dataset over the rows).

    .venv/bin/python benchmarks/curation_scale.py [--sizes 100000 1000000] [--hot 10000]

Per size one RESULT line; then `RESULT driver_rss_growth_mb_between_sizes=<mb>`: the driver's growth at
the largest size minus at the smallest (imports and Ray's own start-up cancel out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from control_plane import rss_mb  # noqa: E402 - benchmarks/ is on the path above

ROWS_PER_DOC = 10  # 5 entities: 10 pairs per document (no triplets, no summary)
# 116 five-word shingles: a one-word edit is at Jaccard 0.92 to its original, two edits of one text 0.84
WORDS_PER_ROW = 120


def vocabulary(n: int = 5000) -> list[str]:
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return sorted({"".join(rng.choice(letters) for _ in range(rng.randint(4, 9))) for _ in range(n * 2)})[:n]


class Texts:
    """Deterministic row texts with planted near-duplicates; `planted` maps a row's task id to its cluster."""

    def __init__(self, docs: int, hot: int, seed: int = 0):
        self.words = vocabulary()
        self.docs, self.seed = docs, seed
        rng = random.Random(seed)
        self.within = set(rng.sample(range(docs), max(docs // 100, 1)))  # doc k: its row 5 copies its row 0
        self.across = set(rng.sample(range(docs), max(docs // 100, 1))) - self.within  # doc k row 7 ~ doc k+7 row 3
        self.hot = set(rng.sample(range(docs * ROWS_PER_DOC), hot))  # global row numbers in the hot cluster

    def base(self, key: str) -> list[str]:
        rng = random.Random(f"{self.seed}:{key}")
        return [rng.choice(self.words) for _ in range(WORDS_PER_ROW)]

    def edit(self, words: list[str], key: str) -> str:
        rng = random.Random(f"edit:{key}")
        words = list(words)
        words[rng.randrange(10, WORDS_PER_ROW - 10)] = rng.choice(self.words)
        return " ".join(words).capitalize() + "."

    def text(self, doc: int, j: int) -> tuple[str, str | None]:
        """(text, planted cluster or None) of row j of document doc; an original's cluster is its copy's."""
        n = doc * ROWS_PER_DOC + j
        if n in self.hot:
            return self.edit(self.base("hot"), str(n)), "hot"
        if j == 5 and doc in self.within:
            return self.edit(self.base(f"{doc}:0"), str(n)), f"within:{doc}"
        if j == 7 and doc in self.across:
            return self.edit(self.base(f"{(doc + 7) % self.docs}:3"), str(n)), f"across:{doc}"
        cluster = None
        if j == 0 and doc in self.within:
            cluster = f"within:{doc}"
        elif j == 3 and (doc - 7) % self.docs in self.across:
            cluster = f"across:{(doc - 7) % self.docs}"
        return " ".join(self.base(f"{doc}:{j}")).capitalize() + ".", cluster


def config_for(folder: str, partitions: int):
    from ray_entigraph.config import load_config

    return load_config(None, [
        f"input.path={folder}/in/corpus.jsonl", f"output_dir={folder}/run", "engine.kind=echo",
        f"num_partitions={partitions}", "plan.max_pairs_per_doc=10", "plan.max_triplets_per_doc=0",
        "curate.enabled=true", "curate.dedup=true", "resources.cpu.max_workers=2"])


def write(args) -> None:
    """First process: the committed run, and the planted clusters (task id -> cluster) in planted.json."""
    from committed_layout import write_run

    docs = args.rows // ROWS_PER_DOC
    os.makedirs(f"{args.folder}/in")
    with open(f"{args.folder}/in/corpus.jsonl", "w") as f:  # the input file the committed run says it read
        f.write(json.dumps({"title": "x", "text": "y" * 50}) + "\n")
    config = config_for(args.folder, args.partitions)
    texts = Texts(docs, args.hot)
    names = [f"Entity{k}" for k in range(5)]
    doc_ids = {f"d{hashlib.blake2b(str(d).encode(), digest_size=16).hexdigest()}": d for d in range(docs)}
    order: dict[str, int] = {}
    planted: dict[str, str] = {}

    def doc_rows():
        for doc_id, d in doc_ids.items():
            yield {"doc_id": doc_id, "title": f"Doc {d}", "text": " ".join(texts.base(f"{d}:0")),
                   "num_tokens": 80, "source": "bench"}

    def synthetic_text(row: dict, task: dict) -> str:
        j = order.get(row["doc_id"], 0)
        order[row["doc_id"]] = j + 1
        text, cluster = texts.text(doc_ids[row["doc_id"]], j)
        if cluster:
            planted[task["task_id"]] = cluster
        return text

    t0 = time.perf_counter()
    write_run(config, doc_rows, lambda r: names, synthetic=synthetic_text)
    with open(f"{args.folder}/planted.json", "w") as f:
        json.dump({"planted": planted, "rows": sum(order.values()), "write_s": time.perf_counter() - t0}, f)


def child(args) -> None:
    """Second process (the driver measured): curate with dedup, as `synthesize` runs it."""
    import pyarrow.parquet as pq
    import ray

    from ray_entigraph.context import RunContext
    from ray_entigraph.pipeline import synthesize

    config = config_for(args.folder, args.partitions)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    base_rss = rss_mb()
    t1 = time.perf_counter()
    synthesize(config)
    wall = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with open(f"{args.folder}/planted.json") as f:
        info = json.load(f)
    planted: dict[str, str] = info["planted"]
    members: dict[str, int] = {}  # cluster -> rows in it (an original and its copy; the hot cluster's copies)
    for cluster in planted.values():
        members[cluster] = members.get(cluster, 0) + 1
    expected_drops = sum(n - 1 for n in members.values())  # each cluster keeps one row
    ctx = RunContext.resolve(config)
    out = config.output_dir
    dropped: set[str] = set()
    for root, _, files in os.walk(os.path.join(out, "errors", ctx.curated_stage())):
        for name in files:
            if name.endswith(".parquet"):
                t = pq.read_table(os.path.join(root, name), columns=["request_key", "error"]).to_pylist()
                dropped.update(r["request_key"] for r in t if r["error"].startswith("near-duplicate"))
    found = sum(1 for tid in dropped if tid in planted)
    with open(os.path.join(out, ctx.curated_stage(), "_dedup", "summary.json")) as f:
        summary = json.load(f)
    print(json.dumps({
        "rows": info["rows"], "planted": expected_drops, "found": found,
        "recall": round(found / max(expected_drops, 1), 4),
        "unplanted_dropped": sum(1 for tid in dropped if tid not in planted), "dropped": len(dropped),
        "hot": args.hot, "write_s": round(info["write_s"], 1), "wall_s": round(wall, 1),
        "driver_rss_growth_mb": round(max(peak - base_rss, 0.0), 1), "driver_base_rss_mb": round(base_rss, 1),
        "shuffle_rows": summary["band_rows"],
        "shuffle_bytes_per_row": round(summary["shuffle_bytes"] / max(info["rows"], 1), 1),
        "cross_partition_edges": summary["edges"]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="rows per run")
    ap.add_argument("--hot", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--step", choices=["write", "curate"])
    ap.add_argument("--folder")
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step == "write":
        write(args)
        return
    if args.step == "curate":
        child(args)
        return
    results = []
    for rows in args.sizes:
        folder = tempfile.mkdtemp(prefix="bench-curate-")
        common = ["--rows", str(rows), "--hot", str(min(args.hot, rows // 10)), "--partitions", str(args.partitions),
                  "--folder", folder]
        subprocess.run([sys.executable, __file__, "--step", "write", *common], check=True)
        out = subprocess.run([sys.executable, __file__, "--step", "curate", *common], capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not line:
            sys.stderr.write(out.stdout[-3000:] + out.stderr[-5000:])
            sys.exit(out.returncode or 1)
        results.append(json.loads(line[-1]))
        print("RESULT " + " ".join(f"{k}={v}" for k, v in results[-1].items()), flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    if len(results) > 1:  # what grows with the corpus: the driver's growth at the largest size over the smallest
        print(f"RESULT driver_rss_growth_mb_between_sizes="
              f"{results[-1]['driver_rss_growth_mb'] - results[0]['driver_rss_growth_mb']:.1f} "
              f"rows={results[0]['rows']}..{results[-1]['rows']}")

if __name__ == "__main__":
    main()
