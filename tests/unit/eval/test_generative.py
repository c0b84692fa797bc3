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
    ("I think the answer is a lighthouse.", None),  # the article "a" is not option A
    ("the answer is (b)", 1),
    ("The answer is a\n", 0),
])
def test_parse_answer(text, expected):
    assert parse_answer(text, 4) == expected


def test_question_block_lists_lettered_options():
    q = Question(qid="a/0", article_id="a", title="THE LONG NIGHT", author="Jane Q. Writer", year="1958",
                 question="Where did night fall?", options=("Venus", "Mars", "Earth", "The Moon"), gold=1,
                 difficult=True, article="Night fell on Mars.")
    assert question_block(q) == ('Title: "THE LONG NIGHT"\nAuthor: Jane Q. Writer\nYear: 1958\n'
                                 "Question: Where did night fall?\nA. Venus\nB. Mars\nC. Earth\nD. The Moon")


def test_four_shots_name_every_letter_once():
    from ray_entigraph.eval.generative import generation_requests

    [req] = generation_requests([Question(qid="a/0", article_id="a", title="T", author="", year="", question="Q?",
                                          options=("w", "x", "y", "z"), gold=0, difficult=False, article="")],
                                few_shot=4, max_new_tokens=16)
    answers = [m["content"].rsplit("Answer: ", 1)[1] for m in req.messages if m["role"] == "assistant"]
    assert sorted(answers) == ["A", "B", "C", "D"] and req.sampling.repetition_penalty == 1.0
