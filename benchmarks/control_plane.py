"""The synthesis control plane at corpus scale, with the model taken out: the whole synthesis (ingest ->
extract -> plan -> synthesize, sealing included) with the `echo` engine (instant answers) over generated
short documents, `num_partitions` fixed at 256, on S3 (moto in server mode on loopback) behind proxies that
add 20 ms to every request and count requests by type: one proxy for the driver, one for the workers, so the
driver's own requests are counted apart.

Per size, in a fresh process: the run's wall time, the driver's peak RSS growth over its RSS after Ray
started, the largest object the driver ships to a task or actor (pickled), a no-op resume's and `status`'s
time, and the driver's storage requests (run, resume, status). Then a finished run of `--fake-docs`
documents written straight into the committed layout (committed_layout.py: only the model outputs are made
up), whose no-op resume and `status` are timed through the same proxy.

    .venv/bin/python benchmarks/control_plane.py [--sizes 10000 100000 1000000] [--fake-docs 10000000]
        [--stream on|off|both] [--augmenter entigraph|rewrite]

Prints `RESULT docs=<n> stream=<on|off> wall_s=... gap_s=<extraction's last commit to synthesis's first unit;
negative when synthesis streamed behind extraction> model_idle_s=<the gap when positive>
driver_rss_growth_mb=... max_task_pickle_kb=... resume_noop_s=...
status_s=... driver_requests=...` per size, `RESULT fake_docs=... resume_noop_s=... status_s=...`, and a
final `RESULT rss_growth_mb=<largest minus smallest size> added_doc_ms=<wall per added document between the
two largest sizes>`.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

_NAMES = ["Orrin", "Hala", "Veyne", "Dunmark", "Cressby", "Pale", "Kestavel", "Imbrel", "Tarrow", "Selka",
          "Marrow", "Quill", "Odell", "Brannoc", "Ysolde", "Fenwick", "Caddis", "Loxley", "Amber", "Rook"]


def doc_text(i: int, rng: random.Random) -> str:
    a, b, c = rng.sample(_NAMES, 3)
    return f"Record {i}. {a} {b} met {c} at the {b} Guild in {1800 + i % 200}; the {a} Archive keeps it."


def write_inputs(folder: str, n: int, files: int, metadata: bool = False) -> str:
    """n short documents in `files` JSON Lines files; with `metadata`, each record also has a `quality` score
    and a `lang` (1 in 20 not English), and 1 in 50 documents is long enough to be chunked at ingest."""
    rng = random.Random(0)
    os.makedirs(folder, exist_ok=True)
    handles = [open(os.path.join(folder, f"part-{k:03d}.jsonl"), "w") for k in range(files)]
    for i in range(n):
        record = {"title": f"Record {i}", "text": doc_text(i, rng)}
        if metadata:
            long = i % 50 == 0
            record.update(text=" ".join(doc_text(i, rng) for _ in range(40)) if long else record["text"],
                          quality=round(rng.random(), 3), lang="fr" if i % 20 == 7 else "en")
        handles[i % files].write(json.dumps(record) + "\n")
    for h in handles:
        h.close()
    return folder


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def overrides(inputs: str, out: str, partitions: int, augmenter: str = "entigraph") -> list[str]:
    common = [f"input.path={inputs}", f"output_dir={out}", "engine.kind=echo", "num_partitions=" + str(partitions),
              "plan.tasks_per_group=4", "resources.batch_size=1000", "resources.min_actors=1",
              "resources.max_actors=1", "resources.num_cpus_per_actor=1", "ingest.max_document_tokens=256"]
    if augmenter == "rewrite":  # every format of rewrite-v1, chosen by rules over the records' metadata
        return [*common, "synthesis.augmenter=rewrite", "synthesis.prompts=rewrite-v1", "input.where=['lang == en']",
                'rewrite.formats=[{name: wikipedia, when: ["quality < 0.5"]}, {name: faq, when: ["quality >= 0.5"]}, '
                '{name: table, when: ["num_chunks > 1"]}, {name: tutorial, when: ["quality >= 0.9"]}, '
                '{name: knowledge_list}]', "rewrite.min_new_tokens=16"]
    return [*common, "extract.max_attempts=1", "extract.fallback=heuristic", "plan.max_pairs_per_doc=2",
            "plan.max_triplets_per_doc=0"]


def _use_endpoint(url: str) -> None:
    """Point this process's S3 clients at `url` (fsspec caches filesystems with their endpoint)."""
    import s3fs

    os.environ["AWS_ENDPOINT_URL"] = url
    s3fs.S3FileSystem.clear_instance_cache()


def _shipped_kb(ctx) -> float:
    """The largest object the driver ships with a task or an actor, pickled: the corpus description every
    partition task gets, and each stage's actor constructor arguments."""
    from ray import cloudpickle

    corpus = ctx.corpus()
    shipped = [corpus, (ctx.config, ctx.layout), (ctx.config, ctx.prompts, ctx.constrained_extraction,
                                                  ctx.extraction_id, ctx.layout),
               (ctx.config, ctx.prompts, ctx.synthesis_id, ctx.layout), {"corpus": corpus, "level": 0, "bucket": 0}]
    return max(len(cloudpickle.dumps(x)) for x in shipped) / 1024


def stage_gap_s(ctx) -> float:
    """Seconds from extraction's last commit to synthesis's first unit starting (a commit marker records
    when it was committed and how long its unit ran): the time the model pool has no model work, which an
    autoscaler's idle timeout must outlast or the GPU nodes are given back and rebuilt."""
    last_extract, first_synth = 0.0, float("inf")
    for p in range(ctx.config.num_partitions):
        for e in ctx.entities_store.entries(p, ctx.entities_identity):
            last_extract = max(last_extract, float(e["committed_at"]))
        for e in ctx.synthetic_store.entries(p, ctx.synthetic_identity):
            first_synth = min(first_synth, float(e["committed_at"]) - float(e.get("wall_s", 0.0)))
    return first_synth - last_extract


def child(n: int, args) -> None:
    import ray
    from latency_proxy import LatencyProxy

    from ray_entigraph.config import load_config
    from ray_entigraph.context import RunContext
    from ray_entigraph.ledger import read_run_state
    from ray_entigraph.pipeline import synthesize

    upstream = int(os.environ["BENCH_MOTO_PORT"])
    workers_proxy = LatencyProxy(upstream, args.delay_ms / 1000).start()
    driver_proxy = LatencyProxy(upstream, args.delay_ms / 1000).start()
    tmp = tempfile.mkdtemp(prefix=f"bench-cp-{n}-")
    inputs = write_inputs(f"{tmp}/in", n, args.files, metadata=args.augmenter == "rewrite")
    out = f"s3://{args.bucket}/cp-{n}-{args.stream}-{args.augmenter}"
    config = load_config(None, [*overrides(inputs, out, args.partitions, args.augmenter),
                                f"resources.synthesize_while_extracting={args.stream == 'on'}"])
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"AWS_ENDPOINT_URL": workers_proxy.url}})
    _use_endpoint(driver_proxy.url)
    base_rss = rss_mb()
    t0 = time.perf_counter()
    summary = synthesize(config)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run_requests = driver_proxy.snapshot()
    t1 = time.perf_counter()
    synthesize(config)
    resume_s = time.perf_counter() - t1
    resume_requests = driver_proxy.snapshot() - run_requests
    t2 = time.perf_counter()
    state = read_run_state(out)
    status_s = time.perf_counter() - t2
    status_requests = driver_proxy.snapshot() - run_requests - resume_requests
    print(json.dumps({
        "docs": summary.num_documents, "synthetic_rows": summary.num_synthetic_rows, "wall_s": round(wall, 1),
        "extract_to_synthesize_gap_s": (round(stage_gap_s(RunContext.resolve(config)), 1)
                                        if args.augmenter == "entigraph" else None), "stream": args.stream,
        "augmenter": args.augmenter, "rows_by_kind": summary.rows_by_kind,
        "driver_rss_growth_mb": round(max(peak - base_rss, 0.0), 1), "driver_base_rss_mb": round(base_rss, 1),
        "max_task_pickle_kb": round(_shipped_kb(RunContext.resolve(config)), 1),
        "resume_noop_s": round(resume_s, 1), "status_s": round(status_s, 1),
        "driver_requests": sum(run_requests.values()), "driver_requests_by_type": dict(run_requests),
        "resume_requests": sum(resume_requests.values()), "status_requests": sum(status_requests.values()),
        "worker_requests": sum(workers_proxy.snapshot().values()),
        "status_synthetic_ok": state["stages"]["synthetic"]["num_ok"]}), flush=True)


def fake(n: int, args) -> None:
    """A finished run of n documents written straight into the committed layout, then timed."""
    from committed_layout import write_run
    from latency_proxy import LatencyProxy

    from ray_entigraph.config import load_config
    from ray_entigraph.ledger import read_run_state
    from ray_entigraph.pipeline import synthesize
    from ray_entigraph.text.identity import doc_id_for

    upstream = int(os.environ["BENCH_MOTO_PORT"])
    tmp = tempfile.mkdtemp(prefix=f"bench-cp-fake-{n}-")
    inputs = write_inputs(f"{tmp}/in", 1, 1)  # the run's input files; the documents below are made up
    out = f"s3://{args.bucket}/fake-{n}"
    config = load_config(None, overrides(inputs, out, args.partitions))
    _use_endpoint(f"http://127.0.0.1:{upstream}")  # the writer goes straight to the endpoint: only reads are timed
    t0 = time.perf_counter()

    def docs():  # the same documents in every writer process
        rng = random.Random(1)
        for i in range(n):
            text = doc_text(i, rng)
            yield {"doc_id": doc_id_for(text), "title": f"Record {i}", "text": text, "num_tokens": 30}

    # chunk: documents buffered per partition before a shard is written (bounds the writers' memory)
    write_run(config, docs, lambda d: d["text"].split()[2:4], synthetic=True, chunk=2_000,
              workers=os.cpu_count() or 1)
    written = time.perf_counter() - t0
    proxy = LatencyProxy(upstream, args.delay_ms / 1000).start()
    _use_endpoint(proxy.url)
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"AWS_ENDPOINT_URL": proxy.url}})
    t1 = time.perf_counter()
    summary = synthesize(config)
    resume_s = time.perf_counter() - t1
    resume_requests = proxy.snapshot()
    t2 = time.perf_counter()
    state = read_run_state(out)
    status_s = time.perf_counter() - t2
    print(json.dumps({"fake_docs": summary.num_documents, "synthetic_rows": summary.num_synthetic_rows,
                      "write_s": round(written, 1), "resume_noop_s": round(resume_s, 1), "status_s": round(status_s, 1),
                      "resume_requests": sum(resume_requests.values()),
                      "status_requests": sum((proxy.snapshot() - resume_requests).values()),
                      "status_synthetic_ok": state["stages"]["synthetic"]["num_ok"]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--fake-docs", type=int, default=10_000_000, help="0: skip the finished-run check")
    ap.add_argument("--partitions", type=int, default=256)
    ap.add_argument("--files", type=int, default=4, help="input files the documents are spread over")
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--stream", choices=("on", "off", "both"), default="on", help=(
        "resources.synthesize_while_extracting; both: each size without, then with (side by side)"))
    ap.add_argument("--augmenter", choices=("entigraph", "rewrite"), default="entigraph", help=(
        "rewrite: records with metadata (quality, lang; 1 in 50 long enough to chunk), input.where on lang, every "
        "format of rewrite-v1 chosen by rules"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--fake", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args)
    if args.fake:
        return fake(args.fake, args)

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = {**os.environ, "BENCH_MOTO_PORT": str(port), "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "RAY_ADDRESS": ""}
    try:
        for _ in range(100):
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        make_bucket = "import fsspec; fsspec.filesystem('s3').mkdir(" + repr(args.bucket) + ")"
        subprocess.run([sys.executable, "-c", make_bucket], env=env, check=True)
        results = []
        for n, stream in [(n, s) for n in args.sizes for s in (("off", "on") if args.stream == "both" else
                                                                 (args.stream,))]:
            proc = subprocess.run([sys.executable, __file__, "--child", str(n), *_passthrough(args, stream)], env=env,
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"run with {n} documents failed:\n{proc.stderr[-4000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if stream == args.stream or stream == "on":
                results.append((n, r))
            gap = r["extract_to_synthesize_gap_s"]
            idle = None if gap is None else max(gap, 0.0)
            print(f"RESULT docs={n} augmenter={args.augmenter} stream={stream} synthetic_rows={r['synthetic_rows']} "
                  f"wall_s={r['wall_s']} gap_s={gap} model_idle_s={idle} "
                  f"driver_rss_growth_mb={r['driver_rss_growth_mb']} "
                  f"max_task_pickle_kb={r['max_task_pickle_kb']} resume_noop_s={r['resume_noop_s']} "
                  f"status_s={r['status_s']} driver_requests={r['driver_requests']} "
                  f"resume_requests={r['resume_requests']} status_requests={r['status_requests']} "
                  f"worker_requests={r['worker_requests']}", flush=True)
            print(f"  detail {json.dumps(r)}", flush=True)
        if args.fake_docs:
            proc = subprocess.run([sys.executable, __file__, "--fake", str(args.fake_docs),
                                   *_passthrough(args, "on")],
                                  env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"finished run of {args.fake_docs} documents failed:\n{proc.stderr[-4000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"RESULT fake_docs={r['fake_docs']} write_s={r['write_s']} resume_noop_s={r['resume_noop_s']} "
                  f"status_s={r['status_s']} resume_requests={r['resume_requests']} "
                  f"status_requests={r['status_requests']}", flush=True)
        if len(results) >= 2:
            small, big = results[0][1], results[-1][1]
            (na, a), (nb, b) = results[-2], results[-1]
            print(f"RESULT rss_growth_mb={big['driver_rss_growth_mb'] - small['driver_rss_growth_mb']:.1f} "
                  f"added_doc_ms={1000 * (b['wall_s'] - a['wall_s']) / (nb - na):.3f}", flush=True)
    finally:
        moto.terminate()


def _passthrough(args, stream: str) -> list[str]:
    return ["--partitions", str(args.partitions), "--files", str(args.files), "--delay-ms", str(args.delay_ms),
            "--bucket", args.bucket, "--stream", stream, "--augmenter", args.augmenter]


if __name__ == "__main__":
    main()
