"""`column op value` conditions (text/conditions.py), what input.where is written in."""

import pytest

from ray_entigraph.text.conditions import MissingColumn, first_failing, parse_condition


@pytest.mark.parametrize("text, record, holds", [
    ("language == en", {"language": "en"}, True),
    ("language == en", {"language": "fr"}, False),
    ('language == "en"', {"language": "en"}, True),
    ("score >= 3", {"score": 3}, True),
    ("score >= 3", {"score": 2.5}, False),
    ("score < 0.5", {"score": 0.25}, True),
    ('source in ["web", "books"]', {"source": "books"}, True),
    ('source not in ["web"]', {"source": "web"}, False),
    ("url != null", {"url": None}, False),
    ("flag == true", {"flag": True}, True),
    ("score > 3", {"score": "high"}, False),  # incomparable types: does not hold, never raises
])
def test_conditions_read_json_values_or_bare_words(text, record, holds):
    assert parse_condition(text).holds(record) is holds


@pytest.mark.parametrize("text", ["score => 3", "== en", "language", "score in 3"])
def test_malformed_conditions_say_how_to_write_one(text):
    with pytest.raises(ValueError, match="Fix"):
        parse_condition(text)


def test_the_first_failing_condition_is_named_and_a_missing_column_raises():
    conditions = (parse_condition("language == en"), parse_condition("score >= 3"))
    assert first_failing(conditions, {"language": "en", "score": 4}) is None
    assert first_failing(conditions, {"language": "en", "score": 1}).text == "score >= 3"
    with pytest.raises(MissingColumn):
        first_failing(conditions, {"language": "en"})
