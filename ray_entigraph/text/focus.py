"""Focused context: the passages of a document that mention some entities, with a window of sentences around
each, instead of the whole document. A relation prompt then shows a small generator only what it should write
about: fewer prompt tokens and less room to invent. Pure functions."""

from __future__ import annotations

import re

from ray_entigraph.text.grounding import sentence_spans

GAP = " [...] "  # between passages that are not next to each other in the document


def _mentions(sentence: str, name: str) -> bool:
    """Whether a sentence names the entity: the whole name, or (for a name of several words) its last word of
    four letters or more ("Vell" for "Mara Vell"), case-insensitive, on word boundaries."""
    words = name.split()
    forms = [name] + ([words[-1]] if len(words) > 1 and len(words[-1]) >= 4 else [])
    return any(re.search(rf"(?<!\w){re.escape(f)}(?!\w)", sentence, re.IGNORECASE) for f in forms)


def focused_context(document: str, entities: list[str], window: int = 1) -> str:
    """The sentences that mention any of `entities`, each with `window` sentences either side, in document
    order, separate passages joined by GAP. The whole document when no sentence mentions any of them."""
    spans = sentence_spans(document)
    hits = [i for i, (s, e) in enumerate(spans) if any(_mentions(document[s:e], name) for name in entities)]
    if not hits:
        return document
    keep = sorted({j for i in hits for j in range(max(0, i - window), min(len(spans), i + window + 1))})
    passages: list[list[int]] = []
    for j in keep:
        if passages and passages[-1][-1] == j - 1:
            passages[-1].append(j)
        else:
            passages.append([j])
    return GAP.join(document[spans[p[0]][0]:spans[p[-1]][1]] for p in passages)
