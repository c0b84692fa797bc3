"""The ingest stage's worker half (stages/ingest.py): a raw record becomes document rows, chunked, never
truncated."""

from ray_entigraph.stages.ingest import documents_from_record

count = lambda s: len(s.split())  # noqa: E731


def test_long_document_is_chunked_not_truncated():
    text = "\n\n".join(" ".join(f"w{p}{i}" for i in range(40)) for p in range(5))
    rows = documents_from_record({"source": "s", "title": "Long", "text": text, "metadata": {}},
                                 max_tokens=100, min_chars=1, count_tokens=count)
    assert len(rows) == 3 and all(r["num_tokens"] <= 100 for r in rows)
    assert {r["parent_doc_id"] for r in rows} == {rows[0]["parent_doc_id"]}
    assert rows[1]["title"] == "Long" and (rows[1]["chunk_index"], rows[1]["num_chunks"]) == (1, 3)
    assert sum(r["num_tokens"] for r in rows) == count(text)


def test_too_short_document():
    rows = documents_from_record({"source": "s", "title": "x", "text": "hi", "metadata": {}},
                                 max_tokens=100, min_chars=20, count_tokens=count)
    assert "too short" in rows[0]["error"]
