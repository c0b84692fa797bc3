"""The judge stage's pure parts (stages/judge.py): the rating parser, the request layout and the judged
row. The judged folder's identity is tested in tests/unit/test_context.py and tests/unit/test_layout.py; the
ablation's report in tests/unit/workflows/test_ablation.py."""

from __future__ import annotations

import pytest

from ray_entigraph.engines import GenerationResult
from ray_entigraph.prompts import load_prompt_set
from ray_entigraph.stages.judge import RATING_SCHEMA, judge_request, judged_row, parse_rating


@pytest.mark.parametrize("answer, rating", [
    ("4", 4), (" 5\n", 5), ('{"rating": 2}', 2), ("I would say 3 out of 5.", 3), ("4/5", 4),
    ("Rating 1 - mostly invented", 1), ("1. The document supports only the first claim.", 1),
])
def test_parse_rating_reads_json_or_the_first_digit_from_1_to_5(answer, rating):
    assert parse_rating(answer) == rating


@pytest.mark.parametrize("answer", ["", "The text is fine.", "0", "7", "10", "2.5", "1.5/10", '{"rating": 9}'])
def test_parse_rating_refuses_to_guess(answer):
    assert parse_rating(answer) is None


def test_judge_request_puts_the_document_first_and_constrains_only_when_the_engine_can():
    template = load_prompt_set("judge-v1").judge
    row = {"task_id": "t1", "doc_id": "d1", "text": "The Guild was founded in 1742."}
    doc = {"doc_id": "d1", "title": "Kestavel", "text": "The Harbour Guild of Kestavel was founded in 1742."}
    free = judge_request(template, row, doc, constrained=False)
    user = free.messages[-1]["content"]
    assert user.index(doc["text"]) < user.index(row["text"])  # shared document prefix, then the text
    assert free.prefix_key == "d1" and free.key == "t1" and free.sampling.temperature == 0.0
    assert free.response_prefix == "Rating: " and free.json_schema is None
    constrained = judge_request(template, row, doc, constrained=True)
    assert constrained.response_prefix == "" and constrained.json_schema == RATING_SCHEMA


def test_judged_row_scales_the_rating_and_records_why_there_is_none():
    row = {"task_id": "t1", "doc_id": "d1"}
    out, reason = judged_row(row, GenerationResult(key="t1", text="4"), "m", "judge-v1")
    assert reason is None and out["rating"] == 4 and out["judge_score"] == pytest.approx(0.75)
    out, reason = judged_row(row, GenerationResult(key="t1", text="It is well written."), "m", "judge-v1")
    assert out is None and "no rating" in reason and "It is well written." in reason
    out, reason = judged_row(row, GenerationResult.failed("t1", "prompt too long"), "m", "judge-v1")
    assert out is None and reason == "prompt too long"
