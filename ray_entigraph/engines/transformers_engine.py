"""Hugging Face transformers engine: the laptop default, any device, bf16 or fp32.

The one home of `transformers.AutoModelForCausalLM` for inference. Requests are grouped by sampling
parameters and run in padded batches of `max_batch_size`; a batch that fails is retried row by row so one
bad request cannot fail its neighbours.
"""

from __future__ import annotations

import logging
from itertools import groupby

from ray_entigraph.engines.base import GenerationRequest, GenerationResult, SamplingParams
from ray_entigraph.engines.bundled import resolve_model_path

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TransformersEngine:
    def __init__(
        self,
        model_name: str,
        *,
        dtype: str = "bfloat16",
        device: str = "auto",
        max_batch_size: int = 8,
        max_model_len: int = 2048,
        torch_threads: int | None = None,
        cache_dir: str | None = None,
    ):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()  # weight-loading bars flood actor logs

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_name = model_name
        self.device = pick_device(device)
        self.max_batch_size = max_batch_size
        self.max_model_len = max_model_len
        path = resolve_model_path(model_name, cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = getattr(torch, _DTYPES[dtype]) if dtype in _DTYPES else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()
        self._torch = torch

    @classmethod
    def from_loaded(cls, model, tokenizer, *, device: str, max_batch_size: int, max_model_len: int) -> "TransformersEngine":
        """An engine around a model already in memory (evaluation scores and generates with one copy)."""
        import torch

        self = cls.__new__(cls)
        self.model_name = getattr(model, "name_or_path", "loaded")
        self.device, self.max_batch_size, self.max_model_len = device, max_batch_size, max_model_len
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model
        self._torch = torch
        return self

    # -- protocol ---------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: dict[str, GenerationResult] = {}
        # Keep the caller's order inside a sampling group: a document's requests stay adjacent.
        ordered = sorted(range(len(requests)), key=lambda i: _sampling_sort_key(requests[i].sampling))
        for _, group in groupby(ordered, key=lambda i: _sampling_sort_key(requests[i].sampling)):
            idx = list(group)
            for start in range(0, len(idx), self.max_batch_size):
                batch = [requests[i] for i in idx[start : start + self.max_batch_size]]
                for res in self._generate_batch_isolated(batch):
                    results[res.key] = res
        return [results[r.key] for r in requests]

    # -- internals --------------------------------------------------------------------------------------
    def _render(self, request: GenerationRequest) -> str:
        prompt = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        return prompt + request.response_prefix

    def _generate_batch_isolated(self, batch: list[GenerationRequest]) -> list[GenerationResult]:
        try:
            return self._generate_batch(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the failing row, record the reason
            if len(batch) == 1:
                logger.warning("generation failed for %s: %s", batch[0].key, exc)
                return [GenerationResult.failed(batch[0].key, f"{type(exc).__name__}: {exc}")]
            return [res for req in batch for res in self._generate_batch_isolated([req])]

    def _generate_batch(self, batch: list[GenerationRequest]) -> list[GenerationResult]:
        torch = self._torch
        sampling = batch[0].sampling
        prompts = [self._render(r) for r in batch]
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        out: list[GenerationResult | None] = [None] * len(batch)
        runnable = []
        for i, ids in enumerate(encoded):
            if len(ids) + sampling.max_new_tokens > self.max_model_len:
                out[i] = GenerationResult.failed(
                    batch[i].key,
                    f"prompt too long: {len(ids)} prompt + {sampling.max_new_tokens} new tokens > "
                    f"model.max_model_len {self.max_model_len}",
                    num_prompt_tokens=len(ids),
                )
            else:
                runnable.append(i)
        if runnable:
            inputs = self.tokenizer(
                [prompts[i] for i in runnable], add_special_tokens=False, padding=True, return_tensors="pt"
            ).to(self.device)
            # transformers samples from the global RNG: seed it from the batch's own request seeds so
            # the result depends on the requests, never on worker order or time.
            torch.manual_seed(sum(batch[i].seed for i in runnable) % (2**63))
            do_sample = sampling.temperature > 0
            with torch.inference_mode():
                generated = self.model.generate(
                    **inputs,
                    max_new_tokens=sampling.max_new_tokens,
                    do_sample=do_sample,
                    temperature=sampling.temperature if do_sample else None,
                    top_p=sampling.top_p if do_sample else None,
                    top_k=None,
                    repetition_penalty=sampling.repetition_penalty,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :].tolist()
            eos = self.tokenizer.eos_token_id
            pad = self.tokenizer.pad_token_id
            for row, i in enumerate(runnable):
                toks = new_tokens[row]
                stopped = eos in toks
                if stopped:
                    toks = toks[: toks.index(eos)]
                toks = [t for t in toks if t != pad] if pad != eos else toks
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                # after a response prefix the leading space is part of the continuation ("Guild" + " is")
                text = text.rstrip() if batch[i].response_prefix else text.strip()
                out[i] = GenerationResult(
                    key=batch[i].key,
                    text=text,
                    num_prompt_tokens=len(encoded[i]),
                    num_cached_tokens=0,
                    num_generated_tokens=len(toks) + (1 if stopped else 0),
                    finish_reason="stop" if stopped else "length",
                )
        return out  # type: ignore[return-value]


def _sampling_sort_key(s: SamplingParams) -> tuple:
    return (s.temperature, s.top_p, s.max_new_tokens, s.repetition_penalty)
