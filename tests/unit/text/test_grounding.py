import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ray_entigraph
from ray_entigraph.text.grounding import (
    DEFAULT_WEIGHTS,
    DocumentIndex,
    drop_unsupported_sentences,
    score_text,
    sentence_spans,
    stem,
    supported,
    units,
)

DEMO = Path(ray_entigraph.__file__).resolve().parent / "demo" / "quality_demo.jsonl"
ARTICLES = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
GUILD = next(a for a in ARTICLES if a["title"] == "The Saltglass Guild of Port Imbrel")

DOC = (
    "The Harbour Guild of Kestavel was founded in 1612 by Duchess Aumery Tolk. "
    "Its members cooled the glass in seawater drawn from the harbour, which gives it a green sheen. "
    "In 1958 a fire destroyed the eastern furnace house, and production moved to the village of Lessick. "
    "The guild had 2,400 members and its bell rang for eleven seconds."
)
COPIED = "In 1958 a fire destroyed the eastern furnace house, and production moved to the village of Lessick."
PREFIX = '## Harbour Guild in "The Salt Roads of Kestavel"\n\nIn "The Salt Roads of Kestavel", Harbour Guild'


@pytest.fixture(scope="module")
def index():
    return DocumentIndex.from_text(DOC, title="The Salt Roads of Kestavel")


def test_copied_sentence_scores_one(index):
    result = score_text(COPIED, index)
    assert result.score == 1.0
    assert result.num_units >= 8 and result.num_supported == result.num_units
    assert result.unsupported == []


def test_paraphrase_in_the_documents_words_scores_high(index):
    result = score_text("Duchess Aumery Tolk founded the Harbour Guild in 1612; members cool glass in seawater.", index)
    assert result.score >= 0.9, result


@pytest.mark.parametrize(
    "sentence, invented",
    [
        ("The Harbour Guild was founded by Admiral Corvin Dusk.", "Admiral Corvin Dusk"),  # invented name
        ("The Harbour Guild was founded in 1740.", "1740"),  # invented year
        ("Production moved to the village of Dunmore Vale.", "Dunmore Vale"),  # invented place
        ("The guild had 9,100 members.", "9,100"),  # invented count
        ("The bell rang for seventeen seconds.", "seventeen"),  # invented spelled number
    ],
)
def test_invented_fact_scores_low_and_is_named(index, sentence, invented):
    result = score_text(sentence, index)
    assert result.score < 0.7, result
    assert result.score < score_text(COPIED, index).score
    assert invented in result.unsupported


def test_mixed_text_separates_sentences_and_overall_lies_between(index):
    invented = "Later the guild moved to Veltmoor under Marshal Ostrey Quill in 1744."
    result = score_text(f"{COPIED} {invented}", index)
    assert result.sentences == [COPIED, invented]
    grounded_score, invented_score = result.sentence_scores
    assert grounded_score == 1.0 and invented_score < 0.5
    assert invented_score < result.score < grounded_score
    assert result.unsupported[:3] == ["Veltmoor", "Marshal Ostrey Quill", "1744"]


def test_unsupported_lists_entities_and_numbers_before_words(index):
    result = score_text("Their astrolabes crumbled when Vorn Haskel arrived in 1999.", index)
    assert result.unsupported == ["Vorn Haskel", "1999", "astrolabes", "crumbled", "arrived"]
    assert result.counts == {"entity": (0, 1), "number": (0, 1), "word": (0, 3)}


def test_skip_prefix_is_not_scored(index):
    bogus_prefix = '## Zarnak Vellow in "Imaginary Title"\n\nIn "Imaginary Title", Zarnak Vellow'
    text = bogus_prefix + " was founded in 1612 by Duchess Aumery Tolk."
    skipped = score_text(text, index, skip_prefix=bogus_prefix)
    assert skipped.score == 1.0 and skipped.unsupported == []
    assert skipped.num_units == 3  # founded, 1612, Duchess Aumery Tolk; "was" is a stopword
    unskipped = score_text(text, index)
    assert unskipped.score < 0.7 and "Zarnak Vellow" in unskipped.unsupported
    # The sentence the prefix leaves unfinished is reported whole, but scored on the model's part only.
    assert skipped.sentences == ['In "Imaginary Title", Zarnak Vellow was founded in 1612 by Duchess Aumery Tolk.']


def test_a_prefix_the_text_does_not_start_with_is_not_skipped(index):
    assert score_text("Zarnak Vellow.", index, skip_prefix="Something else").num_units == 1


@pytest.mark.parametrize("text", ["", "   \n\n ", "It was there, and so it is.", "One of the two."])
def test_text_without_units_scores_one(index, text):
    result = score_text(text, index)
    assert (result.score, result.num_units, result.num_supported, result.unsupported) == (1.0, 0, 0, [])


def test_drop_removes_exactly_the_invented_sentence_and_keeps_the_prefix(index):
    grounded_1 = " was founded in 1612 by Duchess Aumery Tolk."
    invented = "Its bell was cast by Brother Ambrose Kell in 1790 at Dunmore Abbey."
    grounded_2 = "A fire destroyed the eastern furnace house in 1958."
    text = f"{PREFIX}{grounded_1} {invented} {grounded_2}\n\n## How Harbour Guild and Lessick relate\n\n{COPIED}"
    repaired, num_dropped = drop_unsupported_sentences(text, index, 0.7, keep_prefix=PREFIX)
    assert num_dropped == 1
    assert repaired == f"{PREFIX}{grounded_1} {grounded_2}\n\n## How Harbour Guild and Lessick relate\n\n{COPIED}"
    assert score_text(repaired, index, skip_prefix=PREFIX).score == 1.0


def test_drop_keeps_paragraph_breaks_when_a_paragraph_end_goes(index):
    invented = "Marshal Ostrey Quill ruled Veltmoor in 1744."
    grounded = "The guild had 2,400 members."
    for text in [f"{COPIED} {invented}\n\n{grounded}", f"{COPIED}\n\n{invented} {grounded}"]:
        assert drop_unsupported_sentences(text, index, 0.7) == (f"{COPIED}\n\n{grounded}", 1)


def test_drop_of_the_sentence_the_prefix_starts_keeps_only_the_heading(index):
    text = f"{PREFIX} was built by Marshal Ostrey Quill in 1744 at Veltmoor.\n\n{COPIED}"
    repaired, num_dropped = drop_unsupported_sentences(text, index, 0.7, keep_prefix=PREFIX)
    assert num_dropped == 1
    assert repaired == f'## Harbour Guild in "The Salt Roads of Kestavel"\n\n{COPIED}'


def test_drop_with_nothing_below_threshold_returns_the_text_unchanged(index):
    text = f"{PREFIX} was founded in 1612.  Marshal Ostrey Quill ruled Veltmoor.\n\n\n{COPIED}\n"
    assert drop_unsupported_sentences(text, index, 0.0, keep_prefix=PREFIX) == (text, 0)


def test_entity_matching_ignores_case_whitespace_and_word_order(index):
    for phrase in ["HARBOUR   GUILD OF KESTAVEL", "Harbour\tGuild", "Kestavel Harbour Guild", "Aumery Tolk's"]:
        (unit,) = [u for u in units(f"We saw {phrase} there.") if u.kind == "entity"]
        assert supported(unit, index), phrase
    (unit,) = [u for u in units("We saw Harbour Guild of Veltmoor there.") if u.kind == "entity"]
    assert unit.text == "harbour guild of veltmoor" and not supported(unit, index)


def test_entity_phrases_drop_leading_function_words_and_keep_connectors():
    found = [u.surface for u in units('In "The Salt Roads of Kestavel", the Guild of the Harbour met Hesper Oddry.')]
    assert found == ["Salt Roads of Kestavel", "Guild of the Harbour", "Hesper Oddry"]


def test_a_sentence_initial_word_is_checked_leniently(index):
    # "Cooling" starts the sentence, so it may be an ordinary word: its stem ("cooled") in the document suffices.
    assert score_text("Cooling glass in seawater gives a green sheen.", index).score == 1.0
    # Mid-sentence it is a name, and the document must contain the name itself.
    assert score_text("We saw Cooling in Lessick.", index).unsupported == ["Cooling"]


def test_numbers_are_normalised_on_both_sides(index):
    def numbers(text):
        return [u.text for u in units(text) if u.kind == "number"]

    text = "In 2400 hours, 11 seconds, the 1612th year, 3.50 and 2,400."
    assert numbers(text) == ["2400", "11", "1612", "3.5", "2400"]
    assert numbers("Twenty-five masters and three hundred members.") == ["25", "300"]
    assert score_text("The guild had 2400 members and the bell rang for 11 seconds.", index).score == 1.0


def test_stemmer_maps_inflections_together():
    assert stem("cooled") == stem("cooling") == stem("cools") == stem("cool")
    assert stem("glasses") == stem("glass")
    assert stem("glaze") == stem("glazed") == stem("glazing") != stem("glass")
    assert stem("studies") == stem("studied") == stem("study")


def test_sentence_spans_respect_abbreviations_decimals_headings_and_lists():
    text = "## Heading\nDr. Oddry measured 3.5 metres. It was 3 ft. wide.\n- first item\n- second\n\nJ. Tolk wrote it."
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "## Heading", "Dr. Oddry measured 3.5 metres.", "It was 3 ft. wide.", "- first item", "- second",
        "J. Tolk wrote it.",
    ]  # fmt: skip


def test_list_markers_are_not_numbers():
    assert [u.kind for u in units("1. Lessick\n2. Kestavel")] == ["entity", "entity"]


def test_weights_change_the_score_and_must_cover_every_kind(index):
    sentence = "The guild had 9,100 members."
    flat = {"entity": 1.0, "number": 1.0, "word": 1.0}
    assert score_text(sentence, index, weights=flat).score == pytest.approx(2 / 3)
    assert score_text(sentence, index).score == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="word"):
        score_text(sentence, index, weights={"entity": 3.0, "number": 3.0})


def test_deterministic_across_processes_and_hash_seeds():
    code = (
        "import json; from ray_entigraph.text.grounding import DocumentIndex, score_text, drop_unsupported_sentences\n"
        f"doc = {GUILD['article']!r}\n"
        "text = 'Hesper Oddry built the Tharrow Point Light in 1871. Vorn Haskel, Ilse Marr and Quon Deep of Zell"
        " forged 400 prisms in 1880 with astrolabes, sextants and cogwheels.'\n"
        "idx = DocumentIndex.from_text(doc)\n"
        "r = score_text(text, idx)\n"
        "print(json.dumps([r.score, r.sentence_scores, r.unsupported, drop_unsupported_sentences(text, idx, 0.9)]))\n"
    )
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        outputs.add(proc.stdout)
    assert len(outputs) == 1
    (out,) = outputs
    assert json.loads(out)[2][:4] == ["Vorn Haskel", "Ilse Marr", "Quon Deep of Zell", "400"]


def test_realistic_row_against_a_demo_article():
    index = DocumentIndex.from_text(GUILD["article"], title=GUILD["title"])
    title = GUILD["title"]
    prefix = f'## Hesper Oddry in "{title}"\n\nIn "{title}", Hesper Oddry'
    grounded = [
        " was the master who completed the lens array for the Tharrow Point Light in 1871.",
        "The array contained 96 hand-ground prisms and took four years to finish.",
        "Engineer Odrin Vasquelle, who designed the lighthouse, trusted Oddry's prisms with a ship.",
    ]
    invented = [
        "Oddry later founded the Royal Academy of Glassmakers in Veltmoor in 1902.",
        "His apprentice Marten Kolb took the lens to Fenwick Harbour in 1889.",
    ]
    text = (
        f"{prefix}{grounded[0]} {invented[0]} {grounded[1]}\n\n"
        f"## How Hesper Oddry and Odrin Vasquelle relate\n\n{grounded[2]} {invented[1]}"
    )
    result = score_text(text, index, skip_prefix=prefix)
    by_sentence = dict(zip(result.sentences, result.sentence_scores))
    assert all(by_sentence[s] >= 0.9 for s in grounded[1:]) and result.sentence_scores[0] >= 0.9
    assert all(by_sentence[s] < 0.5 for s in invented)
    assert {"Royal Academy of Glassmakers", "Veltmoor", "1902", "Marten Kolb", "Fenwick Harbour", "1889"} <= set(
        result.unsupported
    )
    repaired, num_dropped = drop_unsupported_sentences(text, index, 0.6, keep_prefix=prefix)
    assert num_dropped == 2 and repaired.startswith(prefix)
    assert not any(s in repaired for s in invented) and all(s.strip() in repaired for s in grounded)


def test_scoring_is_cheap():
    document = "\n\n".join(a["article"] for a in ARTICLES)  # about 1,600 words
    assert len(document.split()) >= 1500
    text = " ".join(" ".join(a["article"] for a in ARTICLES[::-1]).split()[:300])
    index = DocumentIndex.from_text(document)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        score_text(text, index, weights=DEFAULT_WEIGHTS)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.05, timings  # about 3 ms on a loaded 2-core machine; catches a pathological regex
