"""Stitching a long document's chunk rewrites back in chunk order (text/stitch.py)."""

from ray_entigraph.text.stitch import chunk_info, is_stitched, route, stitch


def test_chunk_rewrites_are_routed_to_their_parent_and_joined_in_chunk_order_per_repeat():
    docs = [{"doc_id": f"c{i}", "parent_doc_id": "P", "chunk_index": i, "num_chunks": 3} for i in (2, 0, 1)]
    docs.append({"doc_id": "W", "parent_doc_id": "W", "chunk_index": 0, "num_chunks": 1})
    chunks = chunk_info(docs)
    assert set(chunks) == {"c0", "c1", "c2"}
    rows = [{"doc_id": f"c{i}", "task_id": f"t{i}{r}", "kind": "rewrite:faq", "text": f"faq {i}.{r}"}
            for i in (2, 1, 0) for r in (1, 0)]
    rows += [{"doc_id": "c1", "task_id": "x", "kind": "rewrite:table", "text": "table 1"},
             {"doc_id": "W", "task_id": "w", "kind": "rewrite:faq", "text": "whole"},
             {"doc_id": "c0", "task_id": "p", "kind": "pair", "text": "not a rewrite"}]
    routed = route(rows, chunks)
    assert len(routed) == 7 and not any(r["text"] in ("whole", "not a rewrite") for r in routed)
    assert [is_stitched(r, chunks) for r in rows[-3:]] == [True, False, False]
    out = stitch(routed)
    assert [(r["kind"], r["text"], r["num_present"]) for r in out] == [
        ("rewrite:faq", "faq 0.0\n\nfaq 1.0\n\nfaq 2.0", 3),  # each chunk's first rewrite by task id, in order
        ("rewrite:faq", "faq 0.1\n\nfaq 1.1\n\nfaq 2.1", 3),
        ("rewrite:table", "table 1", 1),  # the other chunks' table rewrites are missing: kept, counted
    ]
    assert all(r["parent_doc_id"] == "P" and r["num_chunks"] == 3 for r in out)
    assert stitch(list(reversed(routed))) == out  # the order rows arrive in does not matter
