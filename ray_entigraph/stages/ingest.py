"""Ingest: source files -> documents (doc_id, title, text, chunks, token counts), committed per input file.

Reading the files is `inputs.py`'s; here every record becomes documents rows. Every problem with an input
(an empty file, bytes that are not UTF-8, a bad JSON line, a document too short) becomes a row with `error`
set, so it is counted and visible, never silently dropped. One input file is one unit of work and one
committed shard, so shard contents are deterministic.
"""

from __future__ import annotations

import json
import time

from ray_entigraph import schema
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.engines.hf import load_tokenizer
from ray_entigraph.errors import InputError
from ray_entigraph.inputs import records_from_file
from ray_entigraph.layout import Layout
from ray_entigraph.ledger import StageTotals
from ray_entigraph.stages.base import (
    Stage,
    StagePlan,
    commit_unit,
    error_row,
    items,
    model_actor_kwargs,
    shard_identity,
)
from ray_entigraph.text.chunk import split_document
from ray_entigraph.text.identity import doc_id_for, neutralise_special_tokens, normalise_text


def documents_from_record(record: dict, *, max_tokens: int, min_chars: int, count_tokens) -> list[dict]:
    """Normalise, identify and chunk one record into documents rows."""
    if record.get("error"):
        err_id = doc_id_for("error:" + record["source"])
        return [{"doc_id": err_id, "source": record["source"], "error": record["error"]}]
    text = normalise_text(record["text"])
    base = {"title": neutralise_special_tokens(record["title"]), "source": record["source"],
            "metadata_json": json.dumps(record["metadata"], default=str)}
    parent_id = doc_id_for(text)
    if len(text) < min_chars:
        return [{**base, "doc_id": parent_id, "text": text,
                 "error": f"too short: {len(text)} characters < ingest.min_document_chars ({min_chars})"}]
    chunks = split_document(text, max_tokens, count_tokens)
    rows = []
    for i, chunk in enumerate(chunks):
        title = base["title"] if len(chunks) == 1 else f"{base['title']} (part {i + 1} of {len(chunks)})"
        rows.append({
            **base,
            "title": title,
            "doc_id": parent_id if len(chunks) == 1 else doc_id_for(chunk),
            "text": chunk,
            "parent_doc_id": parent_id,
            "chunk_index": i,
            "num_chunks": len(chunks),
            "num_tokens": count_tokens(chunk),
        })
    return rows


class IngestWorker:
    """Ray Data callable: a batch of input files -> one committed documents shard per call."""

    def __init__(self, config: EntiGraphConfig, layout: Layout | None = None):
        self.config = config
        self.tokenizer = load_tokenizer(config.model.name, config.model.cache_dir)
        self.store = (layout or Layout(config.output_dir)).documents

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, batch):
        started = time.time()
        rows = []
        urls = batch.column("path").to_pylist()
        for url, fmt in zip(urls, batch.column("format").to_pylist()):
            for record in records_from_file(url, fmt, self.config.input):
                rows.extend(documents_from_record(
                    record,
                    max_tokens=self.config.ingest.max_document_tokens,
                    min_chars=self.config.ingest.min_document_chars,
                    count_tokens=self.count_tokens,
                ))
        seen: set[str] = set()
        unique = [r for r in rows if not (r["doc_id"] in seen or seen.add(r["doc_id"]))]
        ok = [r for r in unique if not r.get("error")]
        errors = [error_row(schema.INGEST, r["doc_id"], r["doc_id"], f"{r['source']}: {r['error']}")
                  for r in unique if r.get("error")]
        return commit_unit(
            self.store, ok, errors, row_schema=schema.DOCUMENTS, key_column="doc_id", started=started,
            stats={**shard_identity(self.config, None), "source": urls[0] if len(urls) == 1 else None},
            name_keys=urls,  # two files with the same content still get one shard each
        )


class Ingest(Stage):
    """Driver half: every input file of the run, one unit of work each (files are re-read on every run)."""

    name = schema.INGEST
    checks_errors = False  # rejected documents are counted, not a failed stage

    def plan(self, ctx) -> StagePlan:
        files = ctx.input_files
        return StagePlan(totals=StageTotals(self.name, expected=len(files)),
                         dataset=items([{"path": url, "format": fmt} for url, fmt in files]),
                         units=len(files), unit="files", per_row_units=1)

    def apply(self, ctx, plan):
        kwargs = model_actor_kwargs(ctx.config)
        kwargs["batch_size"] = 1  # one input file per committed shard: deterministic shard contents
        return plan.dataset.map_batches(IngestWorker, fn_constructor_args=(ctx.config, ctx.layout), **kwargs)

    def finish(self, ctx, totals: StageTotals) -> StageTotals:
        """Documents are counted only once the files are read; the run's document index is rebuilt."""
        totals.expected = totals.num_ok + totals.num_failed
        ctx.refresh_documents()
        if not ctx.documents():
            raise InputError(
                f"No usable document in input.path {ctx.config.input.path!r}: {totals.num_failed} rejected, reasons "
                f"in {ctx.layout.documents.errors_url}. Fix: check those reasons (empty, undecodable or too short "
                "texts, a wrong input.text_field), or point input.path at other files.")
        return totals
