"""Word n-gram overlap between texts: how much of a synthetic text is copied verbatim from its source
document (the copy rate), and whether evaluation questions leaked into a training corpus (decontamination).

Pure functions. Texts are compared as lowercased word sequences with punctuation removed, so a copied span
still counts when only its commas or capitals changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

COPY_N = 8  # a span of 8 words found verbatim in the document is copied, not rephrased
_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")


def words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def copy_rate(text: str, document: str | set[tuple[str, ...]], n: int = COPY_N) -> float | None:
    """Share of the text's n-word spans that occur verbatim in the document (0: all rephrased, 1: all
    copied); None for a text shorter than n words. `document` may be its n-gram set, built once."""
    spans = words(text)
    if len(spans) < n:
        return None
    source = document if isinstance(document, set) else ngrams(words(document), n)
    grams = [tuple(spans[i:i + n]) for i in range(len(spans) - n + 1)]
    return sum(g in source for g in grams) / len(grams)


def probes(question: str, options: Iterable[str], n: int = COPY_N) -> list[tuple[str, ...]]:
    """The word spans whose presence in training text means an evaluation item leaked into it: every n-word
    span of the question (the whole question when shorter), and of every option of at least n words. Shorter
    options are not probed: they are the facts ("1841", "Mara Vell") a faithful synthetic text must state."""
    out: list[tuple[str, ...]] = []
    for text, always in [(question, True), *((o, False) for o in options)]:
        ws = words(text)
        if len(ws) >= n:
            out += [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
        elif always and ws:
            out.append(tuple(ws))
    return out


def contaminated(items: dict[str, list[tuple[str, ...]]], texts: Iterable[str]) -> dict[str, int]:
    """{item id: number of texts holding one of its probes}, for the items found at least once. `items` maps
    an item id to its `probes`; each text is read once, whatever the number of items."""
    by_len: dict[int, dict[tuple[str, ...], set[str]]] = {}
    for item, spans in items.items():
        for span in spans:
            by_len.setdefault(len(span), {}).setdefault(span, set()).add(item)
    hits: dict[str, int] = {}
    for text in texts:
        ws = words(text)
        found: set[str] = set()
        for n, table in by_len.items():
            for i in range(len(ws) - n + 1):
                found |= table.get(tuple(ws[i:i + n]), set())
        for item in found:
            hits[item] = hits.get(item, 0) + 1
    return hits
