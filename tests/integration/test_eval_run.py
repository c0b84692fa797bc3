"""Evaluation on real models (the bundled SmolLM2 and a tiny random Llama), `run` resumed after a kill between
steps, and `sweep` end to end on a tiny configuration."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_entigraph.eval.quality import Question, load_questions

from .test_pipeline import tiny_config

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = str(ROOT / "tests" / "fixtures" / "builtin-defaults.yaml")  # the CLI's own default is the demo preset
SMALL = ["input.max_documents=2", "synthesis.sampling.max_new_tokens=40", "train.block_len=64",
         "train.global_batch_size=2", "train.micro_batch_size=1", "train.num_workers=1", "train.epochs=1",
         "train.lr=1e-3", "train.checkpoint_every=2", "eval.perplexity_texts=4", "eval.perplexity_window=128",
         "eval.max_questions=6"]


def _question(options, gold, article="", title="Notes"):
    return Question(qid="t/0", article_id="t", title=title, author="", year="", question="What is the password?",
                    options=tuple(options), gold=gold, difficult=False, article=article)


@pytest.fixture(scope="module")
def bundled(bundled_model_dir):
    from ray_entigraph.engines.hf import load_model

    return load_model(bundled_model_dir, dtype="float32", device="cpu")


def test_option_scoring_picks_the_planted_answer_in_any_order(bundled):
    """A constructed case: the document states the answer five times, so the real model finds it
    overwhelmingly likely; every order of the options picks the same option text, with the same scores."""
    from ray_entigraph.eval.evaluate import pick
    from ray_entigraph.eval.scoring import score_options

    model, tok, device = bundled
    article = " ".join(["The password is Zorblax."] * 5)
    options = ["Quintera", "Zorblax", "Mellifont", "Baskerin"]
    reference = None
    for perm in itertools.permutations(range(4)):
        opts = [options[i] for i in perm]
        q = _question(opts, opts.index("Zorblax"), article=article)
        scores = score_options(model, tok, [q], open_book=True, batch_size=3, device=device, max_len=512)[0]
        assert opts[pick(scores)] == "Zorblax"
        by_text = dict(zip(opts, scores))
        if reference is None:
            reference = by_text
            assert by_text["Zorblax"] > max(v for k, v in by_text.items() if k != "Zorblax") + 1.0  # by a wide margin
        for text in options:
            assert by_text[text] == pytest.approx(reference[text], abs=1e-3)


def test_shared_context_scoring_equals_scoring_whole_sequences(bundled):
    """Options scored on the question's cached context give the same log-likelihoods as scoring each
    (context + option) sequence from scratch."""
    from ray_entigraph.eval.scoring import _forward_batches, option_prompt, score_options

    model, tok, device = bundled
    questions = load_questions("builtin:demo")[:2]
    shared = score_options(model, tok, questions, open_book=True, batch_size=3, device=device, max_len=2048)
    sequences, spans = [], []
    for q in questions:
        context, continuations = option_prompt(q, open_book=True)
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        for cont in continuations:
            opt = tok(cont, add_special_tokens=False)["input_ids"]
            sequences.append(ctx + opt)
            spans.append((len(ctx), len(ctx) + len(opt)))
    whole = _forward_batches(model, sequences, spans, 4, device, tok.pad_token_id)
    flat = [score for row in shared for score in row]
    assert flat == pytest.approx([total / count for total, count in whole], abs=1e-3)


def test_eval_bundled_model_reports_and_plots(ray_local, tmp_path):
    """`eval` on the bundled model over the demo questions: closed-book and open-book accuracy, both
    perplexities, report.json/.md and PNG plots a person can open."""
    from PIL import Image

    from ray_entigraph.config import load_config
    from ray_entigraph.eval.launch import run_eval

    config = load_config(None, [f"output_dir={tmp_path}", "eval.max_questions=12", "eval.perplexity_texts=4",
                                "eval.perplexity_window=256"])
    summary = run_eval(config)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    (base,) = report["summary"]
    assert base["label"] == "base" and base["n"] == 12 and 0.0 <= base["open_book_accuracy"] <= 1.0
    assert 0.0 <= base["accuracy"] <= 1.0 and base["accuracy_ci95"][0] <= base["accuracy"] <= base["accuracy_ci95"][1]
    assert 1.0 < base["perplexity_knowledge"] < 1000 and 1.0 < base["perplexity_forgetting"] < 1000
    per_q = report["models"][0]["questions"]
    assert len(per_q) == 12 and all(len(q["scores"]) == 4 and q["pick"] == max(range(4), key=q["scores"].__getitem__)
                                    for q in per_q)
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "| base |" in md and "## Per question" in md and "kestavel-003/1" in md
    for url in summary.plots.values():
        with Image.open(url) as img:
            assert img.format == "PNG" and img.size[0] > 300


def test_generative_protocol_runs_through_the_engine(ray_local, tiny_model_dir, tmp_path):
    """The chain-of-thought protocol on a tiny random model whose tokenizer has no chat template (as a base
    model's has none): the few-shot prompt is rendered as plain text, the text is kept, unparsable answers count
    as wrong and are visible as unparsed."""
    import shutil

    from ray_entigraph.eval.launch import run_eval

    base = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    tok_config = json.loads((base / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(tok_config))
    from transformers import AutoTokenizer

    assert not AutoTokenizer.from_pretrained(base).chat_template
    config = tiny_config(str(base), "builtin:demo", tmp_path, "eval.protocol=generative", "eval.max_questions=3",
                         "eval.max_new_tokens=16", "eval.perplexity_texts=0", "eval.open_book_reference=false")
    summary = run_eval(config)
    (row,) = summary.rows
    assert row["n"] == 3 and row["perplexity_knowledge"] is None
    model = json.loads((tmp_path / "eval" / "report.json").read_text())["models"][0]
    for q in model["questions"]:  # a random model may stop at once: the (empty) text is still recorded
        assert isinstance(q["output"], str) and not q["output"].startswith("<error")
        assert q["correct"] == (q["pick"] == q["gold"]) and q["pick"] in (-1, 0, 1, 2, 3)
    assert row["unparsed"] == sum(q["pick"] == -1 for q in model["questions"])


def _run_cli(out, model_dir, *extra):
    return [sys.executable, "-m", "ray_entigraph", "run", "--config", DEFAULTS,
            f"output_dir={out}", f"model.name={model_dir}",
            "model.dtype=float32", "ingest.max_document_tokens=256", "extract.max_attempts=1",
            "extract.sampling.max_new_tokens=12", "plan.max_pairs_per_doc=3", "plan.max_triplets_per_doc=1",
            "plan.tasks_per_group=2", "resources.batch_size=2", "engine.max_batch_size=4", *SMALL, *extra]


def test_run_resumes_after_a_kill_between_steps(tiny_model_dir, tmp_path):
    """SIGKILL `run` once synthesis has finished (while training starts), run it again: synthesis is skipped
    (its shards untouched), training and evaluation complete, and the output directory holds the audit
    trail (config, step markers, metrics, model, eval report)."""
    out = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(_run_cli(out, tiny_model_dir), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "_steps" / "synthesize.json"
    try:
        deadline = time.time() + 500
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "run ended or stalled before synthesis finished"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (out / "_steps" / "eval.json").exists()
    shards = {p: p.stat().st_mtime_ns for p in (out / "synthetic").glob("*/p=*/*.parquet")}
    assert shards
    # the re-run adds the positive control (run's own setting: synthesis stays done)
    control = "run.raw_cpt_control_steps=2"
    rerun = subprocess.run(_run_cli(out, tiny_model_dir, control), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=800)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "[run] synthesize: done earlier" in rerun.stdout and "[run] train: starting" in rerun.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "synthetic").glob("*/p=*/*.parquet")} == shards
    for rel in ("config.yaml", "_steps/train.json", "_steps/eval.json", "train/metrics.jsonl", "train/metrics.png",
                "train/model/model.safetensors", "eval/report.json", "eval/report.md", "eval/accuracy.png"):
        assert (out / rel).exists(), rel
    labels = [r["label"] for r in json.loads((out / "eval" / "report.json").read_text())["summary"]]
    assert labels == ["base", "trained", "raw-cpt"]
    control_metrics = (out / "control" / "raw-cpt-2steps" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(control_metrics[-1])["step"] == 2
    assert "positive control " in rerun.stdout and "trained " in rerun.stdout and "the base model" in rerun.stdout
    # (a run on a finished folder skipping every step is the step-marker tests' subject: test_run_steps.py)


def test_sweep_trains_each_budget_and_baseline_and_fits_the_curve(ray_local, tiny_model_dir, tmp_path):
    from ray_entigraph.workflows import sweep

    out = tmp_path / "sweep"
    # the Rephrase baseline's wiring is in tests/unit/workflows/test_sweep.py, its synthesis in test_pipeline.py
    config = tiny_config(tiny_model_dir, "builtin:demo", out, *SMALL, "sweep.num_budgets=3", "sweep.baselines=[raw]",
                         "sweep.raw_cpt_steps=3")
    summary = sweep(config)
    arms = [p["arm"] for p in summary.points]
    assert arms[0] == "base" and "raw-cpt" in arms and "rephrase" not in arms
    assert "positive control" in summary.lines()[-4]
    budgets = [p for p in summary.points if p["series"] == "entigraph"]
    assert len(budgets) == 3
    tokens = [p["synthetic_tokens"] for p in budgets]
    assert tokens == sorted(tokens) and tokens[0] < tokens[-1]
    for p in budgets:  # each arm trained on the subset its budget names
        mixture = json.loads((out / "sweep" / p["arm"] / "mixture.json").read_text())
        assert mixture["synthetic_tokens_used"] == p["synthetic_tokens"]
    assert summary.fit is not None and len(summary.fit["terms"]) == 1  # 4 curve points: base + 3 budgets
    assert isinstance(summary.fit["rises"], bool) and any(line.startswith("fit ") for line in summary.lines())
    assert (out / "sweep" / "accuracy_vs_tokens.png").stat().st_size > 5000
    raw = json.loads((out / "sweep" / "raw-cpt-3steps" / "metrics.jsonl").read_text().splitlines()[-1])
    assert raw["step"] == 3  # Raw CPT trained its own step budget
    assert json.loads((out / "sweep" / "sweep.json").read_text())["points"] == summary.points
