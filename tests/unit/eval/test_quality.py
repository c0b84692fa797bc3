"""The QuALITY loader (eval/quality.py): the public layout, bad records named, and when the input's own
questions are used."""

from __future__ import annotations

import json

import pytest

from ray_entigraph.eval.quality import QuestionsError, load_questions, parse_records, resolve_questions_url, strip_html

# Two records in the public QuALITY layout (HTML article, 1-based gold labels, `difficult` flags), written for
# this test.
PUBLIC_SAMPLE = [
    {"article_id": "20001", "set_unique_id": "20001_ABC", "batch_num": "22", "writer_id": "1001", "source": "Gutenberg",
     "title": "THE LONG NIGHT", "author": "Jane Q. Writer", "year": 1958, "topic": "Science fiction",
     "article": "<html><head><title>x</title></head><body><p>The ship &amp; its crew   waited.</p>\n<p>Night fell"
                " on&nbsp;Mars.<br>It was cold.</p></body></html>",
     "questions": [
         {"question": "Where did night fall?", "question_unique_id": "20001_ABC_1",
          "options": ["Venus", "Mars", "Earth", "The Moon"], "gold_label": 2, "writer_label": 2,
          "validation": [{"untimed_annotator_id": "0", "untimed_answer": 2, "untimed_eval1_answerability": 1}],
          "speed_validation": [], "difficult": 1},
         {"question": "Who waited?", "options": ["The ship and its crew", "Nobody", "A dog", "The sun"],
          "gold_label": 1, "difficult": 0},
     ]},
    {"article_id": "20002", "title": "Second", "author": "", "year": None, "article": "Plain text.",
     "questions": [{"question": "Q?", "options": ["a", "b", "c", "d"], "gold_label": 4}]},
]


def test_quality_loader_reads_the_public_layout(tmp_path):
    path = tmp_path / "quality.dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PUBLIC_SAMPLE))
    qs = load_questions(str(path))
    assert len(qs) == 3
    first = qs[0]
    assert first.qid == "20001_ABC/0" and first.article_id == "20001"
    assert first.gold == 1 and first.difficult and first.options[1] == "Mars"
    assert first.article == "The ship & its crew waited.\n\nNight fell on Mars.\n\nIt was cold."  # HTML stripped
    assert first.header() == 'Title: "THE LONG NIGHT"\nAuthor: Jane Q. Writer\nYear: 1958'
    assert qs[2].header() == 'Title: "Second"' and qs[2].gold == 3
    assert load_questions(str(path), max_questions=2) == qs[:2]
    # the demo corpus is read by the same loader
    demo = load_questions("builtin:demo")
    assert len(demo) == 30 and all(len(q.options) == 4 and 0 <= q.gold < 4 for q in demo)


@pytest.mark.parametrize("bad, message", [
    ({"article_id": "x", "questions": [{"question": "q", "options": ["a", "b"], "gold_label": 0}]}, "1-based"),
    ({"article_id": "x", "questions": [{"question": "q", "options": ["a"], "gold_label": 1}]}, "at least 2 options"),
])
def test_quality_loader_names_the_bad_record(bad, message):
    with pytest.raises(QuestionsError, match=message) as err:
        parse_records([json.dumps(bad)], source="q.jsonl")
    assert "q.jsonl:1" in str(err.value)
    with pytest.raises(QuestionsError, match="not JSON"):
        parse_records(["{oops"], source="q.jsonl")


def test_questions_auto_uses_the_input_only_when_it_holds_questions(tmp_path):
    assert resolve_questions_url("auto", "builtin:demo") == "builtin:demo"
    plain = tmp_path / "docs.jsonl"
    plain.write_text(json.dumps({"text": "no questions here"}) + "\n")
    assert resolve_questions_url("auto", str(plain)) is None
    assert resolve_questions_url("none", "builtin:demo") is None
    assert resolve_questions_url("/x/q.jsonl", "builtin:demo") == "/x/q.jsonl"
    with pytest.raises(QuestionsError, match="does not exist"):
        load_questions(str(tmp_path / "missing.jsonl"))


def test_strip_html_leaves_plain_text_alone():
    assert strip_html("  A plain < 3 text.  ") == "A plain < 3 text."


@pytest.mark.parametrize("record, fragment", [
    ([1, 2], "a JSON list, not an object"),
    ({"article": "x", "questions": {"question": "q"}}, "`questions` is a dict, not a list"),
    ({"article": "x", "questions": [{"question": "q", "options": "ABCD", "gold_label": 1}]}, "`options` is a list"),
    ({"article": "x", "questions": ["q"]}, "a question is an object"),
])
def test_a_malformed_questions_record_names_its_line(record, fragment):
    with pytest.raises(QuestionsError, match=fragment) as info:
        parse_records(["", json.dumps(record)], source="q.jsonl")
    assert str(info.value).startswith("q.jsonl:2")
