"""Packing texts into fixed-length token blocks (pure functions, no Ray).

One unit of packing (a partition of synthetic rows or documents, a replay file) becomes a token stream: each
text as `[BOS] tokens EOS` (BOS only where the tokenizer itself starts a text with one, as Llama 3 does),
cut into blocks of `block_len`. The tokens that do not fill a last block (the unit's tail) are kept; the
tails of all units of a source, in unit order, are packed into one more shard (`pack_tails`), so no token
is lost to packing, whatever the number of units.
"""

from __future__ import annotations

import itertools

import numpy as np

MEGADOC_SEPARATOR = "\n\n"


def token_stream(token_lists: list[list[int]], eos_id: int, bos_id: int | None = None) -> np.ndarray:
    """The texts' tokens in order, each followed by EOS (and preceded by BOS when given), as int32."""
    def pieces():
        for tokens in token_lists:
            if bos_id is not None:
                yield (bos_id,)
            yield tokens
            yield (eos_id,)

    return np.fromiter(itertools.chain.from_iterable(pieces()), dtype=np.int32)


def cut_blocks(stream: np.ndarray, block_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(the whole blocks as an [n, block_len] array, the tail of fewer than block_len tokens)."""
    n = len(stream) // block_len
    return stream[: n * block_len].reshape(n, block_len), stream[n * block_len:]


def pack_token_lists(token_lists: list[list[int]], block_len: int, eos_id: int,
                     bos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate texts (BOS, tokens, EOS each) and cut into blocks: (blocks, tail). Deterministic: the same
    texts in the same order give the same blocks."""
    return cut_blocks(token_stream(token_lists, eos_id, bos_id), block_len)


def pack_tails(tails: list[np.ndarray], block_len: int) -> tuple[np.ndarray, int]:
    """The tails of every unit of one source, in unit order, as blocks; a last partial block is completed with
    the start of the same tails stream (cycled when shorter), so every token is in a block and at most
    block_len - 1 tokens appear twice. Returns (blocks, number of repeated tokens)."""
    stream = np.concatenate([np.asarray(t, dtype=np.int32) for t in tails]) if tails else np.zeros(0, np.int32)
    if len(stream) == 0:
        return np.zeros((0, block_len), dtype=np.int32), 0
    short = -len(stream) % block_len
    if short:
        stream = np.concatenate([stream, np.resize(stream, short)])  # np.resize repeats the array cyclically
    return stream.reshape(-1, block_len), short


def megadocs(rows: list[dict], leading: list[dict] | None = None) -> list[str]:
    """Megadoc packing (arXiv 2603.18534, "stitching"): every text of one source document joined into one
    long text, in task order, documents in doc_id order. Rows need doc_id, task_id (or any sort key) and text.
    `leading`: documents (doc_id, text) whose own text opens their megadoc (a document followed by its
    rewrites); a document without rows is a megadoc of itself."""
    by_doc: dict[str, list[tuple[str, str]]] = {}
    for doc in leading or []:
        if doc["text"]:
            by_doc.setdefault(doc["doc_id"], []).append(("", doc["text"]))  # "" sorts before every task id
    for row in rows:
        if row["text"]:
            by_doc.setdefault(row["doc_id"], []).append((row.get("task_id") or "\x00", row["text"]))
    return [MEGADOC_SEPARATOR.join(text for _, text in sorted(by_doc[d])) for d in sorted(by_doc)]


def tokenizer_bos(tokenizer) -> int | None:
    """The BOS id a tokenizer puts before a text itself (Llama 3's `<|begin_of_text|>`, Gemma's `<bos>`), or
    None when it adds none (GPT-2 style tokenizers such as SmolLM2's): pretraining saw texts start that way."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bos if len(with_special) > len(plain) and with_special[0] == bos else None
