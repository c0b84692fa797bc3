"""Engines behind one protocol (`base.Engine`); `make_engine` builds the configured one lazily.

Each engine module is the one home of its heavy dependency (transformers, vllm, httpx) and imports it inside
its functions, so importing the module is cheap and `import ray_entigraph` needs none of them. `ENGINES`
names each kind's class; every class has `from_config(config)`, which builds it from its config sections,
and `supports_json_schema_for(config)`, which says without building it whether it decodes under a JSON
schema.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Protocol

from ray_entigraph.engines.base import Engine, GenerationRequest, GenerationResult, SamplingParams
from ray_entigraph.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from ray_entigraph.config import EntiGraphConfig

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "Engine", "EngineClass", "GenerationRequest", "GenerationResult", "SamplingParams",
           "constrains_json", "engine_class", "make_engine", "preflight", "sampling_params"]

# engine.kind -> (module, class): imported only when that kind is asked for.
ENGINES: dict[str, tuple[str, str]] = {
    "transformers": ("ray_entigraph.engines.transformers_engine", "TransformersEngine"),
    "vllm": ("ray_entigraph.engines.vllm_engine", "VLLMEngine"),
    "openai": ("ray_entigraph.engines.openai_engine", "OpenAIEngine"),
    "echo": ("ray_entigraph.engines.echo", "EchoEngine"),
}


class EngineClass(Protocol):
    """What every class named in `ENGINES` offers as classmethods (the class object is the protocol's instance)."""

    def from_config(self, config: EntiGraphConfig) -> Engine:
        """The engine, built from the config's model and engine sections."""
        ...

    def supports_json_schema_for(self, config: EntiGraphConfig) -> bool:
        """Whether an engine built from `config` decodes under a JSON schema (answered without building it)."""
        ...


def sampling_params(cfg) -> SamplingParams:
    """Engine sampling parameters from a `config.SamplingConfig`."""
    return SamplingParams(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        repetition_penalty=cfg.repetition_penalty,
        frequency_penalty=cfg.frequency_penalty,
        presence_penalty=cfg.presence_penalty,
    )


def engine_class(kind: str) -> EngineClass:
    """The class of engine kind `kind`, its module imported now."""
    if kind not in ENGINES:  # config validation prevents this
        raise ConfigError(f"engine.kind {kind!r} is not available. Fix: set engine.kind to one of {sorted(ENGINES)}.")
    module, name = ENGINES[kind]
    return getattr(importlib.import_module(module), name)


def constrains_json(config: "EntiGraphConfig") -> bool:
    """Whether the configured engine decodes entity extraction under a JSON schema (part of the extraction's
    request key: a constrained request is a different request). The engine class answers; an engine built
    from the same config has the same `supports_json_schema`."""
    return engine_class(config.engine.kind).supports_json_schema_for(config)


def preflight(config: "EntiGraphConfig") -> list[str]:
    """Engine checks on the driver, before any worker starts: raises for what cannot work (a hosted API
    without its key), returns warnings for what may only be true here (vLLM missing on the driver is fine
    when the GPU nodes have it)."""
    import importlib.util
    import os

    kind, warnings = config.engine.kind, []
    if kind == "openai":
        from ray_entigraph.engines.openai_engine import is_local_url  # lazy: engine modules load only when used

        o = config.engine.openai
        if o.api_key_env and not os.environ.get(o.api_key_env) and not is_local_url(o.base_url):
            raise EngineError(
                f"engine.kind is 'openai' with base_url {o.base_url} but the environment variable "
                f"{o.api_key_env!r} (engine.openai.api_key_env) is not set. Fix: export {o.api_key_env}=<key> "
                "(on a cluster: in every node's environment), or set engine.openai.api_key_env=null "
                "for a server without authentication.")
    if kind == "vllm" or (kind == "openai" and config.engine.openai.send_repetition_penalty):
        warnings += prompt_penalty_warnings(config)
    if kind == "vllm" and importlib.util.find_spec("vllm") is None:
        from ray_entigraph.engines.vllm_engine import vllm_missing_message  # lazy: engine modules load only when used

        warnings.append(vllm_missing_message() + " (This is only a problem if the model actors' nodes lack it too.)")
    return warnings


def prompt_penalty_warnings(config: "EntiGraphConfig") -> list[str]:
    """vLLM and OpenAI-compatible servers apply `repetition_penalty` to the prompt's tokens as well, so a value
    above 1 penalises the document's own names, numbers and words (the transformers engine penalises generated
    tokens only): one warning per sampling section that would send one, with the fix."""
    sections = [("synthesis.sampling", config.synthesis.sampling)]
    if config.extract.source == "model":
        sections.append(("extract.sampling", config.extract.sampling))
    return [f"{key}.repetition_penalty={s.repetition_penalty:g} with engine.kind={config.engine.kind} penalises the "
            "prompt's tokens too (the document's own names and numbers) and pushes the text off the document. Fix: "
            f"{key}.repetition_penalty=1.0 {key}.frequency_penalty=0.3 (generated tokens only)."
            for key, s in sections if s.repetition_penalty > 1.0]


def make_engine(config: "EntiGraphConfig") -> Engine:
    """The engine named by `engine.kind`, built from the config's model and engine sections."""
    import os
    import time

    started = time.time()
    engine = engine_class(config.engine.kind).from_config(config)
    logger.info("%s engine ready for %s in %.1fs (pid %d)", config.engine.kind, config.model.name,
                time.time() - started, os.getpid())
    if config.resources.units_in_flight_per_actor > 1:  # the actor's concurrent calls share the engine
        from ray_entigraph.engines.shared import SharedEngine

        return SharedEngine(engine)
    return engine
