"""Engines behind one protocol (`base.Engine`); `make_engine` builds the configured one lazily.

Each engine module is the one home of its heavy dependency (transformers, vllm, httpx) and is imported only
when that engine is built, so `import ray_entigraph` needs none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray_entigraph.engines.base import Engine, GenerationRequest, GenerationResult, SamplingParams

if TYPE_CHECKING:
    from ray_entigraph.config import EntiGraphConfig

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "SamplingParams", "constrains_json", "make_engine", "preflight",
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


def preflight(config: "EntiGraphConfig") -> list[str]:
    """Engine checks on the driver, before any worker starts: raises for what cannot work (a hosted API
    without its key), returns warnings for what may only be true here (vLLM missing on the driver is fine
    when the GPU nodes have it)."""
    import importlib.util
    import os

    kind, warnings = config.engine.kind, []
    if kind == "openai":
        from ray_entigraph.engines.openai_engine import is_local_url

        o = config.engine.openai
        if o.api_key_env and not os.environ.get(o.api_key_env) and not is_local_url(o.base_url):
            raise ValueError(
                f"engine.kind is 'openai' with base_url {o.base_url} but the environment variable "
                f"{o.api_key_env!r} (engine.openai.api_key_env) is not set. Fix: export {o.api_key_env}=<key> "
                "(on a cluster: in every node's environment), or set engine.openai.api_key_env=null "
                "for a server without authentication.")
    if kind == "vllm" and importlib.util.find_spec("vllm") is None:
        from ray_entigraph.engines.vllm_engine import vllm_missing_message

        warnings.append(vllm_missing_message() + " (This is only a problem if the model actors' nodes lack it too.)")
    return warnings


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
