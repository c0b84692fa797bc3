"""Chunking (text/chunk.py): long documents split at paragraph and sentence bounds, never truncated."""

from ray_entigraph.text.chunk import split_document


def test_split_document_never_truncates():
    count = lambda s: len(s.split())  # noqa: E731
    paras = [" ".join(f"w{p}_{i}" for i in range(30)) + "." for p in range(10)]
    text = "\n\n".join(paras)
    chunks = split_document(text, 70, count)
    assert len(chunks) > 1 and all(count(c) <= 70 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
    giant = " ".join(f"x{i}" for i in range(500))
    assert all(count(c) <= 70 for c in split_document(giant, 70, count))
    assert split_document("short", 70, count) == ["short"]
