"""Stitching rewrites of a long document's chunks back into one text, in chunk order (pure functions).

A document longer than `ingest.max_document_tokens` is ingested as chunks, each a document of its own (its
own id, so its own partition) that records its parent, its index and the number of chunks. The rewrite
augmenter rewrites each chunk; for training, a chunk's rewrites in one format are joined back in chunk order
into one text about the whole document. A chunk rewritten `repeats` times pairs its r-th rewrite (by task
id) with the r-th of every other chunk. A chunk whose rewrite is missing (it failed, or curation dropped
it) leaves a gap: the others are still joined in order, and the text records how many chunks it holds.
"""

from __future__ import annotations

REWRITE_PREFIX = "rewrite:"  # schema.KIND_REWRITE_PREFIX (text/ sits below schema)
STITCH_SEPARATOR = "\n\n"
ROUTED_COLUMNS = ("parent_doc_id", "kind", "chunk_index", "num_chunks", "task_id", "text")


def chunk_info(documents: list[dict]) -> dict[str, tuple[str, int, int]]:
    """doc_id -> (parent_doc_id, chunk_index, num_chunks) of the documents that are chunks of a longer one."""
    return {d["doc_id"]: (d["parent_doc_id"], int(d["chunk_index"]), int(d["num_chunks"]))
            for d in documents if (d.get("num_chunks") or 1) > 1 and d.get("parent_doc_id")}


def is_stitched(row: dict, chunks: dict[str, tuple[str, int, int]]) -> bool:
    """Whether a synthetic row is a rewrite of a chunk (trained as part of its document's stitched text)."""
    return row["doc_id"] in chunks and (row.get("kind") or "").startswith(REWRITE_PREFIX)


def route(rows: list[dict], chunks: dict[str, tuple[str, int, int]]) -> list[dict]:
    """The rows that are rewrites of chunks, as routed rows (ROUTED_COLUMNS) keyed by their parent."""
    out = []
    for row in rows:
        if is_stitched(row, chunks) and row.get("text"):
            parent, index, total = chunks[row["doc_id"]]
            out.append({"parent_doc_id": parent, "kind": row["kind"], "chunk_index": index, "num_chunks": total,
                        "task_id": row["task_id"], "text": row["text"]})
    return out


def stitch(routed: list[dict]) -> list[dict]:
    """Routed rows -> one text per (parent, kind, repeat), chunks in order: rows of parent_doc_id, kind,
    text, num_chunks, num_present (chunks it holds), sorted by (parent, kind, repeat)."""
    by_chunk: dict[tuple[str, str], dict[int, list[tuple[str, str]]]] = {}
    totals: dict[tuple[str, str], int] = {}
    for r in routed:
        key = (r["parent_doc_id"], r["kind"])
        by_chunk.setdefault(key, {}).setdefault(int(r["chunk_index"]), []).append((r["task_id"], r["text"]))
        totals[key] = int(r["num_chunks"])
    out = []
    for key in sorted(by_chunk):
        chunks = {i: sorted(texts) for i, texts in by_chunk[key].items()}
        for repeat in range(max(len(t) for t in chunks.values())):
            parts = [chunks[i][repeat][1] for i in sorted(chunks) if repeat < len(chunks[i])]
            out.append({"parent_doc_id": key[0], "kind": key[1], "text": STITCH_SEPARATOR.join(parts),
                        "num_chunks": totals[key], "num_present": len(parts)})
    return out
