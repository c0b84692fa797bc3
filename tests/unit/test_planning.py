"""The global budget from histograms (planning.py): the water level and the remainder's threshold give every
document exactly what the driver-side reference (`text.plan.allocate_budget`) gives it in total, never more
than a document can use, and the same total; computed from bins and two integers, not a per-document table."""

from __future__ import annotations

import random

from ray_entigraph.planning import (
    RANK_SHIFT,
    allocation,
    rank_key,
    remainder_bucket,
    remainder_threshold,
    water_level,
)
from ray_entigraph.text.plan import allocate_budget


def _allocate(capacities: dict[str, int], budget: int | None, seed: int = 0) -> dict[str, int]:
    """What the partition tasks and the driver compute together, done in one process."""
    histogram: dict[int, int] = {}
    for c in capacities.values():
        histogram[c] = histogram.get(c, 0) + 1
    level, remainder = water_level(histogram, budget)
    if level is None:
        return dict(capacities)
    above = {d: rank_key(seed, d) for d, c in capacities.items() if c > level}
    buckets: dict[int, int] = {}
    for key in above.values():
        buckets[key >> RANK_SHIFT] = buckets.get(key >> RANK_SHIFT, 0) + 1
    bucket, k = remainder_bucket(buckets, remainder)
    threshold = remainder_threshold(bucket, k, [key for key in above.values() if key >> RANK_SHIFT == bucket])
    budget_scalars = {"level": level, "threshold": threshold}
    return {d: allocation(c, rank_key(seed, d), budget_scalars) for d, c in capacities.items()}


def test_histogram_budget_matches_the_reference_on_random_vectors():
    rng = random.Random(0)
    for trial in range(2000):
        n = rng.randint(1, 60)
        capacities = {f"d{trial}-{i}": rng.choice([0, 1, 3, 6, 10, 15, 21, rng.randint(0, 40)]) for i in range(n)}
        budget = rng.choice([None, rng.randint(1, max(1, sum(capacities.values()) + 5))])
        got, ref = _allocate(capacities, budget), allocate_budget(capacities, budget)
        assert sum(got.values()) == sum(ref.values())  # the same total: the budget, or every capacity
        assert all(0 <= got[d] <= capacities[d] for d in capacities)
        # the same level: per document at most one task apart from the reference (the remainder's choice)
        assert all(abs(got[d] - ref[d]) <= 1 for d in capacities)


def test_remainder_goes_to_the_smallest_rank_keys_and_is_deterministic():
    capacities = {f"d{i}": 5 for i in range(1000)}
    got = _allocate(capacities, 2 * 1000 + 37)
    extra = sorted(d for d, n in got.items() if n == 3)
    assert len(extra) == 37 and all(n in (2, 3) for n in got.values())
    assert extra == sorted(sorted(capacities, key=lambda d: rank_key(0, d))[:37])
    assert _allocate(capacities, 2 * 1000 + 37) == got
    assert _allocate(capacities, 2 * 1000 + 37, seed=1) != got  # another seed, another queue


def test_a_qa_prompt_set_writes_every_second_relation_as_questions_and_answers():
    from ray_entigraph import schema
    from ray_entigraph.config import load_config
    from ray_entigraph.planning import document_tasks
    from ray_entigraph.prompts import load_prompt_set

    config = load_config("configs/demo.yaml", ["plan.max_pairs_per_doc=4", "plan.max_triplets_per_doc=2"])
    row = {"doc_id": "d", "title": "T", "text": "x", "summary": None, "entities": ["A", "B", "C", "D"]}
    plain = document_tasks(config, load_prompt_set("entigraph-v1"), row, None)
    qa = document_tasks(config, load_prompt_set("entigraph-qa-v1"), row, None)
    assert [t["entities"] for t in qa] == [t["entities"] for t in plain]  # the same entities, the same count
    assert [t["kind"] for t in qa][1::2] == [schema.KIND_QA] * 3
    assert all(t["kind"] in (schema.KIND_PAIR, schema.KIND_TRIPLET) for t in qa[0::2])
    assert not {t["task_id"] for t in qa} & {t["task_id"] for t in plain}  # another prompt set, other requests
