"""Synthesize: task groups -> synthetic rows (EntiGraph step 2: pair and triplet relation texts; or the
Rephrase baseline's rewrites). The whole document is in every prompt; a group is one document's requests,
served back to back by one engine replica. Summary tasks pass the extraction's summary through.
"""

from __future__ import annotations

import json
import time

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.engines import GenerationRequest, make_engine, sampling_params
from ray_entigraph.prompts import ChatTemplate, PromptSet, load_prompt_set, render, render_chat
from ray_entigraph.stages.common import USAGE_FIELDS, commit_unit, shard_identity, torch_threads_for


def template_for(prompts: PromptSet, kind: str) -> ChatTemplate:
    if kind == schema.KIND_PAIR and prompts.pair:
        return prompts.pair
    if kind == schema.KIND_TRIPLET and prompts.triplet:
        return prompts.triplet
    if kind.startswith(schema.KIND_REPHRASE_PREFIX) and kind.removeprefix(schema.KIND_REPHRASE_PREFIX) in prompts.rephrase:
        return prompts.rephrase[kind.removeprefix(schema.KIND_REPHRASE_PREFIX)]
    raise ValueError(f"Prompt set {prompts.version!r} has no template for kind {kind!r}.")


def prompt_values(title: str, text: str, entities: list[str]) -> dict[str, str]:
    values = {"title": title, "document": text, "entities": ", ".join(entities)}
    values.update({f"entity_{i + 1}": e for i, e in enumerate(entities)})
    return values


def relation_request(prompts: PromptSet, group: dict, task: dict, sampling) -> GenerationRequest:
    """The engine request of one relation (or rephrase) task of a document's task group. The document is the
    prefix key: its requests share the long document prompt, which engines compute once."""
    template = template_for(prompts, task["kind"])
    values = prompt_values(group["title"], group["text"], task["entities"])
    return GenerationRequest(
        key=task["task_id"],
        messages=render_chat(template, values),
        sampling=sampling,
        seed=task["seed"],
        prefix_key=group["doc_id"],
        response_prefix=render(template.response_prefix, values),
    )


class RelationSynthesisStage:
    """Ray Data callable: a batch of task groups -> synthetic rows, one committed shard per call."""

    def __init__(self, config_json: str):
        self.config = EntiGraphConfig.model_validate_json(config_json)
        self.config.engine.torch_threads = torch_threads_for(self.config)
        self.engine = make_engine(self.config)
        self.prompts = load_prompt_set(self.config.synthesis.prompts)
        self.sampling = sampling_params(self.config.synthesis.sampling)
        self.sampling_json = json.dumps(self.config.synthesis.sampling.key(), sort_keys=True)
        self.store = storage.StageStore(self.config.output_dir, schema.SYNTHESIZE)

    def __call__(self, batch):
        started = time.time()
        rows, errors, requests, meta = [], [], [], {}
        for group in batch.to_pylist():
            for task in group["tasks"]:
                base = {
                    "task_id": task["task_id"], "doc_id": group["doc_id"], "title": group["title"],
                    "kind": task["kind"], "entities": task["entities"], "model": self.engine.model_name,
                    "prompt_version": self.prompts.version, "seed": task["seed"],
                }
                if task["kind"] == schema.KIND_SUMMARY:
                    rows.append({**base, "text": task["text"], "sampling_json": None, "finish_reason": "stop",
                                 "num_prompt_tokens": 0, "num_cached_tokens": 0, "num_generated_tokens": 0})
                    continue
                request = relation_request(self.prompts, group, task, self.sampling)
                requests.append(request)
                meta[task["task_id"]] = (base, request.response_prefix)
        usage = dict.fromkeys(USAGE_FIELDS, 0)
        for res in self.engine.generate(requests):
            for k in usage:
                usage[k] += getattr(res, k)
            base, prefix = meta[res.key]
            error = res.error or (None if res.text.strip() else "empty generation")
            if error:
                errors.append({"stage": schema.SYNTHESIZE, "request_key": res.key, "doc_id": base["doc_id"], "error": error})
                continue
            rows.append({
                **base, "text": prefix + res.text, "sampling_json": self.sampling_json, "finish_reason": res.finish_reason,
                "num_prompt_tokens": res.num_prompt_tokens, "num_cached_tokens": res.num_cached_tokens,
                "num_generated_tokens": res.num_generated_tokens,
            })
        return commit_unit(self.store, rows, errors, key_column="task_id", started=started, usage=usage,
                           identity=shard_identity(self.config, self.prompts.version))
