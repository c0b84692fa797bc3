"""Word n-gram overlap (text/overlap.py): copy rate against the source, and decontamination probes."""

from ray_entigraph.text.overlap import contaminated, copy_rate, probes

DOC = ("Mara Vell founded the Kestavel Guild of net-makers in the harbour town of Orrin in 1841, and the guild "
       "met every spring at Orrin Hall.")


def test_copy_rate_counts_verbatim_spans_ignoring_case_and_punctuation():
    copied = "mara vell founded the Kestavel guild, of net-makers in the harbour town"
    assert copy_rate(copied, DOC) == 1.0
    rephrased = "In 1841 a woman called Mara Vell started a guild for the people who make nets near the sea"
    assert copy_rate(rephrased, DOC) == 0.0
    half = "Mara Vell founded the Kestavel Guild of net-makers in the harbour, which was a cold place to work"
    rate = copy_rate(half, DOC)
    assert 0.0 < rate < 1.0
    assert copy_rate("too short", DOC) is None


def test_a_leaked_question_is_found_but_a_stated_fact_is_not_contamination():
    items = {"q1": probes("In what year did Mara Vell found the Kestavel Guild?", ["1841", "1852", "1790", "1901"]),
             "q2": probes("Where did the guild meet?", ["At Orrin Hall", "At the harbour", "In a boat", "Nowhere"])}
    texts = ["Mara Vell founded the guild in 1841 at Orrin Hall.",  # the facts: not contamination
             "Quiz: in what year did Mara Vell found the Kestavel Guild? 1841.",  # the question, verbatim
             "Ask yourself: where did the guild meet?"]  # a short question, whole
    assert contaminated(items, texts) == {"q1": 1, "q2": 1}
    assert contaminated(items, texts[:1]) == {}
