"""Generative evaluation's pure parts (eval/generative.py): the question block and the answer parser."""

from __future__ import annotations

import pytest

from ray_entigraph.eval.generative import parse_answer, question_block
from ray_entigraph.eval.quality import Question


@pytest.mark.parametrize("text, expected", [
    ("The title says so. Answer: B", 1),
    ("Let me think... the answer is (C).", 2),
    ("Answer: A\nWait, no. Answer: D", 3),
    ("**Answer:** c", 2),
    ("Reasoning here.\nD. The Moon", 3),
    ("I am not sure.", None),
    ("Answer: E", None),  # not one of four options
    ("An answer is hard", None),  # "answer is hard" names no option letter
])
def test_parse_answer(text, expected):
    assert parse_answer(text, 4) == expected


def test_question_block_lists_lettered_options():
    q = Question(qid="a/0", article_id="a", title="THE LONG NIGHT", author="Jane Q. Writer", year="1958",
                 question="Where did night fall?", options=("Venus", "Mars", "Earth", "The Moon"), gold=1,
                 difficult=True, article="Night fell on Mars.")
    assert question_block(q) == ('Title: "THE LONG NIGHT"\nAuthor: Jane Q. Writer\nYear: 1958\n'
                                 "Question: Where did night fall?\nA. Venus\nB. Mars\nC. Earth\nD. The Moon")
