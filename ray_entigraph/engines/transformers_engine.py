"""Hugging Face transformers engine: the laptop default, any device, bf16 or fp32.

Inference on a Hugging Face causal LM loaded through `engines.hf`. Requests are grouped by sampling
parameters and by document (`prefix_key`) and run in padded batches of `max_batch_size`; a batch that fails
is retried row by row so one bad request cannot fail its neighbours.

Document-prefix reuse: every relation request of a document starts with the same long prompt (system turn
and the whole document). With `prefix_reuse`, the engine finds the token prefix a document's requests
share, runs it through the model once, and generates every request on top of a copy of that key/value
cache. Each request's own tokens are padded *between* the shared prefix and themselves, with the padding
masked out, so positions stay exact. A request reports the prefix tokens it did not compute as
`num_cached_tokens` (the first request of a document computes it).
"""

from __future__ import annotations

import json
import logging

from ray_entigraph.config import EngineConfig, EntiGraphConfig, ModelConfig
from ray_entigraph.engines.base import GenerationRequest, GenerationResult, SamplingParams
from ray_entigraph.engines.bundled import resolve_model_path
from ray_entigraph.engines.hf import (
    cache_argument,
    has_grammar_library,
    json_schema_compiler,
    load_causal_lm,
    load_tokenizer,
    output_penalties,
    pick_device,
    quiet_progress_bars,
    render_prompt,
)

logger = logging.getLogger(__name__)


class TransformersEngine:
    """Built from `config.model` (name, dtype, max_model_len, cache_dir) and `config.engine` (device, batch
    size, threads, prefix reuse); it reads its settings from those sections, which hold their defaults."""

    def __init__(self, model: "ModelConfig", engine: "EngineConfig"):
        import torch  # lazy: torch loads only when the engine is built

        quiet_progress_bars()
        if engine.torch_threads:
            torch.set_num_threads(engine.torch_threads)
        self.model_config, self.engine_config = model, engine
        self.model_name = model.name
        self.device = pick_device(engine.device)
        path = resolve_model_path(model.name, model.cache_dir)
        self.tokenizer = _for_batches(load_tokenizer(path))
        self.model = load_causal_lm(path, dtype=model.dtype, device=self.device)
        self._torch = torch
        self._init_grammar()

    def _init_grammar(self) -> None:
        self.supports_json_schema = self.engine_config.structured_extraction and has_grammar_library()
        self._grammar = (json_schema_compiler(self.tokenizer, self.model.config.vocab_size)
                         if self.supports_json_schema else None)

    @classmethod
    def from_config(cls, config: "EntiGraphConfig") -> "TransformersEngine":
        return cls(config.model, config.engine)

    @classmethod
    def supports_json_schema_for(cls, config: "EntiGraphConfig") -> bool:
        # xgrammar masks the logits of every token the schema does not allow
        return config.engine.structured_extraction and has_grammar_library()

    @classmethod
    def from_loaded(cls, model, tokenizer, *, device: str, max_batch_size: int,
                    max_model_len: int) -> "TransformersEngine":
        """An engine around a model already in memory (evaluation scores and generates with one copy); the
        settings not given are the config's defaults."""
        import torch  # lazy: torch loads only when the engine is built

        self = cls.__new__(cls)
        self.model_name = getattr(model, "name_or_path", "loaded")
        self.model_config = ModelConfig(name=self.model_name, max_model_len=max_model_len)
        self.engine_config = EngineConfig(device=device, max_batch_size=max_batch_size)
        self.device = device
        self.tokenizer = _for_batches(tokenizer)
        self.model = model
        self._torch = torch
        self._init_grammar()
        return self

    # -- protocol ---------------------------------------------------------------------------------------
    supports_json_schema = False  # set per engine: True where xgrammar is installed

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: dict[str, GenerationResult] = {}
        # Group by sampling parameters, then by document, keeping the caller's order inside each group.
        for idx in group_requests(requests):
            group = [requests[i] for i in idx]
            for res in self._generate_group(group):
                results[res.key] = res
        return [results[r.key] for r in requests]

    # -- internals --------------------------------------------------------------------------------------
    def _render(self, request: GenerationRequest) -> str:
        prompt = render_prompt(self.tokenizer, request.messages)
        return prompt + request.response_prefix

    def _generate_group(self, group: list[GenerationRequest]) -> list[GenerationResult]:
        """One sampling setting and (when the requests have prefix keys) one document."""
        encoded = [self.tokenizer(self._render(r), add_special_tokens=False)["input_ids"] for r in group]
        out: list[GenerationResult] = []
        runnable = []
        max_model_len = self.model_config.max_model_len
        for req, ids in zip(group, encoded):
            if len(ids) + req.sampling.max_new_tokens > max_model_len:
                out.append(GenerationResult.failed(
                    req.key,
                    f"prompt too long: {len(ids)} prompt + {req.sampling.max_new_tokens} new tokens > "
                    f"model.max_model_len {max_model_len}",
                    num_prompt_tokens=len(ids),
                ))
            else:
                runnable.append((req, ids))
        prefix_len = 0
        ec = self.engine_config
        if ec.prefix_reuse and len(runnable) > 1 and group[0].prefix_key is not None:
            prefix_len = shared_prefix_length([ids for _, ids in runnable])
            if prefix_len < ec.min_prefix_tokens:
                prefix_len = 0
        prefix_cache = None
        if prefix_len:
            try:
                prefix_cache = self._prefill(runnable[0][1][:prefix_len])
            except Exception as exc:  # noqa: BLE001 - fall back to plain generation, never fail the group
                logger.warning("prefix prefill failed (%s); generating without prefix reuse", exc)
                prefix_len = 0
        for start in range(0, len(runnable), ec.max_batch_size):
            batch = runnable[start : start + ec.max_batch_size]
            results = self._generate_batch_isolated(batch, prefix_cache, prefix_len)
            if prefix_len:
                for j, res in enumerate(results):
                    # the prefix is computed once per group (by its first request), read from cache by all others
                    res.num_cached_tokens = 0 if start + j == 0 or res.error else prefix_len
            out.extend(results)
        return out

    def _prefill(self, prefix_ids: list[int]):
        torch = self._torch
        with torch.inference_mode():
            first = self.model(input_ids=torch.tensor([prefix_ids], device=self.device), use_cache=True)
        return getattr(first, "cache", None) or first.past_key_values

    def _generate_batch_isolated(self, batch, prefix_cache, prefix_len: int) -> list[GenerationResult]:
        try:
            return self._generate_batch(batch, prefix_cache, prefix_len)
        except Exception as exc:  # noqa: BLE001 - isolate the failing row, record the reason
            if len(batch) == 1:
                logger.warning("generation failed for %s: %s", batch[0][0].key, exc)
                return [GenerationResult.failed(batch[0][0].key, f"{type(exc).__name__}: {exc}")]
            return [res for item in batch for res in self._generate_batch_isolated([item], prefix_cache, prefix_len)]

    def _generate_batch(self, batch: list[tuple[GenerationRequest, list[int]]], prefix_cache,
                        prefix_len: int) -> list[GenerationResult]:
        import copy

        torch = self._torch
        sampling = batch[0][0].sampling
        pad = self.tokenizer.pad_token_id
        input_ids, attention_mask = pad_batch([ids for _, ids in batch], prefix_len, pad)
        extra = {}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            extra[cache_argument(self.model)] = cache
        # transformers samples from the global RNG: seed it from the batch's own request seeds so
        # the result depends on the requests, never on worker order or time.
        torch.manual_seed(sum(req.seed for req, _ in batch) % (2**63))
        do_sample = sampling.temperature > 0
        # penalties over the generated tokens only: the document in the prompt is what the answer copies
        processors = output_penalties(len(input_ids[0]), sampling.repetition_penalty, sampling.frequency_penalty,
                                      sampling.presence_penalty)
        schema = batch[0][0].json_schema  # one per batch: requests are grouped by it
        if schema is not None and self._grammar is not None:
            processors.append(self._grammar(json.dumps(schema, sort_keys=True)))
        with torch.inference_mode():
            generated = self.model.generate(
                input_ids=torch.tensor(input_ids, device=self.device),
                attention_mask=torch.tensor(attention_mask, device=self.device),
                max_new_tokens=sampling.max_new_tokens,
                do_sample=do_sample,
                temperature=sampling.temperature if do_sample else None,
                top_p=sampling.top_p if do_sample else None,
                top_k=None,
                logits_processor=processors,
                pad_token_id=pad,
                eos_token_id=self.tokenizer.eos_token_id,
                **extra,
            )
        new_tokens = generated[:, len(input_ids[0]) :].tolist()
        eos = self.tokenizer.eos_token_id
        out = []
        for (req, ids), toks in zip(batch, new_tokens):
            stopped = eos in toks
            if stopped:
                toks = toks[: toks.index(eos)]
            toks = [t for t in toks if t != pad] if pad != eos else toks
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            # after a response prefix the leading space is part of the continuation ("Guild" + " is")
            text = text.rstrip() if req.response_prefix else text.strip()
            out.append(GenerationResult(
                key=req.key,
                text=text,
                num_prompt_tokens=len(ids),
                num_generated_tokens=len(toks) + (1 if stopped else 0),
                finish_reason="stop" if stopped else "length",
            ))
        return out


def _for_batches(tokenizer):
    """Left padding, and a pad token (the EOS when the model has none): batches end where generation starts."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _schema_key(req: GenerationRequest) -> str:
    return json.dumps(req.json_schema, sort_keys=True) if req.json_schema is not None else ""


def _sampling_sort_key(s: SamplingParams) -> tuple:
    return (s.temperature, s.top_p, s.max_new_tokens, s.repetition_penalty, s.frequency_penalty, s.presence_penalty)


def group_requests(requests: list[GenerationRequest]) -> list[list[int]]:
    """Indices of `requests` grouped by sampling parameters, then by prefix key (document), each group in
    the caller's order. Requests without a prefix key form one group per sampling setting."""
    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault((_sampling_sort_key(req.sampling), _schema_key(req), req.prefix_key or ""), []).append(i)
    return list(groups.values())


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest common prefix of token sequences, leaving every sequence at least one token of
    its own (generation needs a last token to run on top of the cached prefix)."""
    if not sequences:
        return 0
    first = sequences[0]
    n = min(len(s) for s in sequences) - 1
    for seq in sequences[1:]:
        i = 0
        while i < n and seq[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def pad_batch(sequences: list[list[int]], prefix_len: int, pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Pad sequences to one width. Without a shared prefix: left padding. With one (its cache computed
    already): the padding goes between the prefix and each sequence's own tokens, so the prefix sits at the
    same positions in every row; padded slots are masked out and positions follow the mask."""
    width = max(len(s) for s in sequences)
    ids, mask = [], []
    for seq in sequences:
        gap = width - len(seq)
        head, tail = seq[:prefix_len], seq[prefix_len:]
        ids.append(head + [pad_id] * gap + tail)
        mask.append([1] * len(head) + [0] * gap + [1] * len(tail))
    return ids, mask

