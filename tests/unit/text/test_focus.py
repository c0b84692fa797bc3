"""Focused context (text/focus.py): the passages that mention the entities, with a window around them."""

from ray_entigraph.text.focus import GAP, focused_context

DOC = ("Mara Vell founded the guild in 1841. It met in a loft. Nobody recalls the loft. The harbour froze in 1850. "
       "Ships stayed in port. In 1862 Vell built Orrin Hall. The hall burned in 1901.")


def test_the_sentences_naming_the_entities_with_their_neighbours():
    out = focused_context(DOC, ["Mara Vell"], window=0)
    assert out == "Mara Vell founded the guild in 1841." + GAP + "In 1862 Vell built Orrin Hall."  # surname alone
    wide = focused_context(DOC, ["Orrin Hall"], window=1)
    assert wide == "Ships stayed in port. In 1862 Vell built Orrin Hall. The hall burned in 1901."
    both = focused_context(DOC, ["Mara Vell", "harbour"], window=1)
    assert both.startswith("Mara Vell founded") and "The harbour froze" in both and both.count(GAP) == 0


def test_no_mention_gives_the_whole_document_and_names_match_on_word_boundaries():
    assert focused_context(DOC, ["Kestavel"]) == DOC
    assert focused_context("A hallway. The hall.", ["hall"], window=0) == "The hall."
