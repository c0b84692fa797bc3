"""The paper's generative protocol: few-shot chain-of-thought through any engine, answer letter parsed from
the text. Prompt building and answer parsing are pure; generation goes through the engine seam."""

from __future__ import annotations

import re

from ray_entigraph.engines.base import GenerationRequest, SamplingParams
from ray_entigraph.eval.quality import Question
from ray_entigraph.prompts import load_prompt_set, render_chat

LETTERS = "ABCDEFGHIJ"
# "answer" in any case; the letter in capitals, or in lower case only when a bracket, full stop, colon or
# the line's end follows it: "the answer is a lighthouse" names no option, "**Answer:** c" names C
_ANSWER = re.compile(r"answer\s*(?:is|:|=)?\s*(?:option\s*)?[\(\[\*]*\s*"
                     r"(?-i:([A-J])\b(?![a-z])|([a-j])(?=[\)\]\.:\*]|[ \t]*$))", re.IGNORECASE | re.MULTILINE)
_LEADING = re.compile(r"^\s*[\(\[\*]*([A-J])[\)\]\.:\*]", re.MULTILINE)


def question_block(q: Question) -> str:
    lines = [q.header(), f"Question: {q.question}"]
    lines += [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(q.options)]
    return "\n".join(line for line in lines if line)


def parse_answer(text: str, num_options: int) -> int | None:
    """0-based option index from a chain-of-thought answer: the last "Answer: X" (or "the answer is (X)"),
    else a letter that starts the last line; None when the text names no valid letter."""
    valid = LETTERS[:num_options]
    found = [letter for m in _ANSWER.finditer(text) if (letter := (m.group(1) or m.group(2)).upper()) in valid]
    if found:
        return valid.index(found[-1])
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines:
        m = _LEADING.match(lines[-1])
        if m and m.group(1) in valid:
            return valid.index(m.group(1))
    return None


def generation_requests(questions: list[Question], few_shot: int, max_new_tokens: int):
    template = load_prompt_set("eval-cot-v2").qa
    template = template.model_copy(update={"examples": template.examples[:few_shot]})
    # greedy with no penalty: a penalty would count the examples' answer letters and favour the letters they lack
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    return [GenerationRequest(key=q.qid, messages=render_chat(template, {"question_block": question_block(q)}),
                              sampling=sampling, prefix_key=q.article_id) for q in questions]
