"""Scoring a causal LM: multiple-choice options by log-likelihood, and perplexity. The one home of torch in
evaluation; batched, any device. The prompt texts are built by pure functions that tests can read. Models
are loaded by `engines.hf.load_model`."""

from __future__ import annotations

from ray_entigraph.engines.hf import cache_argument
from ray_entigraph.eval.quality import Question


def option_prompt(q: Question, open_book: bool = False) -> tuple[str, list[str]]:
    """(context, continuations): the question after the article's title/author/year (and, open-book, after
    the article itself); each option is scored as a continuation of "Answer:"."""
    context = (f"{q.article}\n\n" if open_book else "") + f"{q.header()}\nQuestion: {q.question}\nAnswer:"
    return context, [" " + o for o in q.options]


def continuation_logprobs(logits, input_ids, spans):
    """Sum and count of log-probabilities of tokens input_ids[b, s:e] for each (s, e) in spans, given the
    model's logits for the same batch (the token at t is predicted at t-1). Returns (sums, counts)."""
    import torch  # lazy: torch loads in the evaluation task only

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    sums, counts = [], []
    for b, (s, e) in enumerate(spans):
        targets = input_ids[b, s:e]
        picked = logprobs[b, s - 1:e - 1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        sums.append(float(picked.sum()))
        counts.append(int(e - s))
    return sums, counts


def _forward_batches(model, sequences: list[list[int]], spans: list[tuple[int, int]], batch_size: int, device: str,
                     pad_id: int) -> list[tuple[float, int]]:
    """Run padded batches (sorted by length to waste little padding) and return (sum, count) per sequence."""
    import torch  # lazy: torch loads in the evaluation task only

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: list[tuple[float, int] | None] = [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, :len(sequences[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        sums, counts = continuation_logprobs(logits, ids.to(device), [spans[i] for i in idx])
        for row, i in enumerate(idx):
            out[i] = (sums[row], counts[row])
    return out  # type: ignore[return-value]


def score_options(model, tokenizer, questions: list[Question], *, open_book: bool, batch_size: int, device: str,
                  max_len: int) -> list[list[float]]:
    """Mean per-token log-likelihood of every option's text after its question, per question.

    The question's context (with the whole article, open-book) is run once and its key/value cache is
    shared by the options, which are then scored in one batch on top of it: the options of a question cost
    one context pass, not one each. Each option is scored on its own, so the scores do not depend on the
    order of the options. `batch_size` bounds the options scored at once."""
    import torch  # lazy: torch loads in the evaluation task only

    scores: list[list[float]] = []
    for q in questions:
        context, continuations = option_prompt(q, open_book)
        opts = [tokenizer(c, add_special_tokens=False)["input_ids"][: max_len // 2] or [tokenizer.eos_token_id]
                for c in continuations]
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        ctx = ctx[-(max_len - max(len(o) for o in opts)):]  # a too-long context loses its start, never the question
        with torch.inference_mode():
            first = model(input_ids=torch.tensor([ctx], device=device), use_cache=True)
            first_logprobs = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
            cache = getattr(first, "cache", None) or first.past_key_values
            row: list[float] = []
            for start in range(0, len(opts), batch_size):
                chunk = opts[start:start + batch_size]
                row += _options_on_prefix(model, cache, first_logprobs, chunk, len(ctx), device,
                                          last=start + batch_size >= len(opts))
        scores.append(row)
    return scores


def _options_on_prefix(model, cache, first_logprobs, opts: list[list[int]], ctx_len: int, device: str,
                       last: bool) -> list[float]:
    """Mean log-probability of each option given a cached context (the cache is copied unless `last`)."""
    import copy

    import torch  # lazy: torch loads in the evaluation task only

    width = max(len(o) for o in opts)
    ids = torch.zeros((len(opts), width), dtype=torch.long)
    mask = torch.zeros((len(opts), ctx_len + width), dtype=torch.long)
    mask[:, :ctx_len] = 1
    for i, o in enumerate(opts):
        ids[i, :len(o)] = torch.tensor(o)
        mask[i, ctx_len:ctx_len + len(o)] = 1
    shared = cache if last else copy.deepcopy(cache)
    shared.batch_repeat_interleave(len(opts))
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                **{cache_argument(model): shared})
    logprobs = torch.log_softmax(out.logits.float(), dim=-1)
    result = []
    for i, o in enumerate(opts):
        total = float(first_logprobs[o[0]])
        if len(o) > 1:
            targets = torch.tensor(o[1:], device=logprobs.device)
            total += float(logprobs[i, : len(o) - 1].gather(-1, targets.unsqueeze(-1)).sum())
        result.append(total / len(o))
    return result


def perplexity(model, tokenizer, texts: list[str], *, window: int, batch_size: int, device: str) -> dict:
    """Token-level perplexity over texts cut into non-overlapping windows of `window` tokens."""
    import math

    sequences, spans = [], []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), window):
            piece = ids[s:s + window]
            if len(piece) >= 2:
                sequences.append(piece)
                spans.append((1, len(piece)))
    if not sequences:
        return {"perplexity": None, "mean_nll": None, "tokens": 0, "texts": len(texts)}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results = _forward_batches(model, sequences, spans, batch_size, device, pad)
    nll = -sum(t for t, _ in results)
    tokens = sum(c for _, c in results)
    return {"perplexity": math.exp(nll / tokens), "mean_nll": nll / tokens, "tokens": tokens, "texts": len(texts)}
