"""Judge: a model rates every synthetic row against its source document (`curate.judge`), the model-based
grounding check beside the lexical one of `text/grounding.py`.

The judge prompt (`judge-v1`) puts the document first and the text after it, so the rows of one document
share their long prefix; the answer is a rating from 1 to 5, stored as `judge_score = (rating - 1) / 4`.
Engines that decode under a JSON schema (vLLM, OpenAI-compatible servers) are held to `{"rating": 1..5}`;
others get a "Rating: " prefill and the first digit from 1 to 5 of the answer. An answer with no rating is
recorded in the errors table with the answer itself, never guessed.

One judged shard per synthetic shard, committed with the same protocol as every stage, under
`output_dir/judged/<judge id>/`; the judge id hashes the judge model, its prompt version and whether the
answer was constrained, so another judge never reuses these ratings. The curate stage reads them by
synthetic shard name.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pyarrow as pa

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.context import JUDGE_SAMPLING_FIELDS
from ray_entigraph.corpus import Corpus, documents_by_id, synthetic_shards
from ray_entigraph.engines import GenerationRequest, GenerationResult, SamplingParams, make_engine
from ray_entigraph.layout import Layout, shard_basename
from ray_entigraph.ledger import StageTotals
from ray_entigraph.prompts import ChatTemplate, render, render_chat
from ray_entigraph.stages.base import (
    USAGE_FIELDS,
    Stage,
    StagePlan,
    Usage,
    commit_unit,
    error_row,
    items,
    manifest_row_table,
    model_actor_kwargs,
    run_unit,
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


def partition_documents(corpus: Corpus, partition: int, cache: dict) -> dict[str, dict]:
    """doc_id -> document row of one partition's current documents, read once per partition (`cache` holds the
    last partition read: the judge's units come in partition order)."""
    with cache.setdefault("lock", threading.Lock()):  # an actor may run several units at once
        if cache.get("partition") != partition:
            cache["docs"] = documents_by_id(corpus, partition)
            cache["partition"] = partition
        return cache["docs"]


# -- Ray Data callable ---------------------------------------------------------------------------------


class JudgeWorker:
    """Ray Data callable on an actor pool: synthetic shard URLs -> one committed judged shard each."""

    def __init__(self, config: EntiGraphConfig, template: ChatTemplate, prompt_version: str, constrained: bool,
                 stage: str, corpus: Corpus, layout: Layout | None = None):
        self.config = worker_config(config)  # the judge's config (context.judge_config)
        self.template, self.prompt_version, self.constrained = template, prompt_version, constrained
        self.engine = make_engine(self.config)
        self.corpus, self._documents = corpus, {}  # documents read per partition, the last one kept
        self.store = (layout or Layout(config.output_dir)).store(stage)

    def __call__(self, batch: dict):
        return pa.concat_tables([
            run_unit(self.store.url, [str(item["url"])], self.config.resources.max_unit_attempts,
                     lambda item=item: self._judge_shard(item),
                     lambda reason, item=item: self._judge_shard(item, give_up=reason))
            for item in (dict(zip(batch, values)) for values in zip(*batch.values()))])

    def _judge_shard(self, item: dict, give_up: str | None = None) -> pa.Table:
        """Rate a synthetic shard's rows (`item["url"]`). On a re-run after transient failures, `item` names the
        judged shard's earlier marker: its rated rows and its other failures are kept as they are, and only the
        rows it lists as retryable are sent again; its engine usage is carried over."""
        started = time.time()
        url, before = str(item["url"]), json.loads(str(item["before"]) or "{}")
        rows = storage.read_parquet(url, ["task_id", "doc_id", "text"]).to_pylist()
        judged = storage.read_parquet(storage.join(self.store.url, before["file"])).to_pylist() if before else []
        errors = []
        if before:
            retry = set(before.get("retry_keys") or [])
            rows = [r for r in rows if r["task_id"] in retry]
            if before.get("error_file"):
                errors = [e for e in storage.read_parquet(storage.join(self.config.output_dir, before["error_file"]))
                          .to_pylist() if e["request_key"] not in retry]
        kept = len(judged)
        docs = partition_documents(self.corpus, int(item["partition"]), self._documents) if give_up is None else {}
        requests, by_key, retry_keys = [], {}, []
        for row in rows:
            if give_up is not None:  # its actor died on it: a re-run asks again
                errors.append(error_row(schema.JUDGE, row["task_id"], row["doc_id"], give_up))
                retry_keys.append(row["task_id"])
                continue
            if row["doc_id"] not in docs:
                errors.append(error_row(schema.JUDGE, row["task_id"], row["doc_id"],
                                        "source document not found among the current input's documents"))
                continue
            requests.append(judge_request(self.template, row, docs[row["doc_id"]], constrained=self.constrained))
            by_key[row["task_id"]] = row
        usage = Usage(**{k: int(before.get(k, 0)) for k in USAGE_FIELDS})
        for result in self.engine.generate(requests) if requests else []:
            usage.add(result)
            row = by_key[result.key]
            out, reason = judged_row(row, result, self.engine.model_name, self.prompt_version)
            if out is None:
                errors.append(error_row(schema.JUDGE, row["task_id"], row["doc_id"], reason or "no rating"))
                if result.transient:  # an outage, not an answer: a re-run asks again
                    retry_keys.append(row["task_id"])
            else:
                judged.append(out)
        name = shard_basename(url)
        mean = (sum(r["judge_score"] for r in judged) / len(judged)) if judged else None
        table = commit_unit(self.store, judged, errors, row_schema=schema.JUDGED, key_column=None, started=started,
                            usage=usage, stats={"source_shard": name, "mean_judge_score": mean,
                                                "num_retryable": len(retry_keys), "retry_keys": retry_keys},
                            name_keys=[name, self.store.stage])
        if not before:
            return table
        # what this call did: the rows it rated and the ones still failing of those it asked again
        row = table.to_pylist()[0]
        row.update(num_ok=len(judged) - kept, num_failed=len(rows) - (len(judged) - kept))
        for k in USAGE_FIELDS:
            row[k] -= int(before.get(k, 0))
        return manifest_row_table([row])


class Judge(Stage):
    """Driver half: every committed synthetic shard not judged yet by this judge, or judged while the engine
    failed on some of its rows (those rows are sent again), one unit of work each."""

    name = schema.JUDGE

    def enabled(self, ctx) -> bool:
        return ctx.config.curate.enabled and ctx.config.curate.judge

    def folder(self, ctx) -> str:
        return ctx.judge_stage

    def plan(self, ctx) -> StagePlan:
        store = storage.StageStore(ctx.config.output_dir, self.folder(ctx))
        sources = synthetic_shards(ctx.corpus())
        judged = {e.get("source_shard"): e for e in store.manifest_entries()}
        # a shard is judged unless some of its rows failed for a reason that says nothing about them (an outage,
        # a dead actor): those are sent again, the rest of the shard kept. An answer without a rating, a prompt
        # the engine refuses, or a row whose document is gone is not asked again (the judge decodes greedily).
        todo = [(url, e, judged.get(e["shard"])) for url, e in sources
                if e["shard"] not in judged or int(judged[e["shard"]].get("num_retryable", 0))]
        expected = sum(int(e.get("rows", 0)) for _, e in sources)
        left = sum(int(j["num_retryable"]) if j else int(e.get("rows", 0)) for _, e, j in todo)
        totals = StageTotals(self.name, expected=expected, done_before=expected - left)
        if not todo:
            return StagePlan(totals)
        return StagePlan(totals, units=left, dataset=items([  # in partition order: an actor reads each partition once
            {"url": url, "partition": e["partition"], "before": json.dumps(j) if j else ""} for url, e, j in todo]))

    def apply(self, ctx, plan):
        kwargs = model_actor_kwargs(ctx.judge_config)
        kwargs.update(batch_size=1, batch_format="numpy")  # one synthetic shard per call = one judged shard
        args = (ctx.judge_config, ctx.judge_template(), ctx.judge_prompts.version, ctx.constrained_judge,
                self.folder(ctx), ctx.corpus(), ctx.layout)
        return plan.dataset.map_batches(JudgeWorker, fn_constructor_args=args, **kwargs)
