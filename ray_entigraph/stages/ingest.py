"""Ingest: source files -> documents (doc_id, title, text, chunks, token counts), partitioned by doc_id.

Reading the files is `inputs.py`'s; here every record becomes documents rows. Every problem with an input
(an empty file, bytes that are not UTF-8, a bad JSON line, a corrupt Parquet file, a document too short)
becomes a row with `error` set, so it is counted and visible, never silently dropped. A title over
MAX_TITLE_TOKENS is cut to it, the full title kept in the row's metadata_json (`full_title`). The inputs are
read in units (`RunContext.ingest_units`): small files grouped, about ingest.files_per_task per unit, and a
JSON Lines or Parquet file over ingest.bytes_per_task one unit per byte range of it. A unit commits one shard
per partition its documents fall in, each marker naming its files' ids (`source_ids`: url, size, version and
reading settings hashed), and then its own marker `documents/_files/<marker>.json`. A unit already ingested
under the same identity is not read again; an edited file has another identity, and sealing keeps only the
shards whose files are all current, so its unit is read again and its new documents replace the old ones.
Ingest runs on CPU actors of its own (`cpu_actor_kwargs`), never on the model pool.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.corpus import seal_documents
from ray_entigraph.engines.hf import document_tokenizer_name, load_tokenizer, token_offsets
from ray_entigraph.errors import InputError
from ray_entigraph.inputs import records_from_file, records_from_range
from ray_entigraph.layout import Layout
from ray_entigraph.ledger import StageTotals
from ray_entigraph.stages.base import (
    Stage,
    StagePlan,
    commit_partitioned,
    cpu_actor_kwargs,
    error_row,
    items,
    run_partition_tasks,
    run_unit,
    shard_identity,
    summed_manifest_row,
    totals_from_summary,
)
from ray_entigraph.text.chunk import head_within, split_counted, word_offsets
from ray_entigraph.text.identity import doc_id_for, neutralise_special_tokens, normalise_text

log = logging.getLogger(__name__)

# A title longer than this (in model tokens) is cut to it at ingest, its full text kept in the row's
# metadata_json as `full_title`: every extraction and relation prompt shows the title, and the prompt's
# instructions and title together must fit config._PROMPT_OVERHEAD_TOKENS (512) beside the document chunk.
MAX_TITLE_TOKENS = 64
# Documents a unit of work holds before committing them (characters of text): a 128 MiB byte range of a large
# file is committed in pieces, so a worker's memory follows this, not bytes_per_task, once the range is read.
FLUSH_CHARS = 32 * 2**20


def documents_from_record(record: dict, *, max_tokens: int, min_chars: int, count_tokens,
                          token_offsets=word_offsets) -> list[dict]:
    """Normalise, identify and chunk one record into documents rows (none for a record input.where left out)."""
    if record.get("filtered"):
        return []
    if record.get("error"):
        err_id = doc_id_for("error:" + record["source"])
        return [{"doc_id": err_id, "source": record["source"], "error": record["error"]}]
    text = normalise_text(record["text"])
    title, metadata = neutralise_special_tokens(record["title"]), record["metadata"]
    title_tokens = count_tokens(title)
    if title_tokens > MAX_TITLE_TOKENS:  # every prompt shows the title: it must fit the prompt overhead
        short = head_within(title, MAX_TITLE_TOKENS - count_tokens("…"), count_tokens).rstrip() + "…"
        log.warning("%s: a title of %d tokens is cut to %d; the full title is kept in metadata_json.full_title",
                    record["source"], title_tokens, MAX_TITLE_TOKENS)
        title, metadata = short, {**metadata, "full_title": title}
    base = {"title": title, "source": record["source"], "metadata_json": json.dumps(metadata, default=str)}
    parent_id = doc_id_for(text)
    if len(text) < min_chars:
        return [{**base, "doc_id": parent_id, "text": text,
                 "error": f"too short: {len(text)} characters < ingest.min_document_chars ({min_chars})"}]
    chunks = split_counted(text, max_tokens, token_offsets, count_tokens)
    rows = []
    for i, (chunk, num_tokens) in enumerate(chunks):
        # every chunk keeps the document's own title: prompts bind facts to the title questions use; the part
        # is in chunk_index / num_chunks
        rows.append({
            **base,
            "doc_id": parent_id if len(chunks) == 1 else doc_id_for(chunk),
            "text": chunk,
            "parent_doc_id": parent_id,
            "chunk_index": i,
            "num_chunks": len(chunks),
            "num_tokens": num_tokens,  # counted by the chunker: no tokenizer pass more
        })
    return rows


class IngestWorker:
    """Ray Data callable: one unit (a group of small input files, or a byte range of a large one) -> its
    documents, one committed shard per partition they fall in, then the unit's marker."""

    def __init__(self, config: EntiGraphConfig, layout: Layout | None = None):
        self.config = config
        self.tokenizer = load_tokenizer(document_tokenizer_name(config), config.model.cache_dir)
        self.token_offsets = token_offsets(self.tokenizer)
        layout = layout or Layout(config.output_dir, num_partitions=config.num_partitions)
        self.store, self.files_url = layout.documents, layout.files_url

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, batch):
        (unit,) = batch.to_pylist()
        unit = {"marker": unit["marker"], "members": json.loads(unit["members"])}
        return run_unit(self.store.url, [unit["marker"]], self.config.resources.max_unit_attempts,
                        lambda: self._ingest(unit), lambda reason: self._give_up(unit, reason))

    def _stats(self, members: list[dict]) -> dict:
        """A shard's source: its file, or the first of its group; `source_ids` every file's id (sealing keeps
        the shard only while all of them are current input files)."""
        first = members[0]["path"]
        source = first if len(members) == 1 else f"{first} and {len(members) - 1} more files"
        ids = sorted({m["file_id"] for m in members})
        return {**shard_identity(self.config, None), "source": source, "source_id": ids[0], "source_ids": ids}

    def _give_up(self, unit: dict, reason: str):
        """The unit recorded as failed (no marker: the next run tries it again)."""
        members = unit["members"]
        where = members[0]["path"] if len(members) == 1 else f"{len(members)} files from {members[0]['path']}"
        failed = error_row(schema.INGEST, unit["marker"], None, f"{where}: {reason}")
        return commit_partitioned(self.store, [], [failed], row_schema=schema.DOCUMENTS, key_column="doc_id",
                                  started=time.time(), stats=self._stats(members), name_keys=[unit["marker"]])

    def _records(self, member: dict) -> list[dict]:
        if member["pieces"] == 1:
            return records_from_file(member["path"], member["format"], self.config.input)
        return records_from_range(member["path"], member["format"], self.config.input, member["start"],
                                  member["end"])

    def _ingest(self, unit: dict):
        started = time.time()
        seen: set[str] = set()
        pending: list[dict] = []
        entries: list[dict] = []
        num_ok = num_failed = 0

        def flush() -> None:
            """Commit the documents made so far (a unit's k-th flush is a shard of its own, named after the unit
            and k, so a re-run makes the same shards): a worker holds at most FLUSH_CHARS of documents."""
            nonlocal num_ok, num_failed
            ok = [r for r in pending if not r.get("error")]
            errors = [error_row(schema.INGEST, r["doc_id"], r["doc_id"], f"{r['source']}: {r['error']}")
                      for r in pending if r.get("error")]
            if ok or errors or not entries:
                part = [unit["marker"]] if not entries else [unit["marker"], f"flush {len(entries)}"]
                entries.extend(commit_partitioned(
                    self.store, ok, errors, row_schema=schema.DOCUMENTS, key_column="doc_id", started=started,
                    stats=self._stats(unit["members"]),
                    name_keys=part,  # two files with the same content still get shards of their own
                ).to_pylist())
            num_ok, num_failed = num_ok + len(ok), num_failed + len(errors)
            pending.clear()

        chars = filtered = 0
        for member in unit["members"]:
            for record in self._records(member):
                filtered += bool(record.get("filtered"))
                for r in documents_from_record(
                    record,
                    max_tokens=self.config.ingest.max_document_tokens,
                    min_chars=self.config.ingest.min_document_chars,
                    count_tokens=self.count_tokens,
                    token_offsets=self.token_offsets,
                ):
                    if r["doc_id"] not in seen:  # the first row of each doc_id
                        seen.add(r["doc_id"])
                        pending.append(r)
                        chars += len(r.get("text") or "")
                if chars >= FLUSH_CHARS:
                    flush()
                    chars = 0
        flush()
        summary = summed_manifest_row(entries)
        # the unit's marker last: its files (or a byte range of one) are ingested once all of its partitions'
        # shards are committed
        if self.store.fence is not None:
            self.store.fence.check()
        storage.write_text(self.files_url(f"{unit['marker']}.json"), json.dumps(
            {"members": [{k: m[k] for k in ("path", "file_id", "piece", "pieces")} for m in unit["members"]],
             "num_ok": num_ok, "num_failed": num_failed, "num_filtered": filtered}))
        return summary


class Ingest(Stage):
    """Driver half: the input files not ingested under their current identity (one LIST of documents/_files/),
    one unit of work each; then every partition sealed with the current files' shards only."""

    name = schema.INGEST
    checks_errors = False  # rejected documents are counted, not a failed stage

    def plan(self, ctx) -> StagePlan:
        files = ctx.file_ids()
        summary = ctx.layout.documents.summary()
        if summary is not None and summary.get("identity") == ctx.documents_identity:
            n = len(files)
            return StagePlan(totals=totals_from_summary(self.name, summary, expected=n, done_before=n),
                             unit="files", worker_args={"complete": True})
        done = {storage.filesystem(u)[1].rsplit("/", 1)[-1].removesuffix(".json")
                for u in storage.list_files(ctx.layout.files_url(), ".json")}
        units = ctx.ingest_units()
        # done: its marker, or (a group) every member's own marker, as ingested one file per unit before
        todo = [{"marker": u["marker"], "members": json.dumps(u["members"])} for u in units
                if u["marker"] not in done and not all(m["file_id"] in done and m["pieces"] == 1 for m in u["members"])]
        unit = "files" if len(units) == len(files) else "ingest units (file groups and pieces)"
        totals = StageTotals(self.name, expected=len(units), done_before=len(units) - len(todo))
        return StagePlan(totals=totals, dataset=items(todo) if todo else None, units=len(todo), unit=unit,
                         per_row_units=1)

    def apply(self, ctx, plan):
        return plan.dataset.map_batches(IngestWorker, fn_constructor_args=(ctx.config, ctx.layout),
                                        **cpu_actor_kwargs(ctx.config))

    def finish(self, ctx, totals: StageTotals, plan: StagePlan | None = None) -> StageTotals:
        """Seal every partition with the current files' shards, apply input.max_documents, and count."""
        complete = plan is not None and plan.worker_args.get("complete")
        summary = (ctx.layout.documents.summary() or {}) if complete else self._seal(ctx)
        totals = totals_from_summary(self.name, summary)
        totals.num_ok = int(summary.get("stats", {}).get("num_documents", 0))
        totals.expected = totals.num_ok + totals.num_failed
        totals.done_before = totals.expected if complete else 0
        if not totals.num_ok:
            raise InputError(
                f"No usable document in input.path {ctx.config.input.path!r}: {totals.num_failed} rejected, reasons "
                f"in {ctx.layout.documents.errors_url}. Fix: check those reasons (empty, undecodable or too short "
                "texts, a wrong input.text_field), or point input.path at other files.")
        return totals

    def _seal(self, ctx) -> dict[str, Any]:
        import ray  # lazy: Ray loads only when a stage runs

        current = ray.put({fid for _, _, fid in ctx.file_ids()})  # O(files), shipped once by reference
        store = ctx.layout.documents
        corpus = ctx.corpus()
        sealed = [json.loads(r["sealed"]) for r in run_partition_tasks(store.num_partitions, seal_documents,
                                                                         corpus=corpus, current_files=current)]
        extra: dict[str, Any] = {}
        cap = ctx.config.input.max_documents
        if cap:
            smallest = sorted(d for s in sealed for d in s.pop("smallest"))[:cap]
            extra["doc_threshold"] = smallest[-1] if smallest else None
            for s in sealed:
                s["stats"]["num_documents"] = 0
            sealed[0]["stats"]["num_documents"] = len(smallest)
        else:
            for s in sealed:
                s.pop("smallest", None)
        return store.write_summary(ctx.documents_identity, sealed, extra)
