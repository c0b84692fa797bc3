"""A run killed (driver and workers, SIGKILL) at named moments: in the middle of writing a shard, between a
shard's data and its marker, and in the middle of sealing partitions, one after the other on one folder. The
same command then finishes the run with 0 lost and 0 duplicated keys, against an expected set computed apart
from the planner (every committed entities row through the plain task generator and the reference budget
allocation)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
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
DEFAULTS = str(ROOT / "tests" / "fixtures" / "builtin-defaults.yaml")  # the CLI's own default is the demo preset
MOMENTS = ("mid-shard-write", "between-data-and-marker", "mid-seal")
ARGS = ["input.path=builtin:demo", "engine.kind=echo", "num_partitions=4", "extract.max_attempts=1",
        "extract.fallback=heuristic", "plan.max_pairs_per_doc=4", "plan.max_triplets_per_doc=1",
        "plan.tasks_per_group=2", "resources.batch_size=1"]


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "ray_entigraph", "synthesize", "--config", DEFAULTS,
            f"output_dir={out}", *ARGS]


def _killed_at(out: Path, env: dict, kill_file: Path) -> int:
    """Run until the fault point stops a process, then SIGKILL that process and the whole run."""
    proc = subprocess.Popen(_command(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    try:
        while not kill_file.exists() or not kill_file.read_text():
            assert proc.poll() is None, f"the run ended before the fault point: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(int(kill_file.read_text()), signal.SIGKILL)  # the process at the moment (driver or worker)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # and the rest of the run: driver, Ray, its workers
        proc.wait(timeout=60)
    return proc.returncode


def _expected(out: Path) -> set[str]:
    config = load_config(None, [f"output_dir={out}", *ARGS])
    prompts = load_prompt_set(config.synthesis.prompts)
    ents = stores.rows(out, schema.EXTRACT)
    alloc = allocate_budget({e["doc_id"]: capacity(config, len(e["entities"])) for e in ents}, None)
    return {t["task_id"] for e in ents for t in entigraph_tasks(config, prompts, e, alloc[e["doc_id"]])}


def test_killed_at_each_named_moment_in_turn_then_rerun_is_exactly_once(tmp_path):
    """One output folder, killed three times in a row, each run at another moment (the n-th time it is
    reached, n drawn per moment): every rerun resumes what the killed runs left, and the last one finishes
    with every planned key committed exactly once."""
    out = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ""}
    rng = random.Random(0)
    for moment in MOMENTS:
        counter = tmp_path / f"reached-{moment}"
        fault = {storage.FAULT_ENV: f"{moment}:{rng.randint(2, 4)}:{counter}"}
        assert _killed_at(out, {**env, **fault}, Path(f"{counter}.kill")) == -signal.SIGKILL, moment

    rerun = subprocess.run(_command(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = stores.rows(out, schema.SYNTHESIZE)
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a key committed twice"
    expected = _expected(out)
    # 6 documents x (4 pairs + 1 triplet), plus a summary row for each document whose extraction gave one
    assert len([t for t in expected if t]) >= 6 * 5 and set(ids) == expected, "a key lost or one never planned"
    docs = stores.rows(out, schema.INGEST)
    assert len({d["doc_id"] for d in docs}) == len(docs) == 6  # ingest, too, exactly once


def test_a_unit_whose_actor_dies_every_time_is_recorded_failed_and_the_rerun_completes(tmp_path):
    """Through `run`: one synthesis unit SIGKILLs its actor every time it runs (as an out-of-memory kill would):
    it is tried resources.max_unit_attempts times, then its requests are recorded as failed with the reason, the
    rest of the run completes and the step is "done with 2 failed"; the next `run` (without the fault) runs the
    step again and retries exactly those: 0 lost, 0 duplicated."""
    from ray_entigraph.stages.base import KILL_UNIT_ENV

    out, poisoned = tmp_path / "run", tmp_path / "poisoned"
    env = {**os.environ, "RAY_ADDRESS": "", KILL_UNIT_ENV: f"{schema.SYNTHESIZE}:{poisoned}"}
    cmd = [sys.executable, "-m", "ray_entigraph", "run", "--until", "synthesize", "--config", DEFAULTS,
           f"output_dir={out}", *ARGS, "resources.max_unit_attempts=2"]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stderr[-3000:]
    assert poisoned.read_text()  # the fault did fire
    rows, failed = stores.rows(out, schema.SYNTHESIZE), stores.error_rows(out, schema.SYNTHESIZE)
    expected = _expected(out)
    ok, bad = [r["task_id"] for r in rows], [e["request_key"] for e in failed]
    assert len(ok) == len(set(ok)) and not set(ok) & set(bad), "a key committed twice"
    assert set(ok) | set(bad) == expected, "a key lost"
    assert len(bad) == 2  # the poisoned unit: one group of plan.tasks_per_group=2 tasks
    assert all("its worker died 2 times" in e["error"] and "max_unit_attempts=2" in e["error"] for e in failed)
    assert "synthesize: done" in first.stdout and "with 2 failed (the next run retries them)" in first.stdout

    env.pop(KILL_UNIT_ENV)
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "done earlier with 2 failed; running it again to retry them" in rerun.stdout
    assert "[synthetic] 2/2 requests" in rerun.stdout + rerun.stderr  # only the 2 failed ones were asked
    ids = [r["task_id"] for r in stores.rows(out, schema.SYNTHESIZE)]
    assert len(ids) == len(set(ids)) and set(ids) == expected
