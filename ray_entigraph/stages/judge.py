"""Judge: a model rates every synthetic row against its source document (`curate.judge`), the model-based
grounding check beside the lexical one of `text/grounding.py`.

The judge prompt (`judge-v1`) puts the document first and the text after it, so the rows of one document
share their long prefix; the answer is a rating from 1 to 5, stored as `judge_score = (rating - 1) / 4`.
Engines that decode under a JSON schema (vLLM, OpenAI-compatible servers) are held to `{"rating": 1..5}`;
others get a "Rating: " prefill and the first digit from 1 to 5 of the answer. An answer with no rating is
recorded in the errors table with the answer itself, never guessed.

Keyed by row like the other model stages: judged rows are committed with the same protocol, into the
partition of their document, under `output_dir/judged/<judge id>/p=NNNNN/`; each partition's plan is an
anti-join of its current synthetic rows against the task ids this judge has settled (rated, or failed for a
reason about the row itself); rows that failed for an outage or a dead actor are asked again. The judge id
hashes the judge model, its prompt version and whether the answer was constrained, so another judge never
reuses these ratings. The curate stage reads a partition's ratings beside its synthetic rows.
"""

from __future__ import annotations

import json
import re
import time

import pyarrow as pa

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.context import JUDGE_SAMPLING_FIELDS
from ray_entigraph.corpus import Corpus, committed_keys, documents_by_id
from ray_entigraph.engines import GenerationRequest, GenerationResult, SamplingParams, make_engine
from ray_entigraph.ledger import StageTotals
from ray_entigraph.partitions import PartitionedStore
from ray_entigraph.prompts import ChatTemplate, render, render_chat
from ray_entigraph.stages.base import (
    PARTITION_TASK_CPUS,
    Stage,
    StagePlan,
    Usage,
    bounded_task,
    commit_partitioned,
    error_row,
    model_actor_kwargs,
    partition_ids,
    run_partition_tasks,
    run_unit,
    units_of_work,
    worker_config,
)

RATING_SCHEMA = {"type": "object", "properties": {"rating": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
                 "required": ["rating"], "additionalProperties": False}
JUDGE_SAMPLING = SamplingParams(**JUDGE_SAMPLING_FIELDS)  # also part of the judge's identity (judged/<id>)
_DIGIT = re.compile(r"(?<![\d.])([1-5])(?!\d|\.\d)")  # "4", "4/5", "1. The text" but not "2.5" or "10"


# -- pure pieces ---------------------------------------------------------------------------------------


def judge_request(template: ChatTemplate, row: dict, document: dict, *, constrained: bool) -> GenerationRequest:
    """The judge's request for one synthetic row; the document is the prefix key (shared prompt prefix)."""
    values = {"title": document.get("title") or "", "document": document["text"], "text": row["text"]}
    return GenerationRequest(
        key=row["task_id"], messages=render_chat(template, values), sampling=JUDGE_SAMPLING, seed=0,
        prefix_key=row["doc_id"], response_prefix="" if constrained else render(template.response_prefix, values),
        json_schema=RATING_SCHEMA if constrained else None,
    )


def parse_rating(text: str) -> int | None:
    """The rating in a judge's answer: `{"rating": n}`, or the first standalone digit 1..5; None otherwise."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped).get("rating")
        except (json.JSONDecodeError, AttributeError):
            value = None
        if isinstance(value, int) and 1 <= value <= 5:
            return value
    m = _DIGIT.search(stripped)
    return int(m.group(1)) if m else None


def judge_score(rating: int) -> float:
    return (rating - 1) / 4


def judged_row(row: dict, result: GenerationResult, model: str, prompt_version: str) -> tuple[dict | None, str | None]:
    """(judged row, None) or (None, why there is no rating)."""
    if result.error:
        return None, result.error
    rating = parse_rating(result.text)
    if rating is None:
        return None, f"no rating from 1 to 5 in the judge's answer: {result.text.strip()[:200]!r}"
    return {"task_id": row["task_id"], "doc_id": row["doc_id"], "judge_model": model, "prompt_version": prompt_version,
            "rating": rating, "judge_score": judge_score(rating), "judge_text": result.text,
            "num_prompt_tokens": result.num_prompt_tokens, "num_cached_tokens": result.num_cached_tokens,
            "num_generated_tokens": result.num_generated_tokens}, None


# -- planning tasks (workers, one partition each) ------------------------------------------------------


def judged_keys(judged: PartitionedStore, p: int) -> tuple[set[str], set[str]]:
    """(settled, retry) task ids of partition p: settled are rated, or failed for a reason about the row itself
    (an answer without a rating, a prompt the engine refuses, a row whose document is gone: the judge decodes
    greedily, so asking again would answer the same); retry failed for a reason that says nothing about the
    row (an outage, a dead actor) and are asked again."""
    entries = judged.part(p).manifest_entries()
    rated = committed_keys(judged, p, "task_id")
    settled = rated.union(*(e.get("settled_keys") or [] for e in entries))
    retry = set().union(*(e.get("retry_keys") or [] for e in entries)) - settled
    return settled, retry


def current_rows(corpus: Corpus, p: int, columns: list[str]):
    """Partition p's current synthetic rows (every shard of the synthesis identity, as curation reads them),
    each task once."""
    seen: set[str] = set()
    for url in corpus.synthetic.shard_urls(p, corpus.synthetic_identity):
        for row in storage.read_parquet(url, columns).to_pylist():
            if row["task_id"] not in seen:
                seen.add(row["task_id"])
                yield row


def judge_counts(batch: dict, *, corpus: Corpus, judged: PartitionedStore) -> dict:
    """Partition ids -> current synthetic rows and those not settled by the judge yet."""
    rows, todo = [], []
    for p in batch["partition"]:
        settled, _ = judged_keys(judged, int(p))
        keys = [r["task_id"] for r in current_rows(corpus, int(p), ["task_id"])]
        rows.append(len(keys))
        todo.append(sum(k not in settled for k in keys))
    return {"partition": batch["partition"], "rows": rows, "todo": todo}


def judge_todo(row: dict, *, corpus: Corpus, judged: PartitionedStore, group_size: int) -> list[dict]:
    """Ray Data flat_map: one partition id -> its rows not settled by the judge, in groups of one document
    (which carry the document once: its requests share the long prefix). A row whose document is gone has a
    group with no document; `retry` marks the rows asked again."""
    p = int(row["partition"])
    settled, retry = judged_keys(judged, p)
    by_doc: dict[str, list[dict]] = {}
    for r in current_rows(corpus, p, ["task_id", "doc_id", "text"]):
        if r["task_id"] not in settled:
            by_doc.setdefault(r["doc_id"], []).append({"task_id": r["task_id"], "text": r["text"],
                                                       "retry": r["task_id"] in retry})
    docs = documents_by_id(corpus, p) if by_doc else {}
    groups = []
    for doc_id in sorted(by_doc):
        doc = docs.get(doc_id)
        rows = by_doc[doc_id]
        groups += [{"partition": p, "doc_id": doc_id, "title": (doc or {}).get("title") or "",
                    "document": doc["text"] if doc else None, "rows": rows[i:i + group_size]}
                   for i in range(0, len(rows), group_size)]
    return groups


def judge_summary(batch: dict, *, judged: PartitionedStore) -> dict:
    """Partition ids -> rows rated, their summed scores, and rows without a rating (asked again or not)."""
    rated, score, unrated = [], [], []
    for p in batch["partition"]:
        entries = judged.part(int(p)).manifest_entries()
        ok = sum(int(e.get("num_ok", 0)) for e in entries)
        rated.append(ok)
        score.append(sum((e.get("mean_judge_score") or 0.0) * int(e.get("num_ok", 0)) for e in entries))
        # a row that failed, then was asked again, is counted once by the unit that asked it again
        unrated.append(sum(int(e.get("num_failed", 0)) - int(e.get("num_retried", 0)) for e in entries))
    return {"partition": batch["partition"], "rated": rated, "score": score, "unrated": unrated}


# -- Ray Data callable ---------------------------------------------------------------------------------


class JudgeWorker:
    """Ray Data callable on an actor pool: groups of one document's synthetic rows -> judged rows, committed
    into the rows' partitions as one unit of work (exactly once by task id, like the other model stages)."""

    def __init__(self, config: EntiGraphConfig, template: ChatTemplate, prompt_version: str, constrained: bool,
                 store: PartitionedStore):
        self.config = worker_config(config)  # the judge's config (context.judge_config)
        self.template, self.prompt_version, self.constrained = template, prompt_version, constrained
        self.engine = make_engine(self.config)
        self.store = store

    def __call__(self, batch):
        groups = batch.to_pylist()
        keys = [r["task_id"] for g in groups for r in g["rows"]]
        return run_unit(self.store.url, keys, self.config.resources.max_unit_attempts, lambda: self._run(groups),
                        lambda reason: self._run(groups, give_up=reason))

    def _run(self, groups: list[dict], give_up: str | None = None) -> pa.Table:
        started = time.time()
        judged, errors, requests, by_key = [], [], [], {}
        retry_keys, settled_keys = set(), set()
        for group in groups:
            for row in group["rows"]:
                row = {**row, "doc_id": group["doc_id"]}
                if give_up is not None:  # its actor died on it: a re-run asks again
                    errors.append(error_row(schema.JUDGE, row["task_id"], row["doc_id"], give_up))
                    retry_keys.add(row["task_id"])
                elif group["document"] is None:
                    errors.append(error_row(schema.JUDGE, row["task_id"], row["doc_id"],
                                            "source document not found among the current input's documents"))
                    settled_keys.add(row["task_id"])
                else:
                    requests.append(judge_request(self.template, row, {"title": group["title"],
                                                                       "text": group["document"]},
                                                  constrained=self.constrained))
                    by_key[row["task_id"]] = row
        usage = Usage()
        for result in self.engine.generate(requests) if requests else []:
            usage.add(result)
            row = by_key[result.key]
            out, reason = judged_row(row, result, self.engine.model_name, self.prompt_version)
            if out is None:
                errors.append(error_row(schema.JUDGE, row["task_id"], row["doc_id"], reason or "no rating"))
                # an outage, not an answer: a re-run asks again; an answer without a rating is kept as it is
                (retry_keys if result.transient else settled_keys).add(row["task_id"])
            else:
                judged.append(out)
        retried = {r["task_id"] for g in groups for r in g["rows"] if r.get("retry")}

        def own(ok: list[dict], failed: list[dict]) -> dict:  # each partition's marker names its own keys
            keys = {r["task_id"] for r in ok} | {e["request_key"] for e in failed}
            return {"mean_judge_score": (sum(r["judge_score"] for r in ok) / len(ok)) if ok else None,
                    "retry_keys": sorted(retry_keys & keys), "settled_keys": sorted(settled_keys & keys),
                    "num_retried": len(retried & keys)}

        return commit_partitioned(self.store, judged, errors, row_schema=schema.JUDGED, key_column="task_id",
                                  started=started, usage=usage, partition_stats=own)


class Judge(Stage):
    """Driver half: per partition, on the workers, the current synthetic rows this judge has not settled (an
    anti-join inside the partition: rated rows and rows failed for a reason about themselves), grouped by
    document and run on the judge's model actors. The driver holds P small rows, never a row or a shard name."""

    name = schema.JUDGE

    def enabled(self, ctx) -> bool:
        return ctx.config.curate.enabled and ctx.config.curate.judge

    def folder(self, ctx) -> str:
        return ctx.judge_stage

    def plan(self, ctx) -> StagePlan:
        judged, corpus = ctx.layout.partitioned(ctx.judge_stage), ctx.corpus()
        counts = run_partition_tasks(judged.num_partitions, judge_counts, corpus=corpus, judged=judged)
        expected, todo = sum(r["rows"] for r in counts), sum(r["todo"] for r in counts)
        totals = StageTotals(self.name, expected=expected, done_before=expected - todo)
        if not todo:
            return StagePlan(totals)
        plan = bounded_task(judge_todo, "judge planning")
        ds = partition_ids(judged.num_partitions).flat_map(
            plan, fn_kwargs={"corpus": corpus, "judged": judged, "group_size": ctx.config.plan.tasks_per_group},
            num_cpus=PARTITION_TASK_CPUS)
        return StagePlan(totals, dataset=ds, units=todo, worker_args={"judged": judged})

    def apply(self, ctx, plan):
        args = (ctx.judge_config, ctx.judge_template(), ctx.judge_prompts.version, ctx.constrained_judge,
                plan.worker_args["judged"])
        return units_of_work(plan.dataset, ctx.judge_config).map_batches(
            JudgeWorker, fn_constructor_args=args, **model_actor_kwargs(ctx.judge_config))
