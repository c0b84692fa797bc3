"""Engines behind one protocol (`base.Engine`); `make_engine` builds the configured one lazily.

Each engine module is the one home of its heavy dependency (transformers, vllm, httpx) and is imported only
when that engine is built, so `import ray_entigraph` needs none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray_entigraph.engines.base import Engine, GenerationRequest, GenerationResult, SamplingParams

if TYPE_CHECKING:
    from ray_entigraph.config import EntiGraphConfig

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "SamplingParams", "constrains_json", "make_engine",
           "sampling_params"]


def sampling_params(cfg) -> SamplingParams:
    """Engine sampling parameters from a `config.SamplingConfig`."""
    return SamplingParams(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        repetition_penalty=cfg.repetition_penalty,
    )


def constrains_json(config: "EntiGraphConfig") -> bool:
    """Whether the configured engine decodes entity extraction under a JSON schema (part of the extraction's
    request key: a constrained request is a different request). Engines' `supports_json_schema` agrees."""
    kind = config.engine.kind
    return (kind == "vllm" and config.engine.vllm.structured_extraction) or kind == "openai"


def make_engine(config: "EntiGraphConfig") -> Engine:
    """The engine named by `engine.kind`, built from the config's model and engine sections."""
    kind = config.engine.kind
    if kind == "transformers":
        from ray_entigraph.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            config.model.name,
            dtype=config.model.dtype,
            device=config.engine.device,
            max_batch_size=config.engine.max_batch_size,
            max_model_len=config.model.max_model_len,
            torch_threads=config.engine.torch_threads,
            cache_dir=config.model.cache_dir,
            prefix_reuse=config.engine.prefix_reuse,
            min_prefix_tokens=config.engine.min_prefix_tokens,
        )
    if kind == "vllm":
        from ray_entigraph.engines.vllm_engine import VLLMEngine

        return VLLMEngine.from_config(config)
    if kind == "openai":
        from ray_entigraph.engines.openai_engine import OpenAIEngine

        return OpenAIEngine.from_config(config)
    if kind == "echo":
        from ray_entigraph.engines.echo import EchoEngine

        return EchoEngine(config.model.name)
    raise ValueError(f"engine.kind {kind!r} is not available")  # config validation prevents this
