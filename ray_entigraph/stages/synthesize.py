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
from ray_entigraph.errors import PromptError
from ray_entigraph.layout import Layout
from ray_entigraph.ledger import StageTotals
from ray_entigraph.prompts import ChatTemplate, PromptSet, relation_values, render, render_chat
from ray_entigraph.stages.base import (
    Stage,
    StagePlan,
    Usage,
    commit_unit,
    error_row,
    model_actor_kwargs,
    read_documents,
    read_shards,
    shard_identity,
    units_of_work,
    worker_config,
)
from ray_entigraph.stages.plan import capacity, plan_groups
from ray_entigraph.text.plan import allocate_budget


def template_for(prompts: PromptSet, kind: str) -> ChatTemplate:
    if kind == schema.KIND_PAIR and prompts.pair:
        return prompts.pair
    if kind == schema.KIND_TRIPLET and prompts.triplet:
        return prompts.triplet
    if (kind.startswith(schema.KIND_REPHRASE_PREFIX)
            and kind.removeprefix(schema.KIND_REPHRASE_PREFIX) in prompts.rephrase):
        return prompts.rephrase[kind.removeprefix(schema.KIND_REPHRASE_PREFIX)]
    raise PromptError(f"Prompt set {prompts.version!r} has no template for kind {kind!r}. Fix: add one, or use a "
                      "built-in prompt set.")


def prompt_values(title: str, text: str, entities: list[str]) -> dict[str, str]:
    return relation_values(title, text, entities)


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


class RelationSynthesisWorker:
    """Ray Data callable: a batch of task groups -> synthetic rows, one committed shard per call."""

    def __init__(self, config: EntiGraphConfig, prompts: PromptSet, layout: Layout | None = None):
        self.config = worker_config(config)
        self.engine = make_engine(self.config)
        self.prompts = prompts
        self.sampling = sampling_params(self.config.synthesis.sampling)
        self.sampling_json = json.dumps(self.config.synthesis.sampling.key(), sort_keys=True)
        self.store = (layout or Layout(config.output_dir)).synthetic

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
        usage = Usage()
        for res in self.engine.generate(requests):
            usage.add(res)
            base, prefix = meta[res.key]
            error = res.error or (None if res.text.strip() else "empty generation")
            if error:
                errors.append(error_row(schema.SYNTHESIZE, res.key, base["doc_id"], error))
                continue
            rows.append({
                **base, "text": prefix + res.text, "sampling_json": self.sampling_json,
                "finish_reason": res.finish_reason,
                "num_prompt_tokens": res.num_prompt_tokens, "num_cached_tokens": res.num_cached_tokens,
                "num_generated_tokens": res.num_generated_tokens,
            })
        return commit_unit(self.store, rows, errors, row_schema=schema.SYNTHETIC, key_column="task_id",
                           started=started, usage=usage, stats=shard_identity(self.config, self.prompts.version))


class Synthesize(Stage):
    """Driver half: plan the relation (or rephrase) tasks on the workers from the committed entities (or the
    documents), leave out committed task ids, and run the rest on the model actors."""

    name = schema.SYNTHESIZE

    def _planning_input(self, ctx):
        """(dataset of rows to plan from, per-document task allocation or None, expected task count)."""
        config = ctx.config
        index = ctx.documents()
        if config.synthesis.augmenter == "rephrase":
            per_doc = len(ctx.prompts.rephrase) * config.plan.rephrase_repeats
            if not index:
                return None, None, 0
            return read_documents(index).select_columns(["doc_id", "title", "text"]), None, per_doc * len(index)
        keys = {ctx.extraction_key(d) for d in index}
        store = ctx.layout.entities
        capacities, num_summaries = {}, 0
        urls = store.shard_urls()
        for url in urls:
            for row in storage.read_parquet(url, ["request_key", "doc_id", "entities", "summary"]).to_pylist():
                if row["request_key"] in keys:
                    capacities[row["doc_id"]] = capacity(config, len(row["entities"] or []))
                    num_summaries += bool(row["summary"])
        allocation = allocate_budget(capacities, config.plan.max_tasks_total)
        if not capacities:
            return None, allocation, 0
        ds = read_shards(urls).select_columns(["request_key", "doc_id", "title", "text", "entities", "summary"])
        return ds.filter(lambda r: r["request_key"] in keys), allocation, sum(allocation.values()) + num_summaries

    def plan(self, ctx) -> StagePlan:
        ds, allocation, expected = self._planning_input(ctx)
        done = set(ctx.layout.synthetic.iter_key_column("task_id"))
        # committed rows of other configs (a changed prompt version) also count here: an estimate
        done_before = min(len(done), expected)
        totals = StageTotals(self.name, expected=expected, done_before=done_before)
        if ds is None or expected == 0:
            return StagePlan(totals)
        ds = ds.flat_map(plan_groups, fn_kwargs={"config": ctx.config, "prompts": ctx.prompts,
                                                 "allocation": allocation, "done": done})
        return StagePlan(totals, dataset=ds, units=expected - done_before)

    def apply(self, ctx, plan):
        return units_of_work(plan.dataset, ctx.config).map_batches(
            RelationSynthesisWorker, fn_constructor_args=(ctx.config, ctx.prompts, ctx.layout),
            **model_actor_kwargs(ctx.config))

