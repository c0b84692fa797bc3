"""Engines behind one protocol (`base.Engine`); `make_engine` builds the configured one lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray_entigraph.engines.base import Engine, GenerationRequest, GenerationResult, SamplingParams

if TYPE_CHECKING:
    from ray_entigraph.config import EntiGraphConfig

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "SamplingParams", "make_engine", "sampling_params"]


def sampling_params(cfg) -> SamplingParams:
    """Engine sampling parameters from a `config.SamplingConfig`."""
    return SamplingParams(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        repetition_penalty=cfg.repetition_penalty,
    )


def make_engine(config: "EntiGraphConfig") -> Engine:
    if config.engine.kind == "transformers":
        from ray_entigraph.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            config.model.name,
            dtype=config.model.dtype,
            device=config.engine.device,
            max_batch_size=config.engine.max_batch_size,
            max_model_len=config.model.max_model_len,
            torch_threads=config.engine.torch_threads,
            cache_dir=config.model.cache_dir,
        )
    raise ValueError(f"engine.kind {config.engine.kind!r} is not available")  # config validation prevents this
