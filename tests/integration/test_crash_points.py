"""A run killed (driver and workers, SIGKILL) at named moments, chosen by seed: in the middle of writing a
shard, between a shard's data and its marker, and in the middle of sealing partitions. The same command then
finishes the run with 0 lost and 0 duplicated keys, against an expected set computed apart from the planner
(every committed entities row through the plain task generator and the reference budget allocation)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ray_entigraph import schema, storage
from ray_entigraph.config import load_config
from ray_entigraph.planning import capacity, entigraph_tasks
from ray_entigraph.prompts import load_prompt_set
from ray_entigraph.text.plan import allocate_budget
from tests import stores

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
MOMENTS = ("mid-shard-write", "between-data-and-marker", "mid-seal")
ARGS = ["input.path=builtin:demo", "engine.kind=echo", "num_partitions=4", "extract.max_attempts=1",
        "extract.fallback=heuristic", "plan.max_pairs_per_doc=4", "plan.max_triplets_per_doc=1",
        "plan.tasks_per_group=2", "resources.batch_size=1"]


def _synthesize(out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_entigraph", "synthesize", f"output_dir={out}", *ARGS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, start_new_session=True)


def _expected(out: Path) -> set[str]:
    config = load_config(None, [f"output_dir={out}", *ARGS])
    prompts = load_prompt_set(config.synthesis.prompts)
    ents = stores.rows(out, schema.EXTRACT)
    alloc = allocate_budget({e["doc_id"]: capacity(config, len(e["entities"])) for e in ents}, None)
    return {t["task_id"] for e in ents for t in entigraph_tasks(config, prompts, e, alloc[e["doc_id"]])}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_killed_at_a_named_moment_then_rerun_is_exactly_once(seed, tmp_path):
    moment = MOMENTS[seed % len(MOMENTS)]
    nth = random.Random(seed).randint(2, 4)  # which occurrence of the moment, by seed
    out, counter = tmp_path / "run", tmp_path / "reached"
    env = {**os.environ, "RAY_ADDRESS": "", storage.FAULT_ENV: f"{moment}:{nth}:{counter}"}
    killed = _synthesize(out, env)
    assert killed.returncode == -9, f"{moment} #{nth} was not reached: {killed.stderr[-2000:]}"

    env.pop(storage.FAULT_ENV)
    rerun = _synthesize(out, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = stores.rows(out, schema.SYNTHESIZE)
    ids = [r["task_id"] for r in rows if r["kind"] != schema.KIND_SUMMARY]
    assert len(ids) == len(set(ids)), "a key committed twice"
    expected = _expected(out)
    assert len(expected) == 6 * 5 and set(ids) == expected, "a key lost or one that was never planned"
    docs = stores.rows(out, schema.INGEST)
    assert len({d["doc_id"] for d in docs}) == len(docs) == 6  # ingest, too, exactly once
