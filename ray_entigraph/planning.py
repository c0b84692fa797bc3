"""Plan: entities -> relation tasks, grouped per document into units of work (EntiGraph step 2's input),
and the global task budget computed from a histogram.

Pure functions, no model, no storage: a document's tasks are emitted together and cut into groups of
`plan.tasks_per_group`, so one replica serves a document's requests back to back (prefix reuse) and the
document text travels once per group, not once per request. Tasks already committed are left out, which
is what makes a re-run finish the missing requests only.

The global budget (`plan.max_tasks_total`) is shared without a per-document table anywhere: the workers
send a histogram of document capacities (a few hundred bins at most), the driver computes the water level
L exactly as `text.plan.allocate_budget` does, and the remainder r goes one task each to the r documents
with capacity above L whose rank key (a hash of seed and doc_id) is smallest, found with a histogram of
rank-key prefixes and, in the one boundary bin, the keys themselves. The driver broadcasts two integers.
"""

from __future__ import annotations

import json
import math

from ray_entigraph import schema
from ray_entigraph.config import EntiGraphConfig, RewriteFormat
from ray_entigraph.prompts import PromptSet
from ray_entigraph.text.conditions import MissingColumn, parse_conditions
from ray_entigraph.text.identity import derive_seed, request_key
from ray_entigraph.text.plan import plan_entity_subsets, task_capacity

RANK_BUCKET_BITS = 16  # rank keys are 63-bit; their top 16 bits bucket them for the remainder's histogram
RANK_SHIFT = 63 - RANK_BUCKET_BITS


def _task(config: EntiGraphConfig, prompts: PromptSet, doc_id: str, kind: str, entities: tuple[str, ...],
          key_kind: str | None = None, text: str | None = None) -> dict:
    sampling = config.extract.sampling if kind == schema.KIND_SUMMARY else config.synthesis.sampling
    return {
        "task_id": request_key(
            doc_id=doc_id, kind=key_kind or kind, entities=entities, prompt_version=prompts.version,
            model=config.model.name, sampling=sampling.key(), seed=config.seed,
        ),
        "kind": kind,
        "entities": list(entities),
        "seed": derive_seed(config.seed, doc_id, key_kind or kind, *entities),
        "text": text,
        "max_new_tokens": None,  # the sampling's, unless the task sets its own (rewrite budgets)
    }


def entigraph_tasks(config: EntiGraphConfig, prompts: PromptSet, row: dict, max_tasks: int | None) -> list[dict]:
    """A summary task (its text is the extraction's summary) plus pair and triplet tasks for one document."""
    tasks = []
    if row.get("summary"):
        tasks.append(_task(config, prompts, row["doc_id"], schema.KIND_SUMMARY, (), text=row["summary"]))
    subsets = plan_entity_subsets(
        list(row["entities"]),
        seed=derive_seed(config.seed, row["doc_id"], "plan"),
        max_pairs=config.plan.max_pairs_per_doc,
        max_triplets=config.plan.max_triplets_per_doc,
        max_tasks=max_tasks,
    )
    for i, subset in enumerate(subsets):
        kind = schema.KIND_PAIR if len(subset) == 2 else schema.KIND_TRIPLET
        if prompts.relation_qa is not None and prompts.qa_every and i % prompts.qa_every == prompts.qa_every - 1:
            kind = schema.KIND_QA  # the same entities, written as questions and answers
        tasks.append(_task(config, prompts, row["doc_id"], kind, subset))
    return tasks


def rephrase_tasks(config: EntiGraphConfig, prompts: PromptSet, row: dict) -> list[dict]:
    tasks = []
    for style in prompts.rephrase:
        for repeat in range(config.plan.rephrase_repeats):
            kind = schema.KIND_REPHRASE_PREFIX + style
            tasks.append(_task(config, prompts, row["doc_id"], kind, (), key_kind=f"{kind}#{repeat}"))
    return tasks


def rewrite_columns(row: dict) -> dict:
    """What a rewrite rule may test: the document's input metadata and its own columns."""
    meta = json.loads(row.get("metadata_json") or "{}")
    own = {k: row[k] for k in ("num_tokens", "source", "title", "chunk_index", "num_chunks") if k in row}
    return {**meta, **own}


def rewrite_budget(config: EntiGraphConfig, num_tokens: int) -> int:
    """A rewrite's max_new_tokens: rewrite.output_ratio x the document's tokens, within [min_new_tokens,
    synthesis.sampling.max_new_tokens]."""
    cap = config.synthesis.sampling.max_new_tokens
    return min(cap, max(config.rewrite.min_new_tokens, math.ceil(config.rewrite.output_ratio * num_tokens)))


def rewrite_tasks(config: EntiGraphConfig, prompts: PromptSet, row: dict) -> list[dict]:
    """The formats whose rules this document satisfies (every format of the prompt set without
    rewrite.formats), `repeats` tasks each, with a token budget in proportion to the document."""
    formats = config.rewrite.formats or [RewriteFormat(name=name) for name in prompts.rephrase]
    columns = rewrite_columns(row)
    budget = rewrite_budget(config, int(row.get("num_tokens") or 0))
    tasks = []
    for fmt in formats:
        try:
            if not all(c.holds(columns) for c in parse_conditions(tuple(fmt.when))):
                continue
        except MissingColumn:  # a document without the column does not get this format
            continue
        kind = schema.KIND_REWRITE_PREFIX + fmt.name
        for repeat in range(fmt.repeats):
            task = _task(config, prompts, row["doc_id"], kind, (), key_kind=f"{kind}#{repeat}")
            tasks.append({**task, "max_new_tokens": budget})
    return tasks


def capacity(config: EntiGraphConfig, num_entities: int) -> int:
    return task_capacity(num_entities, config.plan.max_pairs_per_doc, config.plan.max_triplets_per_doc)


def group_tasks(row: dict, tasks: list[dict], done: frozenset[str] | set[str], size: int) -> list[dict]:
    """Drop committed tasks and cut the rest into groups that carry the document once."""
    todo = [t for t in tasks if t["task_id"] not in done]
    return [
        {"doc_id": row["doc_id"], "title": row["title"], "text": row["text"], "tasks": todo[i : i + size]}
        for i in range(0, len(todo), size)
    ]


def document_tasks(config: EntiGraphConfig, prompts: PromptSet, row: dict, budget: dict | None) -> list[dict]:
    """Every task the plan gives one document (an entities row, or a documents row for rephrase)."""
    if config.synthesis.augmenter == "rephrase":
        return rephrase_tasks(config, prompts, row)
    if config.synthesis.augmenter == "rewrite":
        return rewrite_tasks(config, prompts, row)
    limit = None
    if budget is not None:
        limit = allocation(capacity(config, len(row["entities"] or [])), rank_key(config.seed, row["doc_id"]), budget)
    return entigraph_tasks(config, prompts, row, limit)


# -- the global budget from histograms -------------------------------------------------------------------


def rank_key(seed: int, doc_id: str) -> int:
    """A document's place in the queue for the budget's remainder: a 63-bit hash of (seed, doc_id)."""
    return derive_seed(seed, doc_id, "budget-rank")


def water_level(histogram: dict[int, int], budget: int | None) -> tuple[int | None, int]:
    """(level L, remainder r) from {capacity: number of documents}: every document gets min(capacity, L) and
    r documents with capacity > L get one more. (None, 0) when the budget does not bind."""
    if budget is None or sum(c * n for c, n in histogram.items()) <= budget:
        return None, 0
    lo, hi = 0, max(histogram, default=0)
    while lo < hi:  # the largest L with sum(min(c, L)) <= budget, as text.plan.allocate_budget finds it
        mid = (lo + hi + 1) // 2
        if sum(min(c, mid) * n for c, n in histogram.items()) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo, budget - sum(min(c, lo) * n for c, n in histogram.items())


def remainder_bucket(buckets: dict[int, int], remainder: int) -> tuple[int, int]:
    """(bucket b, k): the remainder fills every rank bucket below b and k documents of bucket b."""
    below = 0
    for b in sorted(buckets):
        if below + buckets[b] > remainder:
            return b, remainder - below
        below += buckets[b]
    return (1 << RANK_BUCKET_BITS), 0  # every document above the level gets one more


def remainder_threshold(bucket: int, k: int, keys_in_bucket: list[int]) -> int:
    """The rank-key threshold T: documents above the level with rank key < T get one more task."""
    if k == 0:
        return bucket << RANK_SHIFT
    return sorted(keys_in_bucket)[k - 1] + 1


def allocation(cap: int, key: int, budget: dict) -> int:
    """A document's task count under a binding budget {"level": L, "threshold": T}."""
    level = budget["level"]
    return min(cap, level) + (1 if cap > level and key < budget["threshold"] else 0)


def plan_groups(row: dict, *, config: EntiGraphConfig, prompts: PromptSet, budget: dict | None,
                done: set[str]) -> list[dict]:
    """One entities (or documents) row -> its task groups, committed tasks left out."""
    return group_tasks(row, document_tasks(config, prompts, row, budget), done, config.plan.tasks_per_group)
