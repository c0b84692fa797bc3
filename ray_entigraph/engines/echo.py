"""An engine that answers instantly without a model: each answer is the last words of the request's prompt.

It exists to measure the framework alone (planning, Ray Data, commits, driver memory) with the model's cost
taken out, and for plumbing tests. Its output is deterministic and carries no knowledge; never train on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray_entigraph.engines.base import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from ray_entigraph.config import EntiGraphConfig


class EchoEngine:
    supports_json_schema = False

    def __init__(self, model_name: str, words: int = 24):
        self.model_name = model_name
        self.words = words

    @classmethod
    def from_config(cls, config: "EntiGraphConfig") -> "EchoEngine":
        return cls(config.model.name)

    @classmethod
    def supports_json_schema_for(cls, config: "EntiGraphConfig") -> bool:
        return False

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for req in requests:
            prompt = " ".join(m["content"] for m in req.messages)
            tail = prompt.split()[-self.words:]
            results.append(GenerationResult(
                key=req.key,
                text=" " + " ".join(tail),
                num_prompt_tokens=self.count_tokens(prompt),
                num_generated_tokens=len(tail),
                finish_reason="length",
            ))
        return results
