"""The ingest stage at corpus scale: (a) one large JSON Lines file (default 1 GB) of generated web-like
documents of varied lengths (a few KB each, some long enough to be chunked, some lines of links, a little
non-Latin text), and (b) many small generated .txt files (default 10^5, in folders of 1,000). Only ingest runs
(`pipeline.synthesize(config, ingest_only=True)`, what the Raw CPT baseline runs), with the project's default
config (the bundled tokenizer, `engine.kind=echo`; ingest holds no model actor), local storage, on every core.
Inputs are written once per size under --workdir, streamed (the generator holds one document at a time), and
reused by later runs with the same sizes.

Per case, in a fresh process:
  - `ingest_bytes_per_s`: input bytes over the ingest stage's wall time (run.json's `stages.ingest.wall_s`:
    planning, the actors, sealing); `wall_s` is the whole `synthesize(ingest_only=True)` call, `resolve_s`
    the driver's listing and unit planning (`RunContext.resolve` + `ingest_units`) timed alone beforehand.
  - `ingest_worker_peak_rss_mb`: the largest peak RSS of any ingest actor process (its own
    `getrusage(RUSAGE_SELF).ru_maxrss`), beside `bytes_per_task_mb` (ingest.bytes_per_task) and
    `worker_base_rss_mb` (its RSS once the tokenizer is loaded, before any unit), so that the reader sees
    the memory bounded by the split size, not by the file size. `polled_peak_rss_mb` is the same peak seen
    from outside (psutil, every 0.25 s, over this run's processes whose title names IngestWorker) as a check.
  - `chunk_tokenizer_calls_per_doc_token`: tokens the tokenizer produced inside `split_counted` (all its
    calls: the offsets of the whole text, the count of the text or of each chunk) over the documents'
    tokens (the length of the first offsets call, i.e. the whole text tokenized once). 1.0 is one pass;
    the target is at most 2. `ingest_tokenizer_passes_per_doc_token` counts every tokenizer call of the
    ingest worker (titles, and each row's `num_tokens`, too); `..._chars_...` the same in characters.
  - the number of ingest units, of input documents (records), of documents rows written (chunks count
    as rows), of rejected documents; where the worker time went (reading and parsing, tokenizer, chunking,
    committing shards, summed over workers).

How the counting reaches the workers, without touching the package: the driver starts Ray itself (so that
`init_ray` joins it) with a `runtime_env` whose `worker_process_setup_hook` runs in every worker process
at start; it imports this file by name and wraps, in that process only, `stages.ingest.load_tokenizer` (the
tokenizer returned counts its calls, characters and tokens), `stages.ingest.split_counted` (which calls
are chunking, and the document's token count) and `IngestWorker` (timings; after each unit the process
writes its counters and `ru_maxrss` to a JSON file of its own under the run's stats folder, which the
driver sums). The wrappers add a few microseconds per call.

    .venv/bin/python benchmarks/ingest_scale.py [--jsonl-gb 1.0] [--small-files 100000] [--workdir DIR]
        [--bytes-per-task-mb 128] [--max-document-tokens 1024] [--keep]

Prints, per case, `RESULT case=<jsonl|small_files> input_mb=... units=... records=... document_rows=...
rejected=... wall_s=... ingest_wall_s=... ingest_bytes_per_s=... ingest_worker_peak_rss_mb=...
bytes_per_task_mb=... chunk_tokenizer_calls_per_doc_token=... ...`, and `RESULT benchmark_wall_s=...`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STATS_ENV = "BENCH_INGEST_STATS"  # the folder each ingest worker writes its counters to
HERE_ENV = "BENCH_INGEST_HERE"  # where the workers import this file from
sys.path.insert(0, HERE)
from control_plane import rss_mb  # noqa: E402 - the benchmarks' one RSS reader, beside this file

# -- generated inputs ---------------------------------------------------------------------------------------

_WORDS = ("the of and to in is was for on that with as by at from his an were are which this be has had one "
          "their its first after new who they have her she two been other when there all during into school time "
          "may years more most only over city some world would where later up such used many can state about "
          "national out known university united then made river council station season museum railway village "
          "population government album church building company team league district county report market "
          "research festival bridge library hospital election province century coast island harbour").split()
_NAMES = ("Orrin Hala Veyne Dunmark Cressby Kestavel Imbrel Tarrow Selka Brannoc Ysolde Fenwick Caddis Loxley "
          "Zürich Łódź Ängelholm Reykjavík São_Paulo Montréal").replace("_", " ").split()
_CJK = ("東京は日本の首都です。", "研究者は新しい方法を提案した。", "この町には古い橋がある。",
        "会議は三月に開かれた。")


def _sentence_pool(rng: random.Random, n: int = 20_000) -> list[str]:
    pool = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randrange(5, 28))]
        for _ in range(rng.randrange(0, 3)):
            words.insert(rng.randrange(len(words)), rng.choice(_NAMES))
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words)), str(rng.randrange(1, 10**rng.randrange(1, 7))))
        end = rng.choice(".......?!")
        pool.append(" ".join(words).capitalize() + end)
    return pool


def web_document(i: int, rng: random.Random, pool: list[str], median_chars: int) -> str:
    """A web-like page of about lognormal(median_chars) characters: paragraphs of 1 to 9 sentences, now and
    then a list of links, a line of CJK text, a long token-like run (an id, base64)."""
    target = int(min(max(rng.lognormvariate(math.log(median_chars), 0.9), 200), 80 * median_chars))
    paras, size = [f"Page {i}: {rng.choice(_NAMES)} {rng.choice(_WORDS)}"], 0
    while size < target:
        kind = rng.random()
        if kind < 0.04:
            para = "\n".join(f"https://example.org/{rng.randrange(10**9)}/{rng.choice(_WORDS)}-"
                             f"{rng.randrange(10**4)}" for _ in range(rng.randrange(2, 10)))
        elif kind < 0.06:
            para = "".join(rng.choices(_CJK, k=rng.randrange(2, 12)))
        elif kind < 0.065:
            para = "%032x" % rng.getrandbits(128) * rng.randrange(4, 40)
        else:
            para = " ".join(rng.choices(pool, k=rng.randrange(1, 10)))
        paras.append(para)
        size += len(para) + 2
    return "\n\n".join(paras)


def write_jsonl(path: str, target_bytes: int, seed: int = 0) -> tuple[int, int]:
    """One JSON Lines file of about target_bytes, written a document at a time; (bytes, documents)."""
    rng, written, n = random.Random(seed), 0, 0
    pool = _sentence_pool(rng)
    tmp = path + ".tmp"
    with open(tmp, "wb", buffering=8 << 20) as f:
        while written < target_bytes:
            text = web_document(n, rng, pool, median_chars=2500)
            title = f"Page {n}: {text[:40].split(':')[-1]}"
            line = (json.dumps({"url": f"https://example.org/page/{n}", "title": title, "text": text,
                                "crawl_date": f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}"},
                               ensure_ascii=False) + "\n").encode()
            f.write(line)
            written += len(line)
            n += 1
    os.replace(tmp, path)
    return written, n


def write_small_files(folder: str, n: int, seed: int = 1) -> tuple[int, int]:
    """n .txt files of about lognormal(1,200) characters each, 1,000 per subfolder; (bytes, files)."""
    rng, written = random.Random(seed), 0
    pool = _sentence_pool(rng, 5_000)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(n):
        sub = os.path.join(tmp, f"d{i // 1000:04d}")
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        data = web_document(i, rng, pool, median_chars=1200).encode()
        with open(os.path.join(sub, f"doc-{i:07d}.txt"), "wb") as f:
            f.write(data)
        written += len(data)
    os.replace(tmp, folder)
    return written, n


def ensure_input(workdir: str, case: str, args) -> tuple[str, float]:
    """The case's input path (generated once per size, then reused) and the seconds generating it took."""
    if case == "jsonl":
        path = os.path.join(workdir, f"web-{args.jsonl_gb:g}gb.jsonl")
        if os.path.exists(path):
            return path, 0.0
        t0 = time.perf_counter()
        write_jsonl(path, int(args.jsonl_gb * 1e9))
        return path, time.perf_counter() - t0
    path = os.path.join(workdir, f"small-{args.small_files}")
    if os.path.isdir(path):
        return path, 0.0
    t0 = time.perf_counter()
    write_small_files(path, args.small_files)
    return path, time.perf_counter() - t0


def input_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(e.stat().st_size for d in os.scandir(path) for e in os.scandir(d.path))


# -- the worker half: counters installed by the runtime_env setup hook --------------------------------------

_COUNTERS: dict = {}


def _dump() -> None:
    c = _COUNTERS
    c["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    c["rss_mb"] = rss_mb()
    path = os.path.join(c["dir"], f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(c, f)
    os.replace(path + ".tmp", path)


class CountingTokenizer:
    """A tokenizer that counts its calls, the characters handed to it and the tokens it gave, apart inside
    and outside `split_counted`; everything else (is_fast, ...) is the wrapped tokenizer's."""

    def __init__(self, tokenizer):
        self._tok = tokenizer

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, *a, **kw):
        t0 = time.perf_counter()
        out = self._tok(text, *a, **kw)
        c, where = _COUNTERS, _COUNTERS["phase"]
        texts = [text] if isinstance(text, str) else list(text)
        ids = [out["input_ids"]] if isinstance(text, str) else out["input_ids"]
        c[f"{where}_calls"] += len(texts)
        c[f"{where}_chars"] += sum(len(t) for t in texts)
        c[f"{where}_tokens"] += sum(len(x) for x in ids)
        c["tokenizer_s"] += time.perf_counter() - t0
        return out


def install_counters(stats_dir: str) -> None:
    """Wrap the ingest worker's tokenizer, chunker and calls in this process (the setup hook's work)."""
    import ray_entigraph.stages.ingest as ingest

    if _COUNTERS:
        return
    _COUNTERS.update(dir=stats_dir, pid=os.getpid(), phase="other", units=0, records=0, doc_tokens=0, doc_chars=0,
                     chunks=0, tokenizer_s=0.0, split_s=0.0, read_s=0.0, commit_s=0.0, call_s=0.0, init_s=0.0,
                     base_rss_mb=0.0, rss_after_unit_mb=[], ingest_worker=False,
                     **{f"{w}_{k}": 0 for w in ("chunk", "other") for k in ("calls", "chars", "tokens")})
    load_tokenizer, split_counted, commit = ingest.load_tokenizer, ingest.split_counted, ingest.commit_partitioned

    def counting_load_tokenizer(*a, **kw):
        return CountingTokenizer(load_tokenizer(*a, **kw))

    def counting_split(text, max_tokens, token_offsets, count_tokens):
        first: list[int] = []

        def offsets(t):
            spans = token_offsets(t)
            if not first:
                first.append(len(spans))  # the whole text, tokenized once: the document's tokens
            return spans

        offsets.exact = getattr(token_offsets, "exact", False)  # type: ignore[attr-defined]
        _COUNTERS["phase"] = "chunk"
        t0 = time.perf_counter()
        try:
            chunks = split_counted(text, max_tokens, offsets, count_tokens)
        finally:
            _COUNTERS["phase"] = "other"
        _COUNTERS["split_s"] += time.perf_counter() - t0
        _COUNTERS["records"] += 1
        _COUNTERS["doc_tokens"] += first[0] if first else 0
        _COUNTERS["doc_chars"] += len(text)
        _COUNTERS["chunks"] += len(chunks)
        return chunks

    def timed_commit(*a, **kw):
        t0 = time.perf_counter()
        try:
            return commit(*a, **kw)
        finally:
            _COUNTERS["commit_s"] += time.perf_counter() - t0

    ingest.load_tokenizer = counting_load_tokenizer
    ingest.split_counted = counting_split
    ingest.commit_partitioned = timed_commit

    worker = ingest.IngestWorker
    init, call, records = worker.__init__, worker.__call__, worker._records

    def timed_init(self, *a, **kw):
        t0 = time.perf_counter()
        init(self, *a, **kw)
        _COUNTERS.update(ingest_worker=True, init_s=time.perf_counter() - t0, base_rss_mb=rss_mb())
        _dump()

    def timed_call(self, batch):
        t0 = time.perf_counter()
        try:
            return call(self, batch)
        finally:
            _COUNTERS["call_s"] += time.perf_counter() - t0
            _COUNTERS["units"] += 1
            _COUNTERS["rss_after_unit_mb"].append(round(rss_mb(), 1))
            _dump()

    def timed_records(self, member):
        t0 = time.perf_counter()
        try:
            return records(self, member)
        finally:
            _COUNTERS["read_s"] += time.perf_counter() - t0

    worker.__init__, worker.__call__, worker._records = timed_init, timed_call, timed_records


def _worker_setup() -> None:
    """The runtime_env worker_process_setup_hook: pickled by value, it imports this file by name in the worker."""
    import os
    import sys

    stats, here = os.environ.get("BENCH_INGEST_STATS"), os.environ.get("BENCH_INGEST_HERE")
    if not stats or not here:
        return
    if here not in sys.path:
        sys.path.insert(0, here)
    import ingest_scale

    ingest_scale.install_counters(stats)


# -- the driver half ------------------------------------------------------------------------------------------

class RssPoller:
    """Peak RSS of the processes whose title names IngestWorker, seen from outside every `interval` s."""

    def __init__(self, stats_dir: str, needle: str = "IngestWorker", interval: float = 0.25):
        self.stats_dir, self.needle, self.interval = stats_dir, needle, interval
        self.peak: dict[int, float] = {}
        self.peak_sum = 0.0
        self.titles: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "RssPoller":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        procs: dict[int, psutil.Process] = {}
        others: set[int] = set()  # IngestWorker processes of another Ray instance on this machine
        while not self._stop.is_set():
            total = 0.0
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if self.needle in cmd and p.pid not in procs and p.pid not in others:
                    try:  # this run's workers carry its stats folder in their environment (runtime_env)
                        ours = p.environ().get(STATS_ENV) == self.stats_dir
                    except Exception:  # noqa: BLE001 - gone, or not ours to read
                        ours = False
                    if not ours:
                        others.add(p.pid)
                        continue
                    procs[p.pid] = p
                if p.pid in procs:
                    self.titles.add(cmd[:80])
            for pid, p in list(procs.items()):
                try:
                    rss = p.memory_info().rss / 2**20
                except Exception:  # noqa: BLE001 - gone
                    procs.pop(pid)
                    continue
                self.peak[pid] = max(self.peak.get(pid, 0.0), rss)
                total += rss
            self.peak_sum = max(self.peak_sum, total)
            self._stop.wait(self.interval)


def child(case: str, args) -> None:
    import ray

    from ray_entigraph import schema, storage
    from ray_entigraph.config import load_config
    from ray_entigraph.context import RunContext
    from ray_entigraph.ledger import read_run_state
    from ray_entigraph.pipeline import synthesize
    from ray_entigraph.runtime import LOG_LEVEL_ENV, QUIET_LIBRARIES, log_level

    workdir = args.workdir
    inputs, gen_s = ensure_input(workdir, case, args)
    nbytes = input_bytes(inputs)
    run_dir = tempfile.mkdtemp(prefix=f"run-{case}-", dir=workdir)
    stats = os.path.join(run_dir, "worker-stats")
    os.makedirs(stats)
    overrides = [f"input.path={inputs}", f"output_dir={run_dir}/out", "engine.kind=echo"]
    if args.bytes_per_task_mb:
        overrides.append(f"ingest.bytes_per_task={int(args.bytes_per_task_mb * 2**20)}")
    if args.max_document_tokens:
        overrides.append(f"ingest.max_document_tokens={args.max_document_tokens}")
    config = load_config(None, overrides)

    t0 = time.perf_counter()
    units = len(RunContext.resolve(config).ingest_units())
    resolve_s = time.perf_counter() - t0

    # Ray started here, as runtime.init_ray would (it joins a running instance), plus the counting hook
    env_vars = {**QUIET_LIBRARIES, LOG_LEVEL_ENV: log_level(), **storage.configure(config.storage.settings()),
                STATS_ENV: stats, HERE_ENV: HERE}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=True,
             runtime_env={"env_vars": env_vars, "worker_process_setup_hook": _worker_setup})
    poller = RssPoller(stats).start()
    t1 = time.perf_counter()
    summary = synthesize(config, ingest_only=True)
    wall = time.perf_counter() - t1
    poller.stop()
    stage = read_run_state(config.output_dir)["stages"][schema.INGEST]
    ray.shutdown()

    workers = []
    for name in os.listdir(stats):
        if name.endswith(".json"):
            with open(os.path.join(stats, name)) as f:
                w = json.load(f)
            if w.get("ingest_worker"):
                workers.append(w)

    def total(key: str) -> float:
        return sum(w[key] for w in workers)

    doc_tokens = max(total("doc_tokens"), 1)
    ingest_wall = float(stage.get("wall_s") or wall)
    out = {
        "case": case, "input_mb": round(nbytes / 2**20, 1), "gen_s": round(gen_s, 1), "units": units,
        "records": int(total("records")), "document_rows": summary.num_documents,
        "rejected": summary.num_document_errors, "chunks": int(total("chunks")),
        "wall_s": round(wall, 1), "ingest_wall_s": round(ingest_wall, 1), "resolve_s": round(resolve_s, 1),
        "ingest_bytes_per_s": round(nbytes / ingest_wall), "ingest_mb_per_s": round(nbytes / ingest_wall / 2**20, 2),
        "bytes_per_task_mb": round(config.ingest.bytes_per_task / 2**20, 1),
        "ingest_worker_peak_rss_mb": round(max((w["peak_rss_mb"] for w in workers), default=0.0), 1),
        "worker_base_rss_mb": round(max((w["base_rss_mb"] for w in workers), default=0.0), 1),
        "polled_peak_rss_mb": round(max(poller.peak.values(), default=0.0), 1),
        "polled_peak_sum_rss_mb": round(poller.peak_sum, 1), "ingest_workers": len(workers),
        "polled_workers": len(poller.peak),
        "chunk_tokenizer_calls_per_doc_token": round(total("chunk_tokens") / doc_tokens, 3),
        "ingest_tokenizer_passes_per_doc_token": round((total("chunk_tokens") + total("other_tokens")) / doc_tokens, 3),
        "chunk_tokenizer_chars_per_doc_char": round(total("chunk_chars") / max(total("doc_chars"), 1), 3),
        "ingest_tokenizer_chars_per_doc_char": round(
            (total("chunk_chars") + total("other_chars")) / max(total("doc_chars"), 1), 3),
        "tokenizer_calls_per_record": round(
            (total("chunk_calls") + total("other_calls")) / max(total("records"), 1), 2),
        "doc_tokens": int(total("doc_tokens")),
        "worker_s": {k: round(total(k), 1) for k in ("init_s", "call_s", "read_s", "split_s", "tokenizer_s",
                                                     "commit_s")},
        "rss_after_unit_mb": {str(w["pid"]): w["rss_after_unit_mb"][:12] for w in workers},
        "units_per_worker": [w["units"] for w in workers],
        "titles": sorted(poller.titles)[:4],
    }
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(json.dumps(out), flush=True)


_RESULT_KEYS = ("case", "input_mb", "units", "records", "document_rows", "rejected", "wall_s", "ingest_wall_s",
                "resolve_s", "ingest_bytes_per_s", "ingest_mb_per_s", "ingest_worker_peak_rss_mb",
                "bytes_per_task_mb", "worker_base_rss_mb", "polled_peak_rss_mb", "ingest_workers",
                "chunk_tokenizer_calls_per_doc_token", "ingest_tokenizer_passes_per_doc_token",
                "chunk_tokenizer_chars_per_doc_char")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jsonl-gb", type=float, default=1.0, help="size of the JSON Lines file (0: skip the case)")
    ap.add_argument("--small-files", type=int, default=100_000, help="number of small .txt files (0: skip)")
    ap.add_argument("--workdir", help="where inputs are generated (and reused) and runs written; default a new "
                    "temporary folder, removed at the end unless --keep")
    ap.add_argument("--bytes-per-task-mb", type=float, default=0, help="ingest.bytes_per_task (0: the default)")
    ap.add_argument("--max-document-tokens", type=int, default=0, help="ingest.max_document_tokens (0: default)")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs and the runs' outputs")
    ap.add_argument("--child", choices=("jsonl", "small_files"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args)

    started = time.perf_counter()
    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-ingest-")
    os.makedirs(workdir, exist_ok=True)
    env = {**os.environ, "RAY_ADDRESS": ""}
    cases = [c for c, on in (("jsonl", args.jsonl_gb > 0), ("small_files", args.small_files > 0)) if on]
    try:
        for case in cases:
            cmd = [sys.executable, __file__, "--child", case, "--workdir", workdir, "--jsonl-gb", str(args.jsonl_gb),
                   "--small-files", str(args.small_files), "--bytes-per-task-mb", str(args.bytes_per_task_mb),
                   "--max-document-tokens", str(args.max_document_tokens)] + (["--keep"] if args.keep else [])
            with open(os.path.join(workdir, f"{case}.log"), "w") as log:
                proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
            if proc.returncode:
                with open(os.path.join(workdir, f"{case}.log")) as f:
                    sys.exit(f"case {case} failed:\n{f.read()[-4000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print("RESULT " + " ".join(f"{k}={r[k]}" for k in _RESULT_KEYS), flush=True)
            print(f"  detail {json.dumps(r)}", flush=True)
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"RESULT benchmark_wall_s={time.perf_counter() - started:.1f}", flush=True)


if __name__ == "__main__":
    main()
