"""Splitting documents that exceed the token budget into chunks at paragraph (then sentence, line, word)
boundaries, in time linear in the document.

A document longer than the model context is never silently truncated: it becomes several chunks, each a
document of its own that records its parent.
"""

from __future__ import annotations

import re
from typing import Callable

Offsets = Callable[[str], list[tuple[int, int]]]

# Where a chunk may end, best first, searched in the second half of the window that fits: a blank line, the end
# of a sentence (Latin punctuation then space; CJK full stops need no space), a line break, a space. With none
# of them (CJK text, a URL, a base64 blob) the chunk ends at the last token that fits.
_BOUNDARIES = (re.compile(r"\n\s*\n"), re.compile(r"[.!?][\"')\]\u201d\u2019]*\s+|[\u3002\uff01\uff1f\uff1b]"),
               re.compile(r"\n"), re.compile(r"\s+"))


def split_document(text: str, max_tokens: int, token_offsets: Offsets, count_tokens: Callable[[str], int]) -> list[str]:
    """The chunks of `split_counted`, without their counts."""
    return [chunk for chunk, _ in split_counted(text, max_tokens, token_offsets, count_tokens)]


def split_counted(text: str, max_tokens: int, token_offsets: Offsets,
                  count_tokens: Callable[[str], int]) -> list[tuple[str, int]]:
    """(chunk, its token count) of `text`, chunks of at most `max_tokens` tokens each, in order, that together
    hold every character of it but the whitespace at the cuts. `token_offsets(text)` gives each token's
    (start, end) characters: the text is tokenized once, and each chunk is cut from the offsets, at the best
    boundary in the second half of the window that fits (`_BOUNDARIES`), so the cost is linear in the text
    (re-tokenizing a growing chunk was quadratic). Each chunk is counted once more with `count_tokens` (a
    piece of a text can tokenize differently from the whole): a chunk over the limit is cut again, shorter.
    Offsets marked `exact` (a fast tokenizer's, `engines/hf.py:token_offsets`) count a text that fits as it
    is: one tokenizer pass."""
    import bisect

    spans = token_offsets(text)
    if len(spans) <= max_tokens:
        n = len(spans) if getattr(token_offsets, "exact", False) else count_tokens(text)
        if n <= max_tokens:
            return [(text, n)]
    ends = [end for _, end in spans]
    chunks: list[tuple[str, int]] = []
    cut, i = 0, 0  # the chunk starts at character `cut`, inside or before token i
    while i < len(spans):
        budget = max_tokens
        while True:
            j = min(len(spans), i + budget)  # tokens i .. j-1 fit
            end = len(text) if j == len(spans) else _best_cut(text, cut, spans[j - 1][1])
            chunk = text[cut:end].strip()
            n = count_tokens(chunk) if chunk else 0
            if n <= max_tokens:
                break
            if budget == 1:  # one "token" of the offsets is over the limit (a slow tokenizer's word): by characters
                end = cut + len(head_within(text[cut:end], max_tokens, count_tokens))
                chunk = text[cut:end].strip()
                n = count_tokens(chunk) if chunk else 0
                break
            budget = max(1, budget - (n - max_tokens) - 1)
        if chunk:
            chunks.append((chunk, n))
        cut = end  # always past the last cut: the loop ends
        i = bisect.bisect_right(ends, cut)  # the first token that ends after the cut
    return chunks


def _best_cut(text: str, start: int, limit: int) -> int:
    """Where the chunk text[start:...] ends, at most at `limit`: the best boundary in text[mid:limit]."""
    mid = start + (limit - start) // 2
    for pattern in _BOUNDARIES:
        last = None
        for match in pattern.finditer(text, mid, limit):
            last = match
        pos = None if last is None else last.start() if pattern is _BOUNDARIES[0] else last.end()
        if pos is not None and pos > start:
            return pos
    return limit


def word_offsets(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of non-space characters, and of each CJK character on its own: the offsets
    for a tokenizer that gives none (a slow tokenizer); `split_document` checks each chunk's real count."""
    return [m.span() for m in _WORDS.finditer(text)]


_WORDS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]|"
                    r"[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]+")


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
