"""What small generators get wrong, checked on a generated text (`curate.output_filters`): it loops, it was
cut off at max_new_tokens, it refuses, or it is not in the document's language. Pure functions; each check
returns the reason a row is dropped, or None.

The language check is deliberately cheap (no model): the text's dominant script must be the document's
(Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, CJK, Hangul, Thai), and a document in English (at least
15% of its words English function words) needs a text that is too (at least 5%). It tells English from
Chinese or Russian, not French from Spanish.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from ray_entigraph.text.overlap import words

OUTPUT_FILTERS = ("looping", "truncated", "refusal", "language")
LOOP_N = 4  # a text loops when one 4-word span makes up a quarter of its spans or more
_REFUSAL = re.compile(r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i cannot|i can'?t|i'?m unable|i am unable|"
                      r"as an ai\b|i apologi[sz]e|i won'?t be able)", re.IGNORECASE)
_ENGLISH = frozenset("the of and to in is was for on that with as by it at from his her their this which are "
                     "were be has had an or not they he she its".split())
_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "CJK", "HIRAGANA", "KATAKANA",
            "HANGUL", "THAI")


def loops(text: str, n: int = LOOP_N, share: float = 0.25) -> bool:
    """Whether a text repeats itself: its most common n-word span is at least `share` of its spans (a small
    model stuck on one phrase), counted only for texts of 20 words or more."""
    ws = words(text)
    if len(ws) < 20:
        return False
    counts = Counter(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))
    return counts.most_common(1)[0][1] * n / (len(ws) - n + 1) >= share


def dominant_script(text: str, sample: int = 2000) -> str | None:
    """The Unicode script most of the text's letters are written in (from their names), None without letters."""
    counts: Counter[str] = Counter()
    for ch in text[:sample]:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            script = next((s for s in _SCRIPTS if name.startswith(s)), "OTHER")
            counts["CJK" if script in ("HIRAGANA", "KATAKANA") else script] += 1
    return counts.most_common(1)[0][0] if counts else None


def english_share(text: str) -> float:
    ws = words(text)
    return sum(w in _ENGLISH for w in ws) / len(ws) if ws else 0.0


def output_problem(text: str, finish_reason: str | None, document: str, checks: tuple[str, ...]) -> str | None:
    """The first of `checks` (OUTPUT_FILTERS) the text fails, as a drop reason; None when it passes them all."""
    for check in checks:
        if check == "truncated" and finish_reason == "length":
            return "truncated: the generation stopped at max_new_tokens"
        if check == "looping" and loops(text):
            return f"looping: one {LOOP_N}-word span makes up a quarter of the text or more"
        if check == "refusal" and _REFUSAL.match(text.strip()[:200]):
            return f"refusal: {text.strip()[:60]!r}"
        if check == "language":
            want, got = dominant_script(document), dominant_script(text)
            if want and got and want != got:
                return f"language: written in {got.title()} script, the document in {want.title()}"
            if want == "LATIN" and english_share(document) >= 0.15 and english_share(text) < 0.05:
                return "language: the document is in English, the text is not"
    return None
