"""Write a run in the committed layout without Ray or a model: documents, entities and (optionally) the
synthetic rows of every planned task, partitioned, sealed and summarised, exactly as a finished `synthesize`
leaves them. Only the model outputs are made up (the entities are given; a synthetic row's text is a stub).

Benchmarks use it to start a stage from committed input (engine_synthesis.py, synthesis_overhead.py,
train_throughput.py) and to build a finished run of 10^7 documents for timing a no-op resume and `status`
(control_plane.py). Memory stays bounded: rows are buffered per partition and flushed `chunk` at a time.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.context import RunContext
from ray_entigraph.partitions import partition_of
from ray_entigraph.planning import document_tasks
from ray_entigraph.runtime import save_resolved_config

Docs = Iterable[dict] | Callable[[], Iterable[dict]]


def write_run(config: EntiGraphConfig, docs: Docs, entities_for: Callable[[dict], list[str]], *,
              synthetic: bool | Callable[[dict, dict], str] = False, chunk: int = 20_000,
              workers: int = 1) -> RunContext:
    """`docs`: documents rows (doc_id, title, text, num_tokens at least). Returns the run's context.
    `synthetic`: True writes a stub text per synthetic row; a function (document row, task) -> text writes its.
    `workers` > 1: that many forked processes each write and seal a share of the partitions (each walks the
    whole `docs` iterable and keeps its own partitions'); the summaries are written here from their seal rows."""
    ctx = RunContext.resolve(config)
    save_resolved_config(config)
    if workers > 1:  # `docs` must then be a callable returning a fresh iterable (each process walks it)
        import multiprocessing

        global _FORKED
        _FORKED = (config, docs, entities_for, synthetic, chunk, workers)
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_forked_share, range(workers))
        sealed = [sorted((row for part in parts for row in part[i]), key=lambda r: r["partition"]) for i in range(3)]
        _summarise(config, ctx, *sealed)
        return ctx
    _summarise(config, ctx, *_write_partitions(config, docs() if callable(docs) else docs, entities_for, synthetic,
                                               chunk, None))
    return ctx


_FORKED: tuple = ()


def _forked_share(k: int) -> tuple[list, list, list]:
    config, docs, entities_for, synthetic, chunk, workers = _FORKED
    return _write_partitions(config, docs(), entities_for, synthetic, chunk, set(range(k, config.num_partitions,
                                                                                        workers)))


def _summarise(config: EntiGraphConfig, ctx: RunContext, sealed_docs, sealed_ents, sealed_syn) -> None:
    ctx.layout.documents.write_summary(ctx.documents_identity, sealed_docs, {"doc_threshold": None})
    if sealed_ents:
        ctx.entities_store.write_summary(ctx.entities_identity, sealed_ents)
    if sealed_syn:
        ctx.synthetic_store.write_summary(ctx.synthetic_identity, sealed_syn, {"budget": None})


def _write_partitions(config: EntiGraphConfig, docs: Iterable[dict], entities_for: Callable[[dict], list[str]],
                      synthetic: bool, chunk: int, only: set[int] | None) -> tuple[list, list, list]:
    """Write and seal the partitions in `only` (None: all); the three stages' seal rows."""
    ctx = RunContext.resolve(config)
    layout, P = ctx.layout, config.num_partitions
    (_, _, file_id), *_ = ctx.file_ids()
    buffers: dict[int, list[dict]] = {}
    stats = {p: {"docs": 0, "tokens": 0, "entities": 0, "rows": 0, "kinds": {}} for p in range(P)}

    def flush(p: int) -> None:
        rows = buffers.pop(p, [])
        if not rows:
            return
        st = stats[p]
        keys = [r["doc_id"] for r in rows]
        docs_table = schema.rows_to_table([{**r, "source": r.get("source", "bench"), "parent_doc_id": r["doc_id"],
                                            "chunk_index": 0, "num_chunks": 1} for r in rows], schema.DOCUMENTS)
        layout.documents.part(p).commit(docs_table, None, keys=[file_id, *keys],
                                        stats={"num_ok": len(rows), "source_id": file_id, "partition": p})
        st["docs"] += len(rows)
        st["tokens"] += sum(int(r.get("num_tokens") or 0) for r in rows)
        if config.synthesis.augmenter != "entigraph":
            planning = rows
        else:
            planning = [{"request_key": ctx.extraction_key(r["doc_id"]), "doc_id": r["doc_id"], "title": r["title"],
                         "text": r["text"], "summary": None, "entities": entities_for(r), "entities_source": "model",
                         "num_attempts": 1, "raw_output": "", "parse_how": "json", "model": config.model.name,
                         "prompt_version": ctx.prompts.version, "num_entities_dropped": 0} for r in rows]
            table = schema.rows_to_table(planning, schema.ENTITIES)
            ctx.entities_store.part(p).commit(table, None, keys=[e["request_key"] for e in planning],
                                              stats={"num_ok": len(planning), "partition": p})
            st["entities"] += sum(len(e["entities"]) for e in planning)
        if synthetic:
            out = []
            for row in planning:
                for t in document_tasks(config, ctx.prompts, row, None):
                    text = synthetic(row, t) if callable(synthetic) else t["text"] or row["text"]
                    out.append({"task_id": t["task_id"], "doc_id": row["doc_id"], "title": row["title"],
                                "kind": t["kind"], "entities": t["entities"], "text": text,
                                "model": config.model.name, "prompt_version": ctx.prompts.version, "seed": t["seed"],
                                "sampling_json": "{}", "finish_reason": "stop", "num_prompt_tokens": 0,
                                "num_cached_tokens": 0, "num_generated_tokens": 0})
                    st["kinds"][t["kind"]] = st["kinds"].get(t["kind"], 0) + 1
            ctx.synthetic_store.part(p).commit(schema.rows_to_table(out, schema.SYNTHETIC), None,
                                               keys=[r["task_id"] for r in out],
                                               stats={"num_ok": len(out), "partition": p})
            st["rows"] += len(out)

    for doc in docs:
        p = partition_of(doc["doc_id"], P)
        if only is not None and p not in only:
            continue
        buffers.setdefault(p, []).append(doc)
        if len(buffers[p]) >= chunk:
            flush(p)
    for p in list(buffers):
        flush(p)

    for _, _, fid in ctx.file_ids():
        storage.write_text(layout.files_url(f"{fid}.json"), json.dumps({"source_id": fid}))
    sealed_docs, sealed_ents, sealed_syn = [], [], []
    for p in sorted(only) if only is not None else range(P):
        st = stats[p]
        sealed_docs.append(layout.documents.seal(p, ctx.documents_identity, stats=lambda _e, s=st: {
            "num_documents": s["docs"], "num_tokens": s["tokens"]}))
        if config.synthesis.augmenter == "entigraph":
            sealed_ents.append(ctx.entities_store.seal(p, ctx.entities_identity, stats=lambda _e, s=st: {
                "num_extracted": s["docs"], "num_model_parsed": s["docs"], "num_entities": s["entities"],
                "num_missing": 0}))
        if synthetic:
            sealed_syn.append(ctx.synthetic_store.seal(p, ctx.synthetic_identity, stats=lambda _e, s=st: {
                "rows_by_kind": s["kinds"], "num_rows": s["rows"], "num_missing": 0}))
    return sealed_docs, sealed_ents, sealed_syn
