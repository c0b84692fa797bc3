"""Splitting documents that exceed the token budget into chunks at paragraph (then sentence) boundaries.

A document longer than the model context is never silently truncated: it becomes several chunks, each a
document of its own that records its parent.
"""

from __future__ import annotations

import re
from typing import Callable

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def split_document(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Greedy packing of paragraphs (split further into sentences, then words, then a word over the limit by
    tokens, when needed): no chunk counts more than `max_tokens`."""
    if count_tokens(text) <= max_tokens:
        return [text]
    units: list[str] = []
    for para in [p for p in re.split(r"\n\s*\n", text) if p.strip()]:
        if count_tokens(para) <= max_tokens:
            units.append(para.strip())
            continue
        for sent in _SENTENCE.split(para.strip()):
            if count_tokens(sent) <= max_tokens:
                units.append(sent)
            else:  # a single giant sentence: cut by words
                words = sent.split()
                cur: list[str] = []
                for w in words:
                    if cur and count_tokens(" ".join(cur + [w])) > max_tokens:
                        units.append(" ".join(cur))
                        cur = []
                    cur.append(w)
                    if len(cur) == 1 and count_tokens(w) > max_tokens:  # a "word" over the limit on its own
                        units.extend(split_by_tokens(w, max_tokens, count_tokens))
                        cur = []
                if cur:
                    units.append(" ".join(cur))
    chunks: list[str] = []
    current: list[str] = []
    for unit in units:
        candidate = "\n\n".join(current + [unit])
        if current and count_tokens(candidate) > max_tokens:
            chunks.append("\n\n".join(current))
            current = [unit]
        else:
            current.append(unit)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def head_within(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest prefix of `text` that counts at most `max_tokens` tokens (at least one character, so that a
    caller always progresses), with only a token counter to hand: galloping, then bisection over characters,
    so that the cost grows with the prefix, not with the whole text."""
    fits, probe = 0, max(1, max_tokens)  # text[:fits] is known to fit
    while True:
        if probe >= len(text):
            if count_tokens(text) <= max_tokens:
                return text
            too_long = len(text)
            break
        if count_tokens(text[:probe]) > max_tokens:
            too_long = probe
            break
        fits, probe = probe, probe * 2
    while too_long - fits > 1:  # text[:too_long] is known not to fit
        mid = (fits + too_long) // 2
        if count_tokens(text[:mid]) <= max_tokens:
            fits = mid
        else:
            too_long = mid
    return text[:max(fits, 1)]


def split_by_tokens(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Consecutive pieces of `text`, each within `max_tokens` tokens, that concatenate back to it: the hard
    split of a run of characters with no space to cut at (a URL, a base64 blob, a long identifier)."""
    pieces: list[str] = []
    while text:
        piece = head_within(text, max_tokens, count_tokens)
        pieces.append(piece)
        text = text[len(piece):]
    return pieces
