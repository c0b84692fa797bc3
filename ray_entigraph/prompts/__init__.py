"""Versioned prompt sets: data files, not code.

A prompt set is a YAML file with a `version` and one template per request kind. Built-in sets live beside
this module (`entigraph-v1`, `rephrase-v1`); `synthesis.prompts` may instead point at a user's own file
(for instance the exact prompts of the paper's appendix) with no code change.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ray_entigraph.errors import PromptError

_HERE = Path(__file__).parent
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_0-9]+)\s*\}\}")


class ChatExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    assistant: str


class ChatTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system: str | None = None
    examples: list[ChatExample] = Field(default_factory=list)
    user: str
    response_prefix: str = ""  # the start of the assistant's answer, written for the model (prefill)


class PromptSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    description: str = ""
    extract: ChatTemplate | None = None
    pair: ChatTemplate | None = None
    triplet: ChatTemplate | None = None
    rephrase: dict[str, ChatTemplate] = Field(default_factory=dict)
    qa: ChatTemplate | None = None  # evaluation: few-shot chain-of-thought question answering
    # Questions and answers about a pair or triplet of entities: every `qa_every`-th relation task of a document
    # is written with this template instead of pair/triplet (0: never), mixing Q&A text with relation text.
    relation_qa: ChatTemplate | None = None
    qa_every: int = Field(0, ge=0)
    # What {{document}} holds in relation prompts: the whole document, or (`focused`) only the sentences that
    # mention the task's entities with `context_window` sentences either side (text/focus.py).
    context: Literal["document", "focused"] = "document"
    context_window: int = Field(1, ge=0)
    judge: ChatTemplate | None = None  # curate.judge: rate a synthetic text against its document


def builtin_prompt_sets() -> list[str]:
    return sorted(p.stem for p in _HERE.glob("*.yaml"))


def load_prompt_set(name_or_path: str) -> PromptSet:
    """Load a built-in prompt set by name, or a YAML file by path. Not cached: a run loads each set once
    (`context.RunContext`) and hands it to the stages that use it."""
    path = _HERE / f"{name_or_path}.yaml"
    if not path.exists():
        path = Path(name_or_path)
    if not path.exists():
        raise PromptError(
            f"Prompt set {name_or_path!r} is neither a built-in ({', '.join(builtin_prompt_sets())}) nor an "
            "existing file. Fix: set synthesis.prompts to one of those names or to a YAML file path."
        )
    try:
        return PromptSet.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError) as exc:
        raise PromptError(f"Prompt file {str(path)!r} is invalid: {exc}") from None


def render(template: str, values: dict[str, str]) -> str:
    """Fill {{name}} placeholders; an unknown placeholder is an error, not an empty string."""

    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"Prompt placeholder {{{{{name}}}}} has no value (known: {sorted(values)}).")
        return values[name]

    return _PLACEHOLDER.sub(sub, template)


def render_chat(template: ChatTemplate, values: dict[str, str]) -> list[dict[str, str]]:
    """Chat messages for one request: system, few-shot turns, then the filled user turn."""
    messages: list[dict[str, str]] = []
    if template.system:
        messages.append({"role": "system", "content": render(template.system, values)})
    for ex in template.examples:
        messages.append({"role": "user", "content": ex.user})
        messages.append({"role": "assistant", "content": ex.assistant})
    messages.append({"role": "user", "content": render(template.user, values)})
    return messages


def relation_values(title: str, document: str, entities: list[str]) -> dict[str, str]:
    """The values a relation (pair, triplet) or rephrase request fills in: title, document, the entities
    joined, and each entity as entity_1, entity_2, ..."""
    values = {"title": title, "document": document, "entities": ", ".join(entities)}
    values.update({f"entity_{i + 1}": e for i, e in enumerate(entities)})
    return values


# What each kind of request fills in (the stages build the same keys), with stand-in values for checking.
EXTRACT_VALUES = {"title": "Title", "document": "Document."}
JUDGE_VALUES = {"title": "Title", "document": "Document.", "text": "Text."}
QA_VALUES = {"question_block": "Question."}


def check_renders(prompt_set: str, kind: str, template: ChatTemplate, values: dict[str, str]) -> None:
    """Render a template with stand-in values, so that a misspelt placeholder fails on the driver before any
    actor starts, naming the prompt set, the template and the placeholders that kind of request has."""
    try:
        render_chat(template, values)
        render(template.response_prefix, values)
    except KeyError as exc:
        raise PromptError(f"Prompt set {prompt_set!r}, template `{kind}`: {exc.args[0]} Fix: use only the "
                          f"placeholders {', '.join('{{' + k + '}}' for k in sorted(values))}.") from None
