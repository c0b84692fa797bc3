"""Evaluating one model (runs inside a Ray task, on whatever node has the resources it asks for):
closed-book accuracy by the configured protocol, the open-book reference, and both perplexities."""

from __future__ import annotations

import time

from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.engines.hf import load_model
from ray_entigraph.engines.transformers_engine import TransformersEngine
from ray_entigraph.eval.generative import generation_requests, parse_answer
from ray_entigraph.eval.quality import Question
from ray_entigraph.eval.scoring import perplexity, score_options


def pick(scores: list[float]) -> int:
    """The option with the highest score (the first one on an exact tie)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def evaluate_model(config_json: str, label: str, path: str, questions: list[Question], knowledge_texts: list[str],
                   forgetting_texts: list[str], open_book: bool) -> dict:
    config = EntiGraphConfig.model_validate_json(config_json)
    ec = config.eval
    started = time.time()
    model, tokenizer, device = load_model(path, dtype=ec.dtype, device=ec.device, cache_dir=config.model.cache_dir,
                                          torch_threads=ec.torch_threads)
    max_len = min(getattr(model.config, "max_position_embeddings", 2048) or 2048, 4096)
    result: dict = {"label": label, "model": path, "protocol": ec.protocol, "device": device, "questions": []}
    if questions:
        if ec.protocol == "options":
            scores = score_options(model, tokenizer, questions, open_book=False, batch_size=ec.batch_size,
                                   device=device, max_len=max_len)
            picks = [pick(s) for s in scores]
            raw = [None] * len(questions)
        else:
            picks, raw, scores = _generative(config, model, tokenizer, device, questions)
        result["questions"] = [
            {"qid": q.qid, "article_id": q.article_id, "pick": p, "gold": q.gold, "correct": p == q.gold,
             "difficult": q.difficult, "scores": s, "output": r}
            for q, p, s, r in zip(questions, picks, scores, raw)
        ]
        result["accuracy"] = sum(r["correct"] for r in result["questions"]) / len(questions)
        if open_book:
            ob = score_options(model, tokenizer, questions, open_book=True, batch_size=max(1, ec.batch_size // 4),
                               device=device, max_len=max_len)
            result["open_book_accuracy"] = sum(pick(s) == q.gold for s, q in zip(ob, questions)) / len(questions)
    window = min(ec.perplexity_window, max_len)
    result["perplexity_knowledge"] = perplexity(model, tokenizer, knowledge_texts, window=window,
                                                batch_size=max(1, ec.batch_size // 4), device=device)
    result["perplexity_forgetting"] = perplexity(model, tokenizer, forgetting_texts, window=window,
                                                 batch_size=max(1, ec.batch_size // 4), device=device)
    result["wall_s"] = round(time.time() - started, 2)
    return result


def _generative(config: EntiGraphConfig, model, tokenizer, device: str, questions: list[Question]):
    """Few-shot chain of thought through the transformers engine holding the already-loaded model."""
    engine = TransformersEngine.from_loaded(model, tokenizer, device=device, max_batch_size=config.eval.batch_size,
                                            max_model_len=config.model.max_model_len)
    requests = generation_requests(questions, config.eval.few_shot, config.eval.max_new_tokens)
    results = {r.key: r for r in engine.generate(requests)}
    texts = [results[q.qid].text if not results[q.qid].error else f"<error: {results[q.qid].error}>" for q in questions]
    picks = [parse_answer(t, len(q.options)) for t, q in zip(texts, questions)]
    picks = [-1 if p is None else p for p in picks]  # unparsed counts as wrong, and is visible in the report
    return picks, texts, [[] for _ in questions]
