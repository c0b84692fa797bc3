"""Splitting documents that exceed the token budget into chunks at paragraph (then sentence) boundaries.

A document longer than the model context is never silently truncated: it becomes several chunks, each a
document of its own that records its parent.
"""

from __future__ import annotations

import re
from typing import Callable

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def split_document(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Greedy packing of paragraphs (split further into sentences, then words, when needed)."""
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
