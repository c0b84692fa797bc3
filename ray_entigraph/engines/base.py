"""The engine seam: one small protocol that every inference backend implements.

Stages build `GenerationRequest`s (chat messages + sampling + a prefix key for document affinity) and get
back one `GenerationResult` per request, in order: text and token counts, or an error with its reason.
Stages never know which engine runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """Sampling of one request. Every field but the two output penalties (off unless given) is required: the
    defaults live in `config.SamplingConfig` alone (build from it with `engines.sampling_params`), so a request
    never samples with a second set of them."""

    temperature: float
    top_p: float
    max_new_tokens: int
    repetition_penalty: float
    frequency_penalty: float = 0.0  # OpenAI semantics: over generated tokens only, on every engine
    presence_penalty: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationRequest:
    key: str  # the request key; results are matched by it
    messages: list[dict[str, str]]  # chat messages (role, content)
    sampling: SamplingParams
    seed: int = 0
    prefix_key: str | None = None  # requests sharing it share a long prompt prefix (the document)
    response_prefix: str = ""  # assistant prefill: generation continues after it (not part of the text)
    # Constrain the output to this JSON schema. Only sent to engines whose `supports_json_schema` is true;
    # the stage then sends no response_prefix (a grammar starts at the answer's first character).
    json_schema: dict | None = None


@dataclass
class GenerationResult:
    key: str
    text: str = ""
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generated_tokens: int = 0
    finish_reason: str = "stop"  # stop | length | error
    error: str | None = None
    num_retries: int = 0  # transport retries spent on this request (HTTP engines: 429, 5xx, timeouts)
    transient: bool = False  # the failure says nothing about the request (a server unreachable or overloaded
    # after every retry, a batch past its deadline): asking again later may well succeed

    @classmethod
    def failed(cls, key: str, reason: str, num_prompt_tokens: int = 0) -> "GenerationResult":
        return cls(key=key, finish_reason="error", error=reason, num_prompt_tokens=num_prompt_tokens)


@runtime_checkable
class Engine(Protocol):
    """An inference backend. `generate` never raises for a bad request: it returns a failed result."""

    model_name: str
    # Honours GenerationRequest.json_schema (constrained decoding). Equal to the engine class's
    # `supports_json_schema_for(config)` for the config it was built from (see `engines.constrains_json`).
    supports_json_schema: bool

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def count_tokens(self, text: str) -> int: ...
