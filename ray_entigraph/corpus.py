"""The one reader of the corpus, partition by partition: the current documents, their current entities, the
plan, and the synthetic rows of the current synthesis identity. Runs on workers (planning, packing,
sealing); the driver holds a `Corpus` (stores and identities, a few hundred bytes) and never a row.

"Current" means: documents of the current input files (an edited file's old documents are not read), each
document once, capped at `input.max_documents`; entities whose request key is this extraction's for a
current document; synthetic rows whose task id the current plan holds for a current document. Rows of other
prompt versions, models, sampling settings, budgets or removed documents stay on storage in their own
identity folders or are left out here; they are never mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.layout import extraction_key
from ray_entigraph.partitions import PartitionedStore
from ray_entigraph.planning import (
    RANK_SHIFT,
    capacity,
    document_tasks,
    plan_groups,
    rank_key,
)
from ray_entigraph.prompts import PromptSet


@dataclass(frozen=True)
class Corpus:
    """Where the current corpus lives and which identities are current: what every partition task needs."""

    config: EntiGraphConfig
    prompts: PromptSet
    constrained_extraction: bool
    documents: PartitionedStore
    documents_identity: str
    entities: PartitionedStore
    entities_identity: str
    synthetic: PartitionedStore
    synthetic_identity: str
    doc_threshold: str | None = None  # input.max_documents: the current documents are those with id <= this
    budget: dict | None = None  # the global budget's {"level", "threshold"}, when it binds

    def with_summaries(self) -> "Corpus":
        """The cap and the budget recorded by the stages that computed them (one GET each)."""
        docs = self.documents.summary() or {}
        syn = self.synthetic.summary() or {}
        return replace(
            self,
            doc_threshold=docs.get("doc_threshold") if docs.get("identity") == self.documents_identity else None,
            budget=syn.get("budget") if syn.get("identity") == self.synthetic_identity else self.budget)

    @property
    def num_partitions(self) -> int:
        return self.documents.num_partitions

    @property
    def entigraph(self) -> bool:
        return self.config.synthesis.augmenter == "entigraph"


# -- reading one partition (workers) ---------------------------------------------------------------------


def _read(urls: list[str], columns: list[str] | None) -> list[dict]:
    return [r for table in storage.read_parquet_many(urls, columns) for r in table.to_pylist()]


def read_documents(corpus: Corpus, p: int, columns: list[str] | None = None) -> list[dict]:
    """Partition p's current documents, each once, sorted by doc_id."""
    cols = None if columns is None else sorted(set(columns) | {"doc_id"})
    seen: dict[str, dict] = {}
    for row in _read(corpus.documents.shard_urls(p, corpus.documents_identity), cols):
        if corpus.doc_threshold is not None and row["doc_id"] > corpus.doc_threshold:
            continue
        seen.setdefault(row["doc_id"], row)
    return [seen[d] for d in sorted(seen)]


def documents_by_id(corpus: Corpus, p: int) -> dict[str, dict]:
    """doc_id -> (doc_id, title, text) of partition p's current documents: what grounding, the judge and the
    export's card read beside a partition's synthetic rows."""
    return {d["doc_id"]: d for d in read_documents(corpus, p, ["doc_id", "title", "text"])}


def committed_keys(store: PartitionedStore, p: int, column: str) -> set[str]:
    """Every key committed in partition p of a stage (its markers, sealed or not): the anti-join's right side."""
    part = store.part(p)
    urls = [storage.join(part.url, e["file"]) for e in part.manifest_entries()
            if e.get("rows", 0) > 0]  # failed requests are only in the errors table: retried
    return {k for table in storage.read_parquet_many(urls, [column]) for k in table.column(column).to_pylist()}


def read_entities(corpus: Corpus, p: int, docs: list[dict] | None = None) -> list[dict]:
    """Partition p's current entities rows (this extraction's, for current documents), sorted by doc_id."""
    docs = docs if docs is not None else read_documents(corpus, p, ["doc_id"])
    wanted = {extraction_key(corpus.config, d["doc_id"], prompt_version=corpus.prompts.version,
                             constrained=corpus.constrained_extraction) for d in docs}
    part = corpus.entities.part(p)
    urls = [storage.join(part.url, e["file"]) for e in corpus.entities.entries(p, corpus.entities_identity)
            if e.get("rows", 0) > 0]
    rows: dict[str, dict] = {}
    for row in _read(urls, None):
        if row["request_key"] in wanted:
            rows.setdefault(row["doc_id"], row)
    return [rows[d] for d in sorted(rows)]


def planning_rows(corpus: Corpus, p: int) -> list[dict]:
    """The rows the plan is made from: entities rows (EntiGraph) or documents rows (rephrase)."""
    columns = ["doc_id", "title", "text"]
    if corpus.config.synthesis.augmenter == "rewrite":  # what its rules may test, and its output budgets
        columns += ["num_tokens", "metadata_json", "source", "chunk_index", "num_chunks"]
    docs = read_documents(corpus, p, columns)
    return read_entities(corpus, p, docs) if corpus.entigraph else docs


def planned_task_ids(corpus: Corpus, p: int, rows: list[dict] | None = None) -> set[str]:
    rows = rows if rows is not None else planning_rows(corpus, p)
    return {t["task_id"] for row in rows for t in document_tasks(corpus.config, corpus.prompts, row, corpus.budget)}


def read_synthetic(corpus: Corpus, p: int, columns: list[str] | None = None,
                   planned: set[str] | None = None) -> list[dict]:
    """Partition p's current synthetic rows: this identity's rows whose task the current plan holds, once
    each, sorted by task_id."""
    planned = planned if planned is not None else planned_task_ids(corpus, p)
    cols = None if columns is None else sorted(set(columns) | {"task_id"})
    part = corpus.synthetic.part(p)
    urls = [storage.join(part.url, e["file"]) for e in corpus.synthetic.entries(p, corpus.synthetic_identity)
            if e.get("rows", 0) > 0]
    rows: dict[str, dict] = {}
    for row in _read(urls, cols):
        if row["task_id"] in planned:
            rows.setdefault(row["task_id"], row)
    return [rows[t] for t in sorted(rows)]


# -- planning tasks (Ray Data functions over partition ids) ----------------------------------------------


def extraction_todo(batch: dict, *, corpus: Corpus) -> dict:
    """Partition ids -> the documents whose extraction is not committed (the anti-join, on the worker)."""
    out: dict[str, list] = {"doc_id": [], "title": [], "text": [], "request_key": [], "partition": []}
    for p in batch["partition"]:
        p = int(p)
        if corpus.entities.is_current(corpus.entities.sealed(p), corpus.entities_identity):
            continue
        done = committed_keys(corpus.entities, p, "request_key")
        for doc in read_documents(corpus, p, ["doc_id", "title", "text"]):
            key = extraction_key(corpus.config, doc["doc_id"], prompt_version=corpus.prompts.version,
                                 constrained=corpus.constrained_extraction)
            if key not in done:
                for k, v in (("doc_id", doc["doc_id"]), ("title", doc["title"]), ("text", doc["text"]),
                             ("request_key", key), ("partition", p)):
                    out[k].append(v)
    return out


def extraction_counts(batch: dict, *, corpus: Corpus) -> dict:
    """Partition ids -> (documents, extractions already committed for them): the progress line's totals."""
    docs, done = [], []
    for p in batch["partition"]:
        current = read_documents(corpus, int(p), ["doc_id"])
        keys = committed_keys(corpus.entities, int(p), "request_key")
        docs.append(len(current))
        done.append(sum(extraction_key(corpus.config, d["doc_id"], prompt_version=corpus.prompts.version,
                                       constrained=corpus.constrained_extraction) in keys for d in current))
    return {"partition": batch["partition"], "documents": docs, "done": done}


def capacity_histogram(batch: dict, *, corpus: Corpus) -> dict:
    """Partition ids -> {capacity: documents} histograms (JSON), summary counts and committed-task counts."""
    import json

    hists, summaries, done, docs, missing, planned = [], [], [], [], [], []
    for p in batch["partition"]:
        rows = planning_rows(corpus, int(p))
        hist: dict[int, int] = {}
        if corpus.entigraph:
            for row in rows:
                c = capacity(corpus.config, len(row["entities"] or []))
                hist[c] = hist.get(c, 0) + 1
        hists.append(json.dumps(hist))
        summaries.append(sum(bool(r.get("summary")) for r in rows) if corpus.entigraph else 0)
        docs.append(len(rows))
        committed = committed_keys(corpus.synthetic, int(p), "task_id")
        done.append(len(committed))
        rewrite = corpus.config.synthesis.augmenter == "rewrite"
        # without a global budget the plan is known here (planned once): the rewrite augmenter's task count, which
        # follows its rules (-1: another augmenter), and the tasks not committed (-1: unknown, or obviously some:
        # nothing committed yet; only a partition synthesized while extracting is counted)
        unbudgeted = corpus.config.plan.max_tasks_total is None
        ids = planned_task_ids(corpus, int(p), rows) if rows and (rewrite or (unbudgeted and committed)) else set()
        planned.append(len(ids) if rewrite else -1)
        missing.append(0 if not rows else len(ids - committed) if unbudgeted and committed else -1)
    return {"partition": batch["partition"], "histogram": hists, "summaries": summaries, "done": done,
            "documents": docs, "missing": missing, "planned": planned}


def rank_buckets(batch: dict, *, corpus: Corpus, level: int, bucket: int | None) -> dict:
    """Partition ids -> rank-key bucket counts of documents above the level (bucket None), or the rank keys
    inside one bucket (JSON lists): the budget remainder's two small passes."""
    import json

    out = []
    for p in batch["partition"]:
        counts: dict[int, int] = {}
        keys: list[int] = []
        for row in planning_rows(corpus, int(p)):
            if capacity(corpus.config, len(row["entities"] or [])) <= level:
                continue
            key = rank_key(corpus.config.seed, row["doc_id"])
            if bucket is None:
                counts[key >> RANK_SHIFT] = counts.get(key >> RANK_SHIFT, 0) + 1
            elif key >> RANK_SHIFT == bucket:
                keys.append(key)
        out.append(json.dumps(counts if bucket is None else keys))
    return {"partition": batch["partition"], "values": out}


def synthesis_todo(row: dict, *, corpus: Corpus) -> list[dict]:
    """Ray Data flat_map: one partition id -> its task groups not committed yet (the anti-join on the worker)."""
    p = int(row["partition"])
    if corpus.synthetic.is_current(corpus.synthetic.sealed(p), corpus.synthetic_identity):
        return []
    done = committed_keys(corpus.synthetic, p, "task_id")
    groups = []
    for planning_row in planning_rows(corpus, p):
        for group in plan_groups(planning_row, config=corpus.config, prompts=corpus.prompts, budget=corpus.budget,
                                 done=done):
            groups.append({**group, "partition": p})
    return groups


# -- sealing (workers) -----------------------------------------------------------------------------------


def seal_documents(batch: dict, *, corpus: Corpus, current_files: Any) -> dict:
    """Partition ids -> sealed: only the current input files' shards count; the stats are the partition's
    distinct documents and tokens, and with input.max_documents its smallest doc ids (for the cap)."""
    import json

    import ray

    files = ray.get(current_files) if isinstance(current_files, ray.ObjectRef) else current_files
    cap = corpus.config.input.max_documents
    out = []
    for p in batch["partition"]:
        p = int(p)
        sealed = corpus.documents.seal(p, corpus.documents_identity, keep=lambda e: all(
            s in files for s in e.get("source_ids") or [e.get("source_id")]))  # every file of its unit current
        docs = read_documents(replace(corpus, doc_threshold=None), p, ["doc_id", "num_tokens"])
        smallest = [d["doc_id"] for d in docs[:cap]] if cap else []
        out.append(json.dumps({**sealed, "stats": {"num_documents": len(docs),
                                                   "num_tokens": sum(d["num_tokens"] or 0 for d in docs)},
                               "smallest": smallest}))
    return {"sealed": out}


def seal_entities(batch: dict, *, corpus: Corpus) -> dict:
    import json

    out = []
    for p in batch["partition"]:
        p = int(p)
        docs = read_documents(corpus, p, ["doc_id"])
        rows = read_entities(corpus, p, docs)
        stats = {"num_extracted": len(rows), "num_model_parsed": sum(r["entities_source"] == "model" for r in rows),
                 "num_entities": sum(len(r["entities"] or []) for r in rows), "num_missing": len(docs) - len(rows)}
        out.append(json.dumps(corpus.entities.seal(p, corpus.entities_identity, stats=lambda _e, s=stats: s)))
    return {"sealed": out}


def seal_synthetic(batch: dict, *, corpus: Corpus) -> dict:
    import json

    out = []
    for p in batch["partition"]:
        p = int(p)
        planned = planned_task_ids(corpus, p)
        kinds: dict[str, int] = {}
        for row in read_synthetic(corpus, p, ["kind"], planned=planned):
            kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
        stats = {"rows_by_kind": kinds, "num_rows": sum(kinds.values()),
                 "num_missing": len(planned) - sum(kinds.values())}
        out.append(json.dumps(corpus.synthetic.seal(p, corpus.synthetic_identity, stats=lambda _e, s=stats: s)))
    return {"sealed": out}


# -- the driver's few whole-corpus reads -----------------------------------------------------------------


def synthetic_shards(corpus: Corpus) -> list[tuple[str, dict]]:
    """(url, commit entry with its `partition`) of every shard of the current synthesis identity, read from the
    P partition manifests: O(shards) names on the driver, for curate and the judge."""
    out = []
    for p in range(corpus.num_partitions):
        part = corpus.synthetic.part(p)
        out += [(storage.join(part.url, e["file"]), {**e, "partition": p})
                for e in corpus.synthetic.entries(p, corpus.synthetic_identity) if e.get("rows", 0) > 0]
    return out

