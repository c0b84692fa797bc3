"""Chunking (text/chunk.py): long documents split at paragraph, sentence, line and word bounds, never truncated,
never over the limit, in linear time (each character tokenized about once)."""

from ray_entigraph.text.chunk import split_document, word_offsets


def count(s: str) -> int:
    return len(word_offsets(s))


def _squash(s: str) -> str:
    return "".join(s.split())


def test_split_document_never_truncates_and_cuts_at_paragraphs_first():
    paras = [" ".join(f"w{p}_{i}" for i in range(30)) + "." for p in range(10)]
    text = "\n\n".join(paras)
    chunks = split_document(text, 70, word_offsets, count)
    assert len(chunks) == 5 and all(count(c) <= 70 for c in chunks)
    assert chunks[0] == "\n\n".join(paras[:2])  # two whole paragraphs: the blank line is the best cut
    assert _squash("".join(chunks)) == _squash(text)
    giant = " ".join(f"x{i}" for i in range(500))  # no paragraph, no sentence: cut at spaces
    pieces = split_document(giant, 70, word_offsets, count)
    assert all(count(c) <= 70 for c in pieces) and _squash("".join(pieces)) == _squash(giant)
    assert split_document("short", 70, word_offsets, count) == ["short"]


def test_sentences_then_cjk_and_a_word_over_the_limit():
    sentences = " ".join(f"Sentence {i} has five words." for i in range(40))  # one paragraph, 200 words
    chunks = split_document(sentences, 48, word_offsets, count)
    assert all(c.endswith(".") and count(c) <= 48 for c in chunks)  # every cut at a sentence end
    cjk = "。".join("東京は日本の首都です" for _ in range(60))  # one character per token, no spaces
    pieces = split_document(cjk, 50, word_offsets, count)
    assert len(pieces) > 1 and all(count(p) <= 50 for p in pieces) and "".join(pieces) == cjk
    assert all(p.endswith("。") for p in pieces[:-1])  # cut after the CJK full stop
    blob = "a" * 5000  # one "word" with no boundary, 1 token per 4 characters: cut at token boundaries
    offsets = lambda s: [(k, min(k + 4, len(s))) for k in range(0, len(s), 4)]  # noqa: E731
    by4 = lambda s: (len(s) + 3) // 4  # noqa: E731
    parts = split_document(blob, 100, offsets, by4)
    assert "".join(parts) == blob and all(by4(p) <= 100 for p in parts) and len(parts) == 13


def test_each_character_is_tokenized_about_once():
    calls = {"offsets": 0, "counted": 0}
    text = "\n\n".join(" ".join(f"word{p}x{i}." if i % 9 == 8 else f"word{p}x{i}" for i in range(200))
                       for p in range(50))

    def offsets(s):
        calls["offsets"] += len(s)
        return word_offsets(s)

    def counting(s):
        calls["counted"] += len(s)
        return count(s)

    chunks = split_document(text, 128, offsets, counting)
    assert all(count(c) <= 128 for c in chunks) and _squash("".join(chunks)) == _squash(text)
    assert calls["offsets"] == len(text) and calls["counted"] <= 2.1 * len(text)  # the old packing: ~40x here


def test_a_piece_that_tokenizes_longer_than_its_offsets_is_cut_again():
    text = " ".join(f"w{i}" for i in range(300))
    # the offsets undercount (as a piece of text can tokenize into more tokens alone than inside the whole)
    inflated = lambda s: count(s) + 5  # noqa: E731
    chunks = split_document(text, 50, word_offsets, inflated)
    assert all(inflated(c) <= 50 for c in chunks) and _squash("".join(chunks)) == _squash(text)


def test_exact_offsets_count_a_text_that_fits_in_one_pass_and_chunks_come_with_their_counts():
    from ray_entigraph.text.chunk import split_counted

    calls = []

    def count(text):
        calls.append(text)
        return len(text.split())

    def exact(text):
        return word_offsets(text)

    exact.exact = True
    assert split_counted("one two three", 10, exact, count) == [("one two three", 3)] and calls == []
    assert split_counted("one two three", 10, word_offsets, count) == [("one two three", 3)] and len(calls) == 1
    long = " ".join(f"w{i}" for i in range(25))
    pieces = split_counted(long, 10, exact, count)
    assert [n for _, n in pieces] == [count(c) for c, _ in pieces] and all(n <= 10 for _, n in pieces)
