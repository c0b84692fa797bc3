"""The curate stage through Ray Data: grounding scores, row and sentence filters, near-duplicate removal,
a derived dataset with a drop log, and the raw synthetic output left as it was."""

from __future__ import annotations

import glob
import hashlib

import pyarrow.parquet as pq
import pytest

from ray_entigraph import schema, storage
from ray_entigraph.config import load_config
from ray_entigraph.context import RunContext
from ray_entigraph.pipeline import curation_summary, synthesize
from ray_entigraph.stages.base import run_stage
from ray_entigraph.stages.curate import Curate
from ray_entigraph.stages.judge import Judge
from tests import stores

pytestmark = pytest.mark.timeout(600)


def _commit(config, rows: list[dict], key: str) -> None:
    """Commit synthetic rows as synthesis does: each in its document's partition (one shard per partition)."""
    from ray_entigraph.partitions import partition_of

    store = RunContext.resolve(config).synthetic_store  # the current synthesis identity's folder
    by_partition: dict[int, list[dict]] = {}
    for row in rows:
        by_partition.setdefault(partition_of(row["doc_id"], store.num_partitions), []).append(row)
    for p, part in sorted(by_partition.items()):
        store.part(p).commit(schema.rows_to_table(part, schema.SYNTHETIC), None, keys=[f"{key}-p{p}"],
                             stats={"num_ok": len(part)})


def _row(task_id, doc, text, kind="pair"):
    return {"task_id": task_id, "doc_id": doc["doc_id"], "title": doc["title"], "kind": kind,
            "entities": ["Harbour", "Guild"], "text": text, "model": "m", "prompt_version": "entigraph-v1",
            "sampling_json": "{}", "seed": 0, "num_prompt_tokens": 10, "num_cached_tokens": 0,
            "num_generated_tokens": 10, "finish_reason": "stop"}


def test_curate_scores_filters_dedups_and_keeps_the_raw_output(ray_local, tiny_model_dir, small_corpus, tmp_path):
    out = tmp_path / "run"
    overrides = [f"input.path={small_corpus}", f"output_dir={out}", f"model.name={tiny_model_dir}",
                 "ingest.max_document_tokens=512", "curate.enabled=true", "curate.min_grounding=0.5",
                 "curate.min_sentence_grounding=0.5", "curate.dedup=true", "curate.min_chars=20"]
    config = load_config(None, overrides)
    synthesize(config, ingest_only=True)
    docs = stores.rows(out, schema.INGEST)
    d0, d1 = docs[0], docs[1]
    copied = ". ".join(d0["text"].split(". ")[:6]) + "."
    invented = ("Zorbanek Vellitrax founded the Quoridan Empire in 2317 with 4,096 soldiers from Plethmoor. "
                "Its capital Drussenhal hosted 88 crimson zeppelins until 2399.")
    rows_a = [_row("t1-copied", d0, copied), _row("t2-invented", d0, invented),
              _row("t3-mixed", d1, " ".join(d1["text"].split(". ")[:2]) + ". " + invented)]
    near_dup = copied[::-1].replace(" eht ", " a ", 1)[::-1]  # one word changed near the end
    assert near_dup != copied
    rows_b = [_row("t4-near-duplicate", d0, near_dup)]
    for i, rows in enumerate((rows_a, rows_b)):
        _commit(config, rows, f"shard{i}")
    raw_before = {f: hashlib.sha256(open(f, "rb").read()).hexdigest()
                  for f in glob.glob(f"{out}/synthetic/*/p=*/*.parquet")}

    totals = run_stage(Curate(), RunContext.resolve(config))
    assert totals.num_ok == 2 and totals.num_dropped == 2  # kept: copied, mixed (repaired); dropped: 2

    ctx = RunContext.resolve(config)
    store = storage.StageStore(str(out), ctx.curated_stage())
    kept = {r["task_id"]: r for r in store.read(schema=schema.CURATED).to_pylist()}
    assert set(kept) == {"t1-copied", "t3-mixed"}
    assert kept["t1-copied"]["grounding"] > 0.9 and kept["t1-copied"]["num_sentences_dropped"] == 0
    mixed = kept["t3-mixed"]
    assert mixed["num_sentences_dropped"] == 2 and "Zorbanek" not in mixed["text"]
    assert all(s >= 0.5 for s in mixed["sentence_grounding"])
    dropped = {r["request_key"]: r["error"] for u in store.error_urls() for r in pq.read_table(u).to_pylist()}
    # every sentence of the invented row fell below min_sentence_grounding: nothing left
    assert dropped["t2-invented"].startswith("too short after repair: 2 sentences")
    assert dropped["t4-near-duplicate"] == "near-duplicate of t1-copied"
    # the synthetic stage's own shards are untouched, and loadable curated Parquet has the documented columns
    assert raw_before == {f: hashlib.sha256(open(f, "rb").read()).hexdigest()
                          for f in glob.glob(f"{out}/synthetic/*/p=*/*.parquet")}
    assert set(pq.read_table(store.shard_urls()[0]).column_names) == set(schema.CURATED.names)

    # a re-run has nothing to do; training reads the curated copy
    again = run_stage(Curate(), ctx)
    assert again.done_before == again.expected == 3 and again.num_shards == 0  # 3 shards: 2 in d0's partition
    from ray_entigraph.train.data import pack_units

    units = [u for u in pack_units(ctx) if u["source"] == schema.SYNTHETIC_SOURCE]
    assert sorted(u["url"] for u in units if u["fmt"] != "tails") == sorted(store.shard_urls())
    assert units[-1]["fmt"] == "tails"  # the source's tails, packed after its units
    plain = RunContext.resolve(load_config(None, overrides[:-5]))
    # without curation the curated copy is never read (the hand-committed rows above are in no sealed partition,
    # so this config has no current synthetic rows at all)
    assert not [u for u in pack_units(plain) if u["fmt"] == "parquet"]


def test_judge_rates_every_row_or_records_why_and_curate_filters_on_it(ray_local, bundled_model_dir, small_corpus,
                                                                       tmp_path):
    """The model-based check with the real bundled model through Ray Data: every synthetic row gets a rating or
    a recorded reason, the ratings land beside the rows, and min_judge_score drops exactly the rows below it
    (or unrated). The 135M model's ratings carry no signal; this checks the mechanism, not the judgment."""
    out = tmp_path / "run"
    config = load_config(None, [f"input.path={small_corpus}", f"output_dir={out}", f"model.name={bundled_model_dir}",
                                "ingest.max_document_tokens=512", "curate.enabled=true", "curate.judge=true",
                                "curate.min_judge_score=0.5", "curate.min_chars=10", "model.dtype=float32"])
    synthesize(config, ingest_only=True)
    docs = stores.rows(out, schema.INGEST)
    d0, d1 = docs[0], docs[1]
    rows = [_row("t1-copied", d0, ". ".join(d0["text"].split(". ")[:3]) + "."),
            _row("t2-invented", d0, "Zorbanek Vellitrax founded the Quoridan Empire in 2317 with 4,096 soldiers."),
            _row("t3-other-doc", d1, ". ".join(d1["text"].split(". ")[:2]) + "."),
            _row("t4-orphan", {"doc_id": "0" * 32, "title": "x"}, "Text whose document is gone.")]  # no such doc
    _commit(config, rows, "shard0")
    ctx = RunContext.resolve(config)
    totals = run_stage(Judge(), ctx)
    judged = ctx.layout.partitioned(ctx.judge_stage)  # in partitions, keyed by row like the other model stages
    rated = {r["task_id"]: r for r in judged.read_all()}
    failed = {r["request_key"]: r["error"] for u in judged.all_error_urls() for r in pq.read_table(u).to_pylist()}
    assert set(rated) | set(failed) == {r["task_id"] for r in rows} and not set(rated) & set(failed)
    assert totals.num_ok == len(rated) and totals.num_failed == len(failed) and totals.num_prompt_tokens > 0
    assert failed["t4-orphan"].startswith("source document not found")
    for r in rated.values():
        assert 1 <= r["rating"] <= 5 and r["judge_score"] == pytest.approx((r["rating"] - 1) / 4)
    assert run_stage(Judge(), ctx).num_shards == 0  # resumed: nothing left to rate
    from ray_entigraph.ledger import read_run_state

    assert read_run_state(str(out))["stages"][schema.JUDGE]["num_ok"] == len(rated)  # `status` counts the judge
    run_stage(Curate(), ctx)
    store = storage.StageStore(str(out), ctx.curated_stage())
    kept = {r["task_id"]: r for r in store.read(schema=schema.CURATED).to_pylist()}
    dropped = {r["request_key"]: r["error"] for u in store.error_urls() for r in pq.read_table(u).to_pylist()}
    assert set(kept) | set(dropped) == {r["task_id"] for r in rows}
    for task_id, r in rated.items():
        if r["judge_score"] >= 0.5:
            assert kept[task_id]["judge_score"] == pytest.approx(r["judge_score"])
        else:
            assert dropped[task_id].startswith(f"judge score {r['judge_score']:.2f} < min_judge_score 0.5")
    for task_id in set(failed) - {"t4-orphan"}:
        assert dropped[task_id].startswith("the judge gave no rating")
    summary = curation_summary(ctx)  # what the synthesis summary prints
    assert summary["judge_rated"] == len(rated) and summary["judge_unrated"] == len(failed)
    assert summary["dropped_judge"] == len(dropped) - 1  # all but the orphan, which has no document


class _JudgeStandIn:
    """An OpenAI-compatible chat server on loopback that rates every text 4, or answers 503 to the next
    `failing` requests (an outage of the judge); it counts the 200 answers per request key (X-Request-Key)."""

    def __init__(self):
        import collections
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stand_in = self
        self.failing, self.answered, self.lock = 0, collections.Counter(), threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with stand_in.lock:
                    down, stand_in.failing = stand_in.failing > 0, max(stand_in.failing - 1, 0)
                if down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                stand_in.answered[self.headers.get("X-Request-Key")] += 1
                body = json.dumps({"id": "c", "object": "chat.completion", "model": "judge",
                                   "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55},
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": '{"rating": 4}'}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def test_a_judge_outage_then_a_rerun_rates_every_row_once(ray_local, tiny_model_dir, small_corpus, tmp_path):
    """The judge's server answers 503 to 2 of 6 requests (max_retries=0): those rows are recorded unrated and
    curation drops them; the next run asks exactly those rows again (each row is answered once in all), curation
    follows the new ratings, and packing packs the new curated copy: 0 rows unrated, 0 rated twice."""
    from ray_entigraph.train.data import pack_units

    stand_in = _JudgeStandIn()
    out = tmp_path / "run"
    config = load_config(None, [f"input.path={small_corpus}", f"output_dir={out}", f"model.name={tiny_model_dir}",
                                "engine.kind=openai", f"engine.openai.base_url={stand_in.url}",
                                "engine.openai.max_retries=0", "curate.enabled=true", "curate.judge=true",
                                "curate.min_judge_score=0.5", "curate.min_chars=10", "max_error_fraction=1.0",
                                "resources.batch_size=1"])  # one document's rows per unit of work
    try:
        synthesize(config, ingest_only=True)
        docs = stores.rows(out, schema.INGEST)
        rows = [_row(f"t{i}", docs[i % 2], ". ".join(docs[i % 2]["text"].split(". ")[i:i + 2]) + ".")
                for i in range(6)]
        for d in (0, 1):  # one shard per document, 3 rows each, in the document's partition
            _commit(config, rows[d::2], f"doc{d}")
        expected = {r["task_id"] for r in rows}
        ctx = RunContext.resolve(config)
        stand_in.failing = 2  # the first unit judged (one document per call, one actor) loses 2 of its 3 rows
        first = run_stage(Judge(), ctx)
        assert first.num_ok == 4 and first.num_failed == 2  # the outage: 2 rows unrated
        run_stage(Curate(), ctx)
        curated = storage.StageStore(str(out), ctx.curated_stage())
        assert curated.read(schema=schema.CURATED).num_rows == 4  # unrated rows are dropped by min_judge_score
        packed_before = {u["url"]: u["version"] for u in pack_units(ctx) if u["fmt"] == "parquet"}

        second = run_stage(Judge(), ctx)  # the judge is back: the re-run asks exactly the unrated rows
        assert second.num_ok == 2 and second.num_failed == 0 and second.num_shards == 1
        rated = [r["task_id"] for r in ctx.layout.partitioned(ctx.judge_stage).read_all()]
        assert sorted(rated) == sorted(expected), "a row lost or rated twice"
        assert set(stand_in.answered) == expected and set(stand_in.answered.values()) == {1}
        assert run_stage(Judge(), ctx).num_shards == 0  # nothing left to rate
        run_stage(Curate(), ctx)  # the shards curated before the ratings came are curated again
        kept = [r["task_id"] for r in curated.read(schema=schema.CURATED).to_pylist()]
        assert sorted(kept) == sorted(expected)  # rated 4 -> score 0.75 >= 0.5
        packed_after = {u["url"]: u["version"] for u in pack_units(ctx) if u["fmt"] == "parquet"}
        changed = [u for u, v in packed_before.items() if packed_after[u] != v]
        assert len(packed_after) == 2 and len(changed) == 1  # the shard curated again is packed again
    finally:
        stand_in.server.shutdown()
