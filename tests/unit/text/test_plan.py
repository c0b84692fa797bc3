import math
import random
import time

import pytest

from ray_entigraph.text.plan import (
    allocate_budget,
    estimate_synthesis,
    plan_entity_subsets,
    task_capacity,
)

ENTS = [f"E{i}" for i in range(12)]


def test_deterministic_for_same_seed_and_different_for_other_seed():
    a = plan_entity_subsets(ENTS, seed=1, max_pairs=None, max_triplets=10)
    b = plan_entity_subsets(ENTS, seed=1, max_pairs=None, max_triplets=10)
    c = plan_entity_subsets(ENTS, seed=2, max_pairs=None, max_triplets=10)
    assert a == b and a != c


def test_all_pairs_then_capped_triplets():
    tasks = plan_entity_subsets(ENTS, seed=0, max_pairs=None, max_triplets=7)
    pairs = [t for t in tasks if len(t) == 2]
    triplets = [t for t in tasks if len(t) == 3]
    assert len(pairs) == math.comb(12, 2) and len(set(map(frozenset, pairs))) == len(pairs)
    assert len(triplets) == 7 and len(set(map(frozenset, triplets))) == 7
    assert tasks.index(pairs[-1]) < tasks.index(triplets[0])  # pairs first


def test_caps_and_per_doc_limit():
    tasks = plan_entity_subsets(ENTS, seed=0, max_pairs=5, max_triplets=3, max_tasks=6)
    assert len(tasks) == 6 and sum(len(t) == 2 for t in tasks) == 5
    assert plan_entity_subsets(ENTS[:2], seed=0, max_pairs=None, max_triplets=5) == [("E0", "E1")]
    assert plan_entity_subsets(ENTS[:1], seed=0, max_pairs=None, max_triplets=5) == []


def test_hundred_entities_never_enumerates_triplets(monkeypatch):
    import ray_entigraph.text.plan as plan

    calls = []
    real = plan.combinations
    monkeypatch.setattr(plan, "combinations", lambda it, k: calls.append(k) or real(it, k))
    ents = [f"E{i}" for i in range(100)]
    t0 = time.perf_counter()
    tasks = plan_entity_subsets(ents, seed=3, max_pairs=200, max_triplets=500)
    assert time.perf_counter() - t0 < 1.0
    assert 3 not in calls and 2 not in calls  # neither C(100,3)=161,700 nor C(100,2) enumerated
    triplets = [frozenset(t) for t in tasks if len(t) == 3]
    assert len(triplets) == 500 == len(set(triplets))
    assert all(len(set(t)) == len(t) for t in tasks)


def test_capacity():
    assert task_capacity(100, None, 10) == math.comb(100, 2) + 10
    assert task_capacity(3, 1, 10) == 1 + 1


@pytest.mark.parametrize("trial", range(30))
def test_allocation_properties(trial):
    rng = random.Random(trial)
    caps = {f"d{i}": rng.randint(0, 50) for i in range(rng.randint(1, 20))}
    budget = rng.randint(0, 400)
    alloc = allocate_budget(caps, budget)
    assert set(alloc) == set(caps)
    assert all(0 <= alloc[d] <= caps[d] for d in caps)
    assert sum(alloc.values()) == min(budget, sum(caps.values()))
    # fair: nobody below capacity gets 2+ fewer than anybody else
    starved = [alloc[d] for d in caps if alloc[d] < caps[d]]
    if starved:
        assert max(alloc.values()) - min(starved) <= 1
    assert allocate_budget(caps, budget) == alloc


def test_no_budget_means_capacity():
    assert allocate_budget({"a": 3}, None) == {"a": 3}
    est = estimate_synthesis({"a": 10, "b": 20}, {"a": 3, "b": 4}, extract_overhead=5, relation_overhead=7,
                             extract_max_new=2, relation_max_new=3, max_pairs=None, max_triplets=1, budget=None)
    assert est["num_relation_requests"] == 3 + 1 + 6 + 1
    assert est["num_prompt_tokens"] == 4 * (10 + 7) + 7 * (20 + 7) + (10 + 5) + (20 + 5)
