"""Grounding: how much of a synthetic text its source document supports, by cheap lexical checks.

A text is cut into checkable units of three kinds:

- **entity**: a capitalised phrase ("Harbour Guild of Kestavel", "Hesper Oddry"), connectors such as "of",
  "the", "de" allowed inside, leading function words ("The", "In", "However") dropped;
- **number**: digits ("1871", "2,400" -> 2400, "3.5", "12th" -> 12, "1870s" -> 1870, "40%" -> 40) and spelled
  cardinals "three" to "ninety-nine", optionally times "hundred"/"thousand"/"million" ("three hundred" ->
  300). A bare "one" or "two" is not a unit of a text (mostly generic: "one of", "the two entities"), but
  a document's "one"/"two" still count, so a text's "2" can be supported by a document's "two". Spelled
  ordinals ("fourth") are ordinary words;
- **word**: any other lowercase content word of four or more letters that is not a stopword or a word about
  the text itself ("article", "mentions", "relationship"), reduced by a small suffix stripper (-s, -es,
  -ies, -ed, -ing, -ly, a final -e, a doubled final consonant) applied identically to text and document.

A unit is *supported* when the document contains it: an entity when its phrase occurs in the document
(ignoring case, whitespace and punctuation, on word boundaries, so a capitalised common word the document
uses in lowercase passes) or every one of its capitalised words occurs capitalised somewhere in the
document ("Guild of Port Imbrel" for "Port Imbrel's guild ... the Guild"); a number when the same value
occurs; a word when its stem occurs. A sentence's score is the weighted share of
its units that are supported, a text's score the same over all its units (1.0 where there are none: no
evidence against). Weights favour entities and numbers (3 : 3 : 1) because invented facts in small
generators' output are overwhelmingly invented names, places, dates and counts, while content words mostly
recur from the document or the prompt whether the claim is true or not; a single invented name should pull
a sentence down more than a rare but harmless verb.

What it cannot catch: a true entity in a false relation ("Oddry designed the lighthouse" when Vasquelle did:
every unit occurs in the document), swapped numbers that both occur, negation, and anything said with
synonyms the document does not use (a faithful paraphrase in other words scores low). It is a filter for
invented surface facts, not a fact checker. A lone capitalised word opening a sentence ("Cooling the glass
...") is an entity unit checked leniently (its stem in the document suffices), since without a dictionary
it cannot be told apart from an ordinary word that starts a sentence; an invented name there is still
caught, as long as no word of the document shares its stem.

Everything here is a pure function of its inputs, standard library only, with no Ray and no model:
`DocumentIndex.from_text` once per document, then `score_text` or `drop_unsupported_sentences` per row.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

KINDS = ("entity", "number", "word")
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType({"entity": 3.0, "number": 3.0, "word": 1.0})
MAX_UNSUPPORTED = 20

# English function words and frequent sentence starters. Lowercase tokens here are not content words;
# capitalised ones at the start of a phrase are stripped from it ("The Saltglass Guild" -> "Saltglass Guild").
STOPWORDS = frozenset(
    """
    a about above across after afterwards again against all almost alone along already also although always
    am among an and another any anyone anything anyway are around as at be became because become becomes been
    before being below beside besides between beyond both but by can cannot could did do does doing done down
    during each either else elsewhere enough even ever every everyone everything few first for former formerly
    from further furthermore had has have having he hence her here hers herself him himself his how however i
    if in indeed instead into is it its itself just last later latter least less many may me meanwhile might
    more moreover most mostly much must my myself namely neither never nevertheless next no nobody none nor not
    nothing now of off often on once one only onto or other others otherwise our ours ourselves out over
    overall own perhaps per quite rather really same second several she should since so some somehow someone
    something sometimes still such than that the their theirs them themselves then there thereafter thereby
    therefore these they third this those though through throughout thus to today together too toward towards
    under unless unlike until up upon us very via was we well were what whatever when whenever where whereas
    wherever whether which while who whoever whole whom whose why will with within without would yet you your
    yours yourself additionally finally initially likewise similarly specifically ultimately notably
    consequently subsequently eventually originally currently lastly like known called named used made make
    makes many much various several certain including include includes included especially particularly
    also another each both either neither every yes let lets shall ago according following despite regarding
    given
    """.split()
)

# Words about the text rather than the world: a model's "the article mentions" is not a claim to check.
_DISCOURSE = (
    "article text document passage story section heading title mention mentions mentioned describe describes"
    " described discuss discusses discussed relate relates related relation relations relationship"
    " relationships connection connections connected connect entity entities context summary summarise"
    " summarize explain explains explained overview"
).split()

# Lowercase words allowed inside an entity phrase between capitalised words ("Guild of the Harbour").
_CONNECTORS = frozenset("of the de la le du des von van der den da di del al el y".split())

_SPELLED = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_GENERIC_NUMBERS = frozenset({"zero", "one", "two"})
_MULTIPLIERS = {"hundred": 100, "thousand": 1000, "million": 1_000_000}

_TOKEN = re.compile(
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?:(?:st|nd|rd|th|s)(?![^\W\d_]))?"
    r"|(?P<word>[^\W\d_]+(?:['\-][^\W\d_]+)*)"
)
_LIST_MARKER = re.compile(r"[ \t]*(?:#{1,6}|[-*+\u2022]|\d{1,3}[.)])[ \t]+")
_BLOCK_START = re.compile(r"[ \t]*(?:#{1,6}[ \t]|[-*+\u2022][ \t]|\d{1,3}[.)][ \t])")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st mt prof jr sr vs etc no capt gen col lt rev fr sgt cpl gov sen rep inc ltd co cf ie eg"
    " approx fig vol ch pp".split()
)
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # "u.s", "e.g" before their final dot
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A tiny suffix stripper, identical for text and document: cooled/cooling/cools -> cool."""
    w = word.casefold()
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith("ied"):
        w = w[:-3] + "y"
    elif len(w) >= 6 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) >= 6 and w.endswith("ly"):
        w = w[:-2]
    elif len(w) >= 5 and w.endswith("ed"):
        w = w[:-2]
    elif len(w) >= 5 and w.endswith(("ches", "shes", "sses", "xes", "zes")):
        w = w[:-2]
    elif len(w) >= 4 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiou":
        w = w[:-1]
    return w


_DISCOURSE_STEMS = frozenset(stem(w) for w in _DISCOURSE)


def _prepare(text: str) -> str:
    # NFKC folds ligatures and full-width digits; the table unifies curly quotes and dashes. Both keep length
    # for ordinary text, but offsets are always taken on the prepared string, never the caller's.
    return unicodedata.normalize("NFKC", text).translate(_QUOTES)


def _canonical_number(digits: str) -> str:
    digits = digits.replace(",", "")
    whole, _, frac = digits.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


@dataclass(frozen=True)
class _Token:
    text: str  # as written, possessive "'s" removed
    start: int
    end: int
    is_number: bool

    @property
    def capitalised(self) -> bool:
        return not self.is_number and self.text[0].isupper()


def _tokens(text: str, start: int = 0, end: int | None = None) -> list[_Token]:
    out = []
    for m in _TOKEN.finditer(text, start, len(text) if end is None else end):
        if m.group("num") is not None:
            out.append(_Token(m.group("num"), m.start(), m.end(), True))
            continue
        word = m.group("word")
        if word.endswith(("'s", "'S")):
            word = word[:-2]
        out.append(_Token(word, m.start(), m.start() + len(word), False))
    return out


@dataclass(frozen=True)
class Unit:
    """One checkable unit of a text."""

    kind: str  # "entity", "number" or "word"
    text: str  # normalised: entity casefolded words joined by one space; number canonical digits; word stem
    surface: str = ""  # as written, for reports
    start: int = 0  # offsets in the NFKC-normalised text
    end: int = 0
    sentence_initial: bool = False  # a lone capitalised word opening a sentence: checked leniently


def _number_units(tokens: list[_Token], i: int, *, generic: bool) -> tuple[Unit | None, int]:
    """The number starting at tokens[i], if any, and how many tokens it spans."""
    tok = tokens[i]
    if tok.is_number:
        return Unit("number", _canonical_number(tok.text), tok.text, tok.start, tok.end), 1
    low = tok.text.casefold()
    parts = low.split("-")
    if len(parts) == 2 and parts[0] in _SPELLED and parts[1] in _SPELLED:
        tens, ones = _SPELLED[parts[0]], _SPELLED[parts[1]]
        if not (tens >= 20 and tens % 10 == 0 and 1 <= ones <= 9):
            return None, 1
        value = tens + ones
    elif low in _SPELLED:
        value = _SPELLED[low]
    else:
        return None, 1
    span = 1
    if i + 1 < len(tokens) and tokens[i + 1].text.casefold() in _MULTIPLIERS:
        value *= _MULTIPLIERS[tokens[i + 1].text.casefold()]
        span = 2
    elif not generic and low in _GENERIC_NUMBERS:
        return None, 1  # "one of", "the two entities"; but "two hundred" is a count
    end = tokens[i + span - 1].end
    return Unit("number", str(value), " ".join(t.text for t in tokens[i : i + span]), tok.start, end), span


def _sentence_units(text: str, start: int, end: int) -> list[Unit]:
    """Units of one sentence, text[start:end] (`text` already prepared)."""
    marker = _LIST_MARKER.match(text, start, end)
    tokens = _tokens(text, marker.end() if marker else start, end)
    out: list[Unit] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        number, span = _number_units(tokens, i, generic=False)
        if number is not None:
            out.append(number)
            i += span
            continue
        if tok.text.casefold() in _SPELLED or tok.text.casefold() in _MULTIPLIERS:
            i += 1  # "one", "two", a stray "hundred": neither a number unit nor a content word
            continue
        if tok.capitalised:
            # A phrase: capitalised words separated by plain spaces, with connectors between them.
            j, last_cap = i, i
            while j + 1 < len(tokens):
                nxt = tokens[j + 1]
                gap = text[tokens[j].end : nxt.start]
                if gap.strip(" \t") or nxt.is_number:
                    break
                if nxt.capitalised:
                    j = last_cap = j + 1
                elif nxt.text.casefold() in _CONNECTORS and j + 1 - last_cap <= 2:
                    j += 1
                else:
                    break
            words = tokens[i : last_cap + 1]
            phrase_at_start = i == 0
            while words and (words[0].text.casefold() in STOPWORDS or words[0].text.casefold() in _CONNECTORS):
                words = words[1:]
                phrase_at_start = False
            while words and words[-1].text.casefold() in STOPWORDS:
                words = words[:-1]
            i = last_cap + 1
            if not words:
                continue
            lone_initial = phrase_at_start and len(words) == 1
            key = " ".join(w.text.casefold() for w in words)
            surface = text[words[0].start : words[-1].end]
            out.append(Unit("entity", key, surface, words[0].start, words[-1].end, lone_initial))
            continue
        for part in tok.text.split("-"):
            low = part.casefold()
            if len(low) >= 4 and low not in STOPWORDS and low not in _SPELLED and part.islower():
                s = stem(low)
                if s not in _DISCOURSE_STEMS:
                    out.append(Unit("word", s, part, tok.start, tok.end))
        i += 1
    return out


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence in `text`, whitespace trimmed, in order.

    Sentences end at . ! ? followed by whitespace (not after "Dr.", "St.", an initial, or before a lowercase
    letter), at blank lines, and at line breaks before a markdown heading or list item; a heading line is a
    sentence of its own. A single line break inside a paragraph is not a boundary. Offsets refer to the text
    as given when it is already NFKC-normalised (the functions here normalise first).
    """
    spans: list[tuple[int, int]] = []
    # Blocks: paragraphs (separated by blank lines), heading lines, list items.
    blocks: list[tuple[int, int]] = []
    block_start = None
    pos = 0
    for line in text.splitlines(keepends=True):
        line_end = pos + len(line)
        content = line.strip()
        if not content:
            if block_start is not None:
                blocks.append((block_start, pos))
                block_start = None
        elif _BLOCK_START.match(line) or (block_start is not None and text[block_start:pos].lstrip().startswith("#")):
            if block_start is not None:
                blocks.append((block_start, pos))
            block_start = pos
        elif block_start is None:
            block_start = pos
        pos = line_end
    if block_start is not None:
        blocks.append((block_start, len(text)))

    for b_start, b_end in blocks:
        cut = b_start
        marker = _LIST_MARKER.match(text, b_start, b_end)  # "1. " opens an item, it does not end a sentence
        for m in _SENTENCE_END.finditer(text, marker.end() if marker else b_start, b_end):
            before = text[cut : m.start()].split()
            last_word = before[-1].lower().strip("\"'([") if before else ""
            initial = len(last_word) == 1 and last_word.isalpha()
            if last_word in _ABBREVIATIONS or initial or _DOTTED.fullmatch(last_word):
                continue  # "Dr. Oddry", "J. Tolk", "U.S. Navy"
            rest = text[m.end() : b_end].lstrip()
            if rest and rest[0].islower():
                continue  # "e.g. the", "approx. five"
            spans.append((cut, m.end()))
            cut = m.end()
        spans.append((cut, b_end))
    trimmed = []
    for s, e in spans:
        chunk = text[s:e]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            trail = len(chunk) - len(chunk.rstrip())
            trimmed.append((s + lead, e - trail))
    return trimmed


def units(text: str) -> list[Unit]:
    """All checkable units of `text`, in order (offsets refer to the NFKC-normalised text)."""
    text = _prepare(text)
    return [u for s, e in sentence_spans(text) for u in _sentence_units(text, s, e)]


@dataclass(frozen=True, repr=False)
class DocumentIndex:
    """What a document contains, precomputed once so that scoring many rows of it is cheap."""

    joined: str  # " " + casefolded word and number tokens joined by single spaces + " "
    capitalised: frozenset[str]  # casefolded words that appear capitalised somewhere
    words: frozenset[str]  # every casefolded word (and hyphen part)
    stems: frozenset[str]  # stems of every word (and hyphen part)
    numbers: frozenset[str]  # canonical numbers, digits and spelled (one and two included)

    def __repr__(self) -> str:
        return f"DocumentIndex({len(self.words)} distinct words, {len(self.numbers)} numbers)"

    @classmethod
    def from_text(cls, document: str, *, title: str = "") -> DocumentIndex:
        """Index `document`; a `title` the prompt showed the model is indexed with it (titles are often not
        repeated in the body, and the synthetic text names them)."""
        text = _prepare(f"{title}\n\n{document}" if title else document)
        tokens = _tokens(text)
        capitalised, words, stems, numbers = set(), set(), set(), set()
        i = 0
        while i < len(tokens):
            number, _ = _number_units(tokens, i, generic=True)
            if number is not None:
                numbers.add(number.text)
            i += 1  # every token also goes into the word sets: "three" or "hundred" may be in a name
        for tok in tokens:
            if tok.is_number:
                continue
            low = tok.text.casefold()
            if tok.capitalised:
                capitalised.add(low)
            words.add(low)
            stems.add(stem(low))
            if "-" in low:
                for part in low.split("-"):
                    words.add(part)
                    stems.add(stem(part))
                for part, written in zip(low.split("-"), tok.text.split("-")):
                    if written[:1].isupper():
                        capitalised.add(part)
        joined = " " + " ".join(_joined_form(t) for t in tokens) + " "
        return cls(joined, frozenset(capitalised), frozenset(words), frozenset(stems), frozenset(numbers))


def _joined_form(tok: _Token) -> str:
    return _canonical_number(tok.text) if tok.is_number else tok.text.casefold()


def supported(unit: Unit, index: DocumentIndex) -> bool:
    """Whether the document behind `index` contains `unit` (see the module docstring for the rules)."""
    if unit.kind == "number":
        return unit.text in index.numbers
    if unit.kind == "word":
        return unit.text in index.stems
    if unit.kind != "entity":
        raise ValueError(f"unknown unit kind {unit.kind!r}; expected one of {KINDS}")
    if f" {unit.text} " in index.joined:
        return True
    names = [w for w in unit.text.split() if w not in _CONNECTORS]
    if unit.sentence_initial:
        return all(w in index.words or stem(w) in index.stems for w in names)
    return all(w in index.capitalised or _hyphen_parts_in(w, index.capitalised) for w in names)


def _hyphen_parts_in(word: str, vocabulary: frozenset[str]) -> bool:
    return "-" in word and all(p in vocabulary for p in word.split("-"))


@dataclass
class GroundingScore:
    """How much of a text its document supports."""

    score: float  # weighted share of supported units over the scored text; 1.0 when there are none
    sentence_scores: list[float]  # one per entry of `sentences`, same definition
    sentences: list[str]  # the scored sentences (those reaching past the skipped prefix), as written
    num_units: int
    num_supported: int
    unsupported: list[str]  # distinct unsupported units as written: entities and numbers first, then words
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (num_supported, num_units)


@dataclass(frozen=True)
class _Sentence:
    start: int
    end: int
    units: list[Unit]
    flags: list[bool]  # supported, per unit
    score: float
    scored: bool  # False for sentences wholly inside the skipped prefix


def _weighted(units_: list[Unit], flags: list[bool], weights: Mapping[str, float]) -> float:
    total = sum(weights[u.kind] for u in units_)
    if total <= 0:
        return 1.0
    return sum(weights[u.kind] for u, ok in zip(units_, flags) if ok) / total


def _prefix_length(text: str, prefix: str) -> int:
    """Characters of `text` taken by `prefix`: matched as given, else ignoring leading whitespace, else 0."""
    if not prefix:
        return 0
    prefix = _prepare(prefix)
    if text.startswith(prefix):
        return len(prefix)
    stripped, want = text.lstrip(), prefix.lstrip()
    if want and stripped.startswith(want):
        return len(text) - len(stripped) + len(want)
    return 0


def _analyse(text: str, index: DocumentIndex, prefix: str, weights: Mapping[str, float]) -> list[_Sentence]:
    missing = [k for k in KINDS if k not in weights]
    if missing:
        raise ValueError(f"weights lack {missing}; give a weight for each of {KINDS}")
    cut = _prefix_length(text, prefix)
    out = []
    for start, end in sentence_spans(text):
        if end <= cut:
            out.append(_Sentence(start, end, [], [], 1.0, False))
            continue
        # A sentence the prefix starts and the model finishes: only units reaching past the prefix count.
        sentence_units = [u for u in _sentence_units(text, start, end) if u.end > cut]
        flags = [supported(u, index) for u in sentence_units]
        out.append(_Sentence(start, end, sentence_units, flags, _weighted(sentence_units, flags, weights), True))
    return out


def score_text(
    text: str,
    index: DocumentIndex,
    *,
    skip_prefix: str = "",
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
) -> GroundingScore:
    """Score `text` against the document behind `index`.

    `skip_prefix` is text the prompt forced (the templated heading and opening words); where `text` starts
    with it, its units are not scored. The sentence it leaves unfinished is scored on the model's part only.
    """
    text = _prepare(text)
    sentences = [s for s in _analyse(text, index, skip_prefix, weights) if s.scored]
    all_units = [u for s in sentences for u in s.units]
    all_flags = [f for s in sentences for f in s.flags]
    counts = {k: (0, 0) for k in KINDS}
    for u, ok in zip(all_units, all_flags):
        num_ok, num = counts[u.kind]
        counts[u.kind] = (num_ok + ok, num + 1)
    seen: set[tuple[str, str]] = set()
    facts: list[str] = []
    words: list[str] = []
    for u, ok in zip(all_units, all_flags):
        if ok or (u.kind, u.text) in seen:
            continue
        seen.add((u.kind, u.text))
        (words if u.kind == "word" else facts).append(u.surface)
    return GroundingScore(
        score=_weighted(all_units, all_flags, weights),
        sentence_scores=[s.score for s in sentences],
        sentences=[text[s.start : s.end] for s in sentences],
        num_units=len(all_units),
        num_supported=sum(all_flags),
        unsupported=(facts + words)[:MAX_UNSUPPORTED],
        counts=counts,
    )


def drop_unsupported_sentences(
    text: str,
    index: DocumentIndex,
    threshold: float,
    *,
    keep_prefix: str = "",
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
) -> tuple[str, int]:
    """Remove sentences scoring below `threshold`; return (repaired text, number of sentences dropped).

    Sentences wholly inside `keep_prefix` are always kept. When the sentence the prefix leaves unfinished
    ("In "Title", Harbour Guild" + the model's words) is dropped, it goes whole, prefix words included, so
    the row never keeps a dangling clause; the prefix's complete part (its heading) stays. Between kept
    sentences the widest of the separators they had is kept, so paragraphs and headings stay apart. With
    nothing dropped the text comes back unchanged (after NFKC normalisation).
    """
    text = _prepare(text)
    sentences = _analyse(text, index, keep_prefix, weights)
    keep = [not s.scored or s.score >= threshold for s in sentences]
    num_dropped = keep.count(False)
    if not num_dropped:
        return text, 0
    if not any(keep):
        return "", num_dropped
    kept = [i for i, k in enumerate(keep) if k]
    pieces = [text[: sentences[0].start]]
    for previous, current in zip([None, *kept], kept):
        if previous is not None:
            # The widest separator the dropped stretch had: "\n\n" or a heading break survives a dropped
            # paragraph-ending sentence, so paragraphs do not run together.
            gaps = [text[sentences[i].end : sentences[i + 1].start] for i in range(previous, current)]
            pieces.append(max(gaps, key=lambda g: g.count("\n")))
        pieces.append(text[sentences[current].start : sentences[current].end])
    pieces.append(text[sentences[-1].end :])
    return "".join(pieces), num_dropped
