"""Evaluation's pure parts: the QuALITY loader, answer parsing, option scoring arithmetic, intervals, the
scaling-curve fit, and the subset of the synthetic corpus a budget trains on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_entigraph.eval.curve import CurveFit, fit, terms_for
from ray_entigraph.eval.evaluate import pick
from ray_entigraph.eval.generative import parse_answer, question_block
from ray_entigraph.eval.quality import QuestionsError, load_questions, parse_records, resolve_questions_url, strip_html
from ray_entigraph.eval.report import bootstrap_ci, summarize
from ray_entigraph.train.launch import synthetic_subset

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
    assert first.qid == "20001_ABC/0" and first.article_id == "20001" and first.gold == 1 and first.difficult and first.options[1] == "Mars"
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
    q = parse_records([json.dumps(PUBLIC_SAMPLE[0])])[0]
    assert question_block(q).endswith("Question: Where did night fall?\nA. Venus\nB. Mars\nC. Earth\nD. The Moon")


def test_continuation_logprobs_picks_the_overwhelmingly_likely_option():
    torch = pytest.importorskip("torch")
    from ray_entigraph.eval.scoring import continuation_logprobs

    vocab = 10
    ids = torch.tensor([[1, 2, 5, 6], [1, 2, 7, 8]])
    logits = torch.zeros(2, 4, vocab)
    logits[0, 1, 5] = logits[0, 2, 6] = 20.0  # row 0's continuation [5, 6] is made overwhelmingly likely
    sums, counts = continuation_logprobs(logits, ids, [(2, 4), (2, 4)])
    assert counts == [2, 2]
    assert sums[0] > -1e-6 and sums[1] < -4.0  # log(1/10) per token for the other row
    assert pick([s / c for s, c in zip(sums, counts)]) == 0
    # invariant to the order of the options: swap the rows, the same option wins
    sums2, _ = continuation_logprobs(logits.flip(0), ids.flip(0), [(2, 4), (2, 4)])
    assert sums2 == sums[::-1] and pick(sums2) == 1


def test_bootstrap_interval_and_paired_change():
    lo, hi = bootstrap_ci([1.0] * 30 + [0.0] * 70)
    assert lo < 0.3 < hi and hi - lo < 0.25
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    results = [
        {"label": "base", "model": "m", "protocol": "options", "wall_s": 1,
         "questions": [{"qid": str(i), "correct": i < 5, "pick": 0} for i in range(30)], "accuracy": 5 / 30},
        {"label": "trained", "model": "t", "protocol": "options", "wall_s": 1,
         "questions": [{"qid": str(i), "correct": i < 20, "pick": 0} for i in range(30)], "accuracy": 20 / 30},
    ]
    rows = summarize(results, "base")
    assert "delta_vs_base" not in rows[0]
    assert rows[1]["delta_vs_base"] == pytest.approx(0.5)
    assert rows[1]["delta_vs_base_ci95"][0] > 0.2  # every changed question changed in the same direction


def test_curve_fit_recovers_known_parameters():
    one = CurveFit(60.0, ((20.0, 0.9),), 0.0)
    x = np.array([0, 5, 10, 20, 40, 80, 160.0])
    got = fit(x, one(x), 1)
    assert got.a == pytest.approx(60.0, rel=1e-3) and got.terms[0][0] == pytest.approx(20.0, rel=1e-3)
    assert got.terms[0][1] == pytest.approx(0.9, rel=1e-4) and got.rmse < 1e-3
    # two of the paper's terms (x in millions of tokens), sampled densely enough to identify both rates
    two = CurveFit(64.5456, ((13.8352, 0.9989), (8.4705, 0.8961)), 0.0)
    x = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096.0])
    got = fit(x, two(x), 2)
    assert got.a == pytest.approx(64.5456, rel=1e-3)
    for (b, r), (b0, r0) in zip(got.terms, two.terms):
        assert b == pytest.approx(b0, rel=1e-2) and r == pytest.approx(r0, rel=1e-3)
    # noisy points: the fit stays close to the truth
    rng = np.random.default_rng(0)
    x = np.linspace(0, 160, 12)
    noisy = fit(x, one(x) + rng.normal(0, 0.2, x.shape), 1)
    assert abs(noisy.a - 60.0) < 1.0 and abs(noisy.terms[0][1] - 0.9) < 0.02
    with pytest.raises(ValueError, match="cannot determine"):
        fit([0, 1], [1, 2], 1)
    assert [terms_for(n) for n in (2, 3, 4, 5, 8, 20)] == [0, 0, 1, 1, 3, 3]


def test_synthetic_subsets():  # the sweep's budgets are tested in tests/unit/workflows/test_sweep.py
    assert synthetic_subset(10, None, 64, 0) == list(range(10))
    assert synthetic_subset(10, 10 * 64, 64, 0) == list(range(10))
    sub = synthetic_subset(100, 640, 64, 0)
    assert len(sub) == 10 and sub == sorted(set(sub)) and sub == synthetic_subset(100, 640, 64, 0)
    assert len(synthetic_subset(100, 650, 64, 0)) == 11 and len(synthetic_subset(100, 1, 64, 0)) == 1
