"""Synthesize: task groups -> synthetic rows (EntiGraph step 2: pair and triplet relation texts; or the
Rephrase baseline's rewrites). The whole document is in every prompt; a group is one document's requests,
served back to back by one engine replica. Summary tasks pass the extraction's summary through.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from ray_entigraph import schema
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.corpus import capacity_histogram, rank_buckets, seal_synthetic, synthesis_todo
from ray_entigraph.engines import GenerationRequest, make_engine, sampling_params
from ray_entigraph.errors import PromptError
from ray_entigraph.layout import Layout
from ray_entigraph.ledger import Progress, StageTotals
from ray_entigraph.planning import remainder_bucket, remainder_threshold, water_level
from ray_entigraph.prompts import ChatTemplate, PromptSet, relation_values, render, render_chat
from ray_entigraph.stages.base import (
    PARTITION_TASK_CPUS,
    Stage,
    StagePlan,
    Usage,
    bounded_task,
    commit_partitioned,
    current_totals,
    error_row,
    model_actor_kwargs,
    partition_ids,
    run_partition_tasks,
    run_unit,
    seal_stage,
    shard_identity,
    units_of_work,
    worker_config,
)
from ray_entigraph.text.focus import focused_context


def template_for(prompts: PromptSet, kind: str) -> ChatTemplate:
    if kind == schema.KIND_PAIR and prompts.pair:
        return prompts.pair
    if kind == schema.KIND_TRIPLET and prompts.triplet:
        return prompts.triplet
    if kind == schema.KIND_QA and prompts.relation_qa:
        return prompts.relation_qa
    for prefix in (schema.KIND_REPHRASE_PREFIX, schema.KIND_REWRITE_PREFIX):  # both: the `rephrase` templates
        if kind.startswith(prefix) and kind.removeprefix(prefix) in prompts.rephrase:
            return prompts.rephrase[kind.removeprefix(prefix)]
    raise PromptError(f"Prompt set {prompts.version!r} has no template for kind {kind!r}. Fix: add one, or use a "
                      "built-in prompt set.")


def prompt_values(title: str, text: str, entities: list[str]) -> dict[str, str]:
    return relation_values(title, text, entities)


def relation_request(prompts: PromptSet, group: dict, task: dict, sampling) -> GenerationRequest:
    """The engine request of one relation (or rephrase) task of a document's task group. The document is the
    prefix key: its requests share the long document prompt, which engines compute once."""
    template = template_for(prompts, task["kind"])
    text = group["text"]
    if prompts.context == "focused" and task["entities"]:  # only the passages about this task's entities
        text = focused_context(text, list(task["entities"]), prompts.context_window)
    values = prompt_values(group["title"], text, task["entities"])
    if task.get("max_new_tokens"):  # a budget of its own (rewrite: in proportion to the document)
        sampling = replace(sampling, max_new_tokens=int(task["max_new_tokens"]))
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

    def __init__(self, config: EntiGraphConfig, prompts: PromptSet, synthesis: str, layout: Layout | None = None,
                 engine=None):
        self.config = worker_config(config)
        self.engine = engine if engine is not None else make_engine(self.config)  # the extractor's, when streamed
        self.prompts = prompts
        self.sampling = sampling_params(self.config.synthesis.sampling)
        self.sampling_json = json.dumps(self.config.synthesis.sampling.key(), sort_keys=True)
        self.store = (layout or Layout(config.output_dir, num_partitions=config.num_partitions)).synthetic(synthesis)

    def __call__(self, batch):
        return self.run_groups(batch.to_pylist())

    def run_groups(self, groups: list[dict]):
        """One unit of work: these task groups' rows committed as one shard (exactly once by task ids)."""
        tasks = [(t["task_id"], g["doc_id"]) for g in groups for t in g["tasks"]]
        return run_unit(self.store.url, [k for k, _ in tasks], self.config.resources.max_unit_attempts,
                        lambda: self._run(groups), lambda reason: self._give_up(tasks, reason))

    def _give_up(self, tasks: list[tuple[str, str]], reason: str):
        errors = [error_row(schema.SYNTHESIZE, key, doc_id, reason) for key, doc_id in tasks]
        return commit_partitioned(self.store, [], errors, row_schema=schema.SYNTHETIC, key_column="task_id",
                                  started=time.time(), stats=shard_identity(self.config, self.prompts.version))

    def _run(self, groups: list[dict]):
        started = time.time()
        rows, errors, requests, meta = [], [], [], {}
        for group in groups:
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
                sampling_json = self.sampling_json if not task.get("max_new_tokens") else json.dumps(
                    {**json.loads(self.sampling_json), "max_new_tokens": int(task["max_new_tokens"])}, sort_keys=True)
                meta[task["task_id"]] = (base, request.response_prefix, sampling_json)
        usage = Usage()
        engine_started = time.time()
        results = self.engine.generate(requests)
        engine_s = time.time() - engine_started  # with units in flight, this unit's wait for its own results
        for res in results:
            usage.add(res)
            base, prefix, sampling_json = meta[res.key]
            error = res.error or (None if res.text.strip() else "empty generation")
            if error:
                errors.append(error_row(schema.SYNTHESIZE, res.key, base["doc_id"], error))
                continue
            rows.append({
                **base, "text": prefix + res.text, "sampling_json": sampling_json,
                "finish_reason": res.finish_reason,
                "num_prompt_tokens": res.num_prompt_tokens, "num_cached_tokens": res.num_cached_tokens,
                "num_generated_tokens": res.num_generated_tokens,
            })
        return commit_partitioned(self.store, rows, errors, row_schema=schema.SYNTHETIC, key_column="task_id",
                                  started=started, usage=usage,
                                  stats={**shard_identity(self.config, self.prompts.version),
                                         "engine_started": round(engine_started, 3), "engine_s": round(engine_s, 3)})


class Synthesize(Stage):
    """Driver half: the global budget from capacity histograms, then per partition, on the workers, the plan
    anti-joined against the partition's committed task ids, run on the model actors; then every partition
    sealed. The driver holds P small rows and two integers, never a document or a task id."""

    name = schema.SYNTHESIZE

    def folder(self, ctx) -> str:
        return ctx.synthetic_store.stage

    def plan(self, ctx) -> StagePlan:
        store, identity = ctx.synthetic_store, ctx.synthetic_identity
        summary = store.summary()
        if store.is_current(summary, identity):
            return StagePlan(current_totals(self.name, summary, "num_rows"), worker_args={"complete": True})
        corpus = ctx.corpus()
        counts = run_partition_tasks(store.num_partitions, capacity_histogram, corpus=corpus)
        budget, expected = self._budget(ctx, corpus, counts)
        corpus = replace(corpus, budget=budget)
        done = min(sum(r["done"] for r in counts), expected)
        totals = StageTotals(self.name, expected=expected, done_before=done)
        todo = bounded_task(synthesis_todo, "synthesis planning")
        ds = partition_ids(store.num_partitions).flat_map(todo, fn_kwargs={"corpus": corpus},
                                                          num_cpus=PARTITION_TASK_CPUS)
        # nothing left (the extraction actors synthesized it all): no model actors started
        nothing_left = expected == 0 or (budget is None and all(r["missing"] == 0 for r in counts))
        if nothing_left and expected:
            Progress(self.name, expected).done_elsewhere(done, "while extracting (resources.synthesize_while_"
                                                               "extracting) or earlier")
        return StagePlan(totals, dataset=None if nothing_left else ds, units=expected - done,
                         worker_args={"corpus": corpus})

    def _budget(self, ctx, corpus, counts: list[dict]) -> tuple[dict | None, int]:
        """The budget's level and remainder threshold from the histograms (and, when the remainder must be
        split, two more small passes), and the number of tasks the plan holds."""
        config = ctx.config
        if config.synthesis.augmenter == "rephrase":
            per_doc = len(ctx.prompts.rephrase) * config.plan.rephrase_repeats
            return None, per_doc * sum(r["documents"] for r in counts)
        if config.synthesis.augmenter == "rewrite":  # tasks per document follow its rules: counted per partition
            return None, sum(r["planned"] for r in counts)
        histogram: dict[int, int] = {}
        for r in counts:
            for c, n in json.loads(r["histogram"]).items():
                histogram[int(c)] = histogram.get(int(c), 0) + n
        summaries = sum(r["summaries"] for r in counts)
        level, remainder = water_level(histogram, config.plan.max_tasks_total)
        if level is None:
            return None, sum(c * n for c, n in histogram.items()) + summaries
        threshold = 0
        if remainder:
            buckets: dict[int, int] = {}
            for r in run_partition_tasks(corpus.num_partitions, rank_buckets, corpus=corpus, level=level, bucket=None):
                for b, n in json.loads(r["values"]).items():
                    buckets[int(b)] = buckets.get(int(b), 0) + n
            bucket, k = remainder_bucket(buckets, remainder)
            keys = []
            if k:
                for r in run_partition_tasks(corpus.num_partitions, rank_buckets, corpus=corpus, level=level,
                                             bucket=bucket):
                    keys += json.loads(r["values"])
            threshold = remainder_threshold(bucket, k, keys)
        return {"level": level, "threshold": threshold}, config.plan.max_tasks_total + summaries

    def apply(self, ctx, plan):
        return units_of_work(plan.dataset, ctx.config).map_batches(
            RelationSynthesisWorker, fn_constructor_args=(ctx.config, ctx.prompts, ctx.synthesis_id, ctx.layout),
            **model_actor_kwargs(ctx.config))

    def finish(self, ctx, totals: StageTotals, plan: StagePlan | None = None) -> StageTotals:
        if plan is not None and plan.worker_args.get("complete"):
            return totals
        corpus = plan.worker_args["corpus"] if plan is not None and "corpus" in plan.worker_args else ctx.corpus()
        summary = seal_stage(ctx.synthetic_store, ctx.synthetic_identity, seal_synthetic,
                             extra={"budget": corpus.budget}, corpus=corpus)
        return current_totals(self.name, summary, "num_rows", run=totals)
