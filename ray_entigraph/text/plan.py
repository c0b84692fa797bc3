"""Relation-task planning: which entity pairs and triplets of a document get a request.

Deterministic from (seed, doc_id); never enumerates all triplets (100 entities give 161,700 of them): it
samples combination indices directly. Budgets: a per-document cap and a global cap shared fairly across
documents (water-filling over each document's capacity).
"""

from __future__ import annotations

import math
import random
from itertools import combinations


def num_pairs(n: int) -> int:
    return math.comb(n, 2)


def num_triplets(n: int) -> int:
    return math.comb(n, 3)


def _sample_combinations(n: int, k: int, size: int, rng: random.Random) -> list[tuple[int, ...]]:
    """`size` distinct sorted k-subsets of range(n), without enumerating C(n, k) when it is large."""
    total = math.comb(n, k)
    size = min(size, total)
    if size <= 0:
        return []
    if total <= 4 * size or total <= 2048:
        return rng.sample(list(combinations(range(n), k)), size)
    chosen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < size:  # total > 4*size, so each draw is new with probability > 3/4
        combo = tuple(sorted(rng.sample(range(n), k)))
        if combo not in chosen:
            chosen.add(combo)
            out.append(combo)
    return out


def plan_entity_subsets(
    entities: list[str],
    *,
    seed: int,
    max_pairs: int | None,
    max_triplets: int,
    max_tasks: int | None = None,
) -> list[tuple[str, ...]]:
    """Entity tuples (pairs first, then triplets) for one document, in prompt order.

    All pairs unless `max_pairs` caps them (then a seeded sample), plus up to `max_triplets` sampled
    triplets; `max_tasks` trims the total (pairs keep priority, as in the paper).
    """
    n = len(entities)
    rng = random.Random(seed)
    pair_cap = num_pairs(n) if max_pairs is None else min(max_pairs, num_pairs(n))
    triplet_cap = min(max_triplets, num_triplets(n))
    if max_tasks is not None:
        pair_cap = min(pair_cap, max_tasks)
        triplet_cap = min(triplet_cap, max_tasks - pair_cap)
    if pair_cap == num_pairs(n):
        pairs: list[tuple[int, ...]] = list(combinations(range(n), 2))
        rng.shuffle(pairs)
    else:
        pairs = _sample_combinations(n, 2, pair_cap, rng)
    triplets = _sample_combinations(n, 3, triplet_cap, rng)
    return [tuple(entities[i] for i in combo) for combo in pairs + triplets]


def task_capacity(num_entities: int, max_pairs: int | None, max_triplets: int) -> int:
    """How many relation tasks a document with `num_entities` entities can yield under the per-doc caps."""
    pairs = num_pairs(num_entities) if max_pairs is None else min(max_pairs, num_pairs(num_entities))
    return pairs + min(max_triplets, num_triplets(num_entities))


def allocate_budget(capacities: dict[str, int], budget: int | None) -> dict[str, int]:
    """Share a global task budget across documents: every document gets min(capacity, level), where the
    level is as high as the budget allows; the remainder goes one task each to documents in id order.
    Deterministic, and never more than a document can use."""
    if budget is None or sum(capacities.values()) <= budget:
        return dict(capacities)
    lo, hi = 0, max(capacities.values(), default=0)
    while lo < hi:  # largest level L with sum(min(c, L)) <= budget
        mid = (lo + hi + 1) // 2
        if sum(min(c, mid) for c in capacities.values()) <= budget:
            lo = mid
        else:
            hi = mid - 1
    alloc = {d: min(c, lo) for d, c in capacities.items()}
    left = budget - sum(alloc.values())
    for d in sorted(capacities):
        if left <= 0:
            break
        if alloc[d] < capacities[d]:
            alloc[d] += 1
            left -= 1
    return alloc


def estimate_synthesis(
    doc_tokens: dict[str, int],
    entity_counts: dict[str, int],
    *,
    extract_overhead: int,
    relation_overhead: int,
    extract_max_new: int,
    relation_max_new: int,
    max_pairs: int | None,
    max_triplets: int,
    budget: int | None,
    rephrase_per_doc: int | None = None,
    tasks_per_doc: dict[str, int] | None = None,
) -> dict[str, int]:
    """Requests and tokens a synthesis run will use (for `--dry-run`). Prompt tokens are exact up to the
    chat template; generated tokens are upper bounds (max_new_tokens per request). `tasks_per_doc`: each
    document's own number of requests and no extraction (the rewrite augmenter)."""
    if tasks_per_doc is not None:
        n_rel = {d: tasks_per_doc.get(d, 0) for d in doc_tokens}
        n_extract = 0
    elif rephrase_per_doc is not None:
        n_rel = {d: rephrase_per_doc for d in doc_tokens}
        n_extract = 0
    else:
        caps = {d: task_capacity(entity_counts[d], max_pairs, max_triplets) for d in doc_tokens}
        n_rel = allocate_budget(caps, budget)
        n_extract = len(doc_tokens)
    relation_prompt = sum(n_rel[d] * (t + relation_overhead) for d, t in doc_tokens.items())
    prompt = relation_prompt
    if n_extract:
        prompt += sum(t + extract_overhead for t in doc_tokens.values())
    return {
        "num_documents": len(doc_tokens),
        "num_document_tokens": sum(doc_tokens.values()),
        "num_extract_requests": n_extract,
        "num_relation_requests": sum(n_rel.values()),
        "num_prompt_tokens": prompt,
        "relation_prompt_tokens": relation_prompt,
        "max_generated_tokens": n_extract * extract_max_new + sum(n_rel.values()) * relation_max_new,
        "relation_max_generated_tokens": sum(n_rel.values()) * relation_max_new,
    }
