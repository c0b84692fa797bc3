"""Lenient parsing of entity-extraction outputs, entity normalisation, and a heuristic entity fallback.

Model JSON is often broken: code fences, single quotes, trailing prose, missing brackets, keys spelt
differently, nested lists. `parse_extraction` recovers what it can and says how (`ParsedExtraction.how`);
it never raises.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_ENTITY_KEYS = ("entities", "entity", "entity_list", "named_entities", "salient_entities")
_SUMMARY_KEYS = ("summary", "abstract", "description")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.*\S)\s*$")


@dataclass
class ParsedExtraction:
    summary: str | None = None
    entities: list[str] = field(default_factory=list)
    how: str = "failed"  # json | repaired | salvaged | list | failed
    error: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.entities)


def normalise_entity(name: str) -> str:
    """Collapse whitespace, drop a trailing "(note)", strip quotes/punctuation at the edges; keep casing."""
    edges = "\"'`*.,;:()[]{} "
    name = re.sub(r"\s+", " ", unicodedata.normalize("NFC", str(name))).strip().strip(edges)
    name = re.sub(r"\s*\([^)]*\)?$", "", name)  # "(the founder)" notes, closed or cut off
    return name.strip().strip(edges).strip()


def dedupe_entities(names: list[str], limit: int | None = None) -> list[str]:
    """Normalise, drop empties and case-insensitive duplicates, keep first-seen order."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in names:
        name = normalise_entity(raw)
        key = name.casefold()
        if not name or key in seen or len(name) > 80:
            continue
        seen.add(key)
        out.append(name)
        if limit is not None and len(out) >= limit:
            break
    return out


def _flatten_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        for key in ("name", "entity", "text", "value"):
            if isinstance(value.get(key), str):
                return [value[key]]
        return []
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _flatten_strings(item)]
    return []


def _from_object(obj) -> tuple[str | None, list[str]]:
    if isinstance(obj, list):  # a bare list of entities
        return None, _flatten_strings(obj)
    if not isinstance(obj, dict):
        return None, []
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    summary = next((lowered[k] for k in _SUMMARY_KEYS if isinstance(lowered.get(k), str)), None)
    entities: list[str] = []
    for key in _ENTITY_KEYS:
        if key in lowered:
            entities = _flatten_strings(lowered[key])
            break
    return summary, entities


def _candidate_json(text: str) -> str:
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    return text[start:] if start >= 0 else text


def _salvage(text: str) -> tuple[str | None, list[str]]:
    """Regex rescue when no JSON parser can: the summary string and the quoted items after 'entities'."""
    summary = None
    m = re.search(r"""["']?summary["']?\s*:\s*["']((?:[^"'\\]|\\.)+)""", text, re.I)
    if m:
        summary = m.group(1)
    entities: list[str] = []
    m = re.search(r"""["']?\s*entit(?:y|ies)\w*\s*["']?\s*:\s*(.*)""", text, re.I | re.S)
    if m:
        # quoted strings that are not keys (a key is followed by a colon)
        entities = re.findall(r"""["']([^"'\n]{1,80})["'](?!\s*:)""", m.group(1))
    return summary, entities


# The answer shape of the extraction prompt, for engines that constrain decoding to a JSON schema. The
# entities come first: grammars follow the property order, and when max_new_tokens cuts an answer short it
# then cuts the summary (which may be missing) rather than the entity list (which the stage needs).
EXTRACTION_SCHEMA = {
    "type": "object",
    "properties": {
        "entities": {"type": "array", "items": {"type": "string"}},
        "summary": {"type": "string"},
    },
    "required": ["entities", "summary"],
    "additionalProperties": False,
}


def parse_extraction(text: str, max_entities: int | None = None) -> ParsedExtraction:
    """Parse a model's extraction output into (summary, entities), as leniently as is safe."""
    if not text or not text.strip():
        return ParsedExtraction(error="empty output")
    candidate = _candidate_json(text)
    summary: str | None = None
    entities: list[str] = []
    how = "failed"
    try:
        decoder = json.JSONDecoder()
        obj, _ = decoder.raw_decode(candidate)  # ignores trailing prose
        summary, entities = _from_object(obj)
        how = "json"
    except ValueError:
        pass
    if not entities:
        try:
            import json_repair

            obj = json_repair.loads(candidate)
            if isinstance(obj, list):  # repairs that yield a list are guesses; take a leading object only
                obj = obj[0] if obj and isinstance(obj[0], dict) else {}
            s2, e2 = _from_object(obj)
            summary, entities = summary or s2, e2
            how = "repaired" if entities else how
        except Exception:  # noqa: BLE001 - json_repair is best effort
            pass
    if not entities:
        s3, e3 = _salvage(text)
        summary, entities = summary or s3, e3
        how = "salvaged" if entities else how
    if not entities:
        bullets = [m.group(1) for line in text.splitlines() if (m := _BULLET.match(line))]
        if len(bullets) >= 2:
            entities, how = bullets, "list"
    entities = dedupe_entities(entities, max_entities)
    if isinstance(summary, str):
        summary = re.sub(r"\s+", " ", summary).strip() or None
    if not entities:
        return ParsedExtraction(summary=summary, how="failed", error="no entity list found in model output")
    return ParsedExtraction(summary=summary, entities=entities, how=how)


def ground_entities(entities: list[str], document: str) -> tuple[list[str], int]:
    """Keep entities whose text occurs in the document (case-insensitive); return (kept, num_dropped)."""
    haystack = re.sub(r"\s+", " ", document).casefold()
    kept = [e for e in entities if e.casefold() in haystack]
    return kept, len(entities) - len(kept)


_CAPITALISED = re.compile(
    r"\b(?:[A-Z][\w'\-]+)(?:\s+(?:of|the|de|von|van|la|le|du)?\s*[A-Z][\w'\-]+)*"
)
_STOP_STARTS = {"The", "A", "An", "In", "On", "At", "It", "Its", "This", "That", "These", "Those", "He", "She",
                "They", "His", "Her", "Their", "When", "After", "Before", "By", "For", "From", "With", "As", "But",
                "And", "Of", "To", "Each", "Every", "Some", "Many", "Most", "One", "Two", "There", "Today", "Since"}


_CALENDAR = {"January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
             "November", "December", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}


def heuristic_entities(document: str, limit: int = 24) -> list[str]:
    """Capitalised phrases, by first occurrence: multi-word names, and single words that are capitalised
    somewhere other than at the start of a sentence (so "Later" or "Built" are not names).

    A deterministic fallback for models too small to follow the extraction format; rows that use it are
    marked (`entities_source`), so the model's own parse rate stays visible.
    """
    found = []
    for match in _CAPITALISED.finditer(document):
        words = match.group(0).split()
        while words and words[0] in _STOP_STARTS:
            words = words[1:]
        if not words or (len(words) == 1 and words[0] in _CALENDAR):
            continue
        phrase = re.sub(r"['\u2019]s$", "", " ".join(words))
        if len(words) == 1:
            mid_sentence = re.search(r"[^.!?\n\s]\s+" + re.escape(phrase) + r"\b", document)
            if not mid_sentence or len(phrase) < 3:
                continue
        found.append(phrase)
    return dedupe_entities(found, limit)
