"""Object storage and crash recovery: every stage through s3:// on a real S3 endpoint (moto on loopback),
a driver killed with SIGKILL mid-run and re-run, and the endpoint going away mid-run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_entigraph import schema, storage
from ray_entigraph.config import load_config
from ray_entigraph.context import RunContext
from ray_entigraph.pipeline import synthesize
from tests import stores

from .test_pipeline import _expected_task_ids, tiny_config

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = str(ROOT / "tests" / "fixtures" / "builtin-defaults.yaml")  # the CLI's own default is the demo preset


def _committed_rows(out: str, stage: str) -> list[dict]:
    return stores.rows(out, stage)


def _assert_markers_match_shards(out: str, stage: str) -> None:
    """No partial shard is readable: every committed marker names a complete file with its checksum."""
    store = stores.store(out, stage)
    for p in range(store.num_partitions):
        part = store.part(p)
        for entry in part.manifest_entries():
            data = storage.read_bytes(storage.join(part.url, entry["file"]))
            assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]


def test_every_stage_through_s3(ray_local, tiny_model_dir, small_corpus, s3_bucket, monkeypatch):
    corpus_url = f"{s3_bucket}/input/corpus.jsonl"
    storage.write_bytes(corpus_url, small_corpus.read_bytes())
    out = f"{s3_bucket}/runs/r1"
    config = tiny_config(tiny_model_dir, corpus_url, out)
    summary = synthesize(config)
    assert summary.num_synthetic_rows > 0
    for stage in schema.STAGES:
        assert _committed_rows(out, stage), stage
        _assert_markers_match_shards(out, stage)
    assert load_config(None, []).model_validate(
        __import__("yaml").safe_load(storage.read_text(f"{out}/config.yaml"))) == config
    rows = _committed_rows(out, schema.SYNTHESIZE)
    assert {r["task_id"] for r in rows} == _expected_task_ids(config) and len(rows) == len({r["task_id"] for r in rows})
    # the corpus opens with `datasets` straight from the object store
    import datasets
    import huggingface_hub.constants

    # the suite runs with HF_HUB_OFFLINE=1 (no hub here), which datasets also applies to s3:// URLs
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    files = stores.store(out, schema.SYNTHESIZE).all_shard_urls()
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               storage_options={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    assert ds.num_rows == len(rows)
    # status reads the run from storage alone
    proc = subprocess.run([sys.executable, "-m", "ray_entigraph", "status", out, "--json"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["stages"]["synthetic"]["num_ok"] == len(rows)


def _cli(out, corpus, model_dir, *extra):
    return [sys.executable, "-m", "ray_entigraph", "synthesize", "--config", DEFAULTS,
            f"input.path={corpus}", f"output_dir={out}",
            f"model.name={model_dir}", "model.dtype=float32", "ingest.max_document_tokens=256",
            "extract.max_attempts=1",
            "extract.sampling.max_new_tokens=12", "synthesis.sampling.max_new_tokens=24", "plan.max_pairs_per_doc=10",
            "plan.max_triplets_per_doc=4", "plan.tasks_per_group=2", "resources.batch_size=1", *extra]


def _wait_for_markers(out: str, stage: str, n: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        fs, path = storage.filesystem(storage.join(out, stage))
        fs.invalidate_cache()
        count = len(fs.glob(f"{path}/*/p=*/{storage.COMMITTED}/*.json"))
        if count >= n:
            return count
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    raise AssertionError(f"no {n} committed {stage} shards within {timeout}s")


def test_sigkill_mid_run_then_rerun_is_exactly_once(tiny_model_dir, small_corpus, tmp_path):
    out = str(tmp_path / "run")
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray instance, killed with it
    cmd = _cli(out, small_corpus, tiny_model_dir)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_markers(out, schema.SYNTHESIZE, 3, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    state = json.loads(storage.read_text(f"{out}/run.json"))
    assert state["state"] == "running"  # killed partway, not after the end
    before = _committed_rows(out, schema.SYNTHESIZE)
    _assert_markers_match_shards(out, schema.SYNTHESIZE)

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    config = load_config(f"{out}/config.yaml")
    rows = _committed_rows(out, schema.SYNTHESIZE)
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate rows"
    assert set(ids) == _expected_task_ids(config), "missing or unexpected rows"
    assert {r["task_id"] for r in before} < set(ids)
    _assert_markers_match_shards(out, schema.SYNTHESIZE)


def test_s3_endpoint_that_stops_answering_fails_within_the_timeouts_then_rerun_completes(
        tiny_model_dir, small_corpus, s3_endpoint, s3_bucket):
    """The object store accepts connections and never answers (a blackhole on loopback) mid-synthesis: with
    storage.read_timeout_s=2 and storage.max_attempts=2, the run fails with the root cause well within the bound
    below, and the same command finishes the job once the endpoint answers again: 0 lost, 0 duplicated."""
    from ..conftest import PausableProxy

    proxy = PausableProxy(s3_endpoint.port)
    out = f"{s3_bucket}/runs/outage"
    env = {**os.environ, "RAY_ADDRESS": "", "AWS_ENDPOINT_URL": proxy.url}
    cmd = _cli(out, small_corpus, tiny_model_dir, "storage.connect_timeout_s=2", "storage.read_timeout_s=2",
               "storage.max_attempts=2", "plan.max_pairs_per_doc=4", "plan.max_triplets_per_doc=1")
    bound_s = 150  # each request gives up after 2 x 2 s plus backoff; the driver then records the failure
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "RAY_ENTIGRAPH_TEST_ENDPOINT": proxy.url},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        try:
            _wait_for_markers(out, schema.SYNTHESIZE, 2, proc)
        finally:
            os.environ["AWS_ENDPOINT_URL"] = s3_endpoint.url
            storage.BoundedS3FileSystem.clear_instance_cache()  # this process reads the endpoint itself again
        proxy.blackhole()  # the object store hangs mid-run
        hung_at = time.time()
        try:
            _, stderr = proc.communicate(timeout=bound_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate(timeout=30)
            raise AssertionError(f"the run still ran {bound_s}s after the endpoint hung: {stderr[-4000:]}") from None
        failed_after = time.time() - hung_at
        print(f"blackholed S3 endpoint: the run failed {failed_after:.1f}s after the endpoint stopped answering")
        assert proc.returncode == 2, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        assert "ray-entigraph synthesize: error:" in last and "re-run the same command" in last, last
        assert "timeout" in last.lower() or "timed out" in last.lower(), last
        proxy.resume()  # the endpoint answers again: the same command finishes the job
        before = _committed_rows(out, schema.SYNTHESIZE)
        assert before  # what was committed before the outage is still there
        _assert_markers_match_shards(out, schema.SYNTHESIZE)
        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        proxy.stop()
    config = load_config(None, []).model_validate(__import__("yaml").safe_load(storage.read_text(f"{out}/config.yaml")))
    rows = _committed_rows(out, schema.SYNTHESIZE)
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids)) and set(ids) == _expected_task_ids(config)
    assert {r["task_id"] for r in before} <= set(ids)


def test_worker_actor_killed_mid_run(ray_local, tiny_model_dir, small_corpus, tmp_path):
    """SIGKILL the model actor after its first commit: Ray restarts it and retries the unit in flight; since a
    unit's shard name is a hash of its request keys, a retried unit overwrites rather than duplicates."""
    import threading

    out = str(tmp_path / "run")
    config = tiny_config(tiny_model_dir, small_corpus, out, "synthesis.sampling.max_new_tokens=24",
                         "plan.max_pairs_per_doc=10", "plan.max_triplets_per_doc=4", "resources.batch_size=1")
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = synthesize(config)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    store = RunContext.resolve(config).synthetic_store
    deadline = time.time() + 240
    while not store.all_entries():
        assert time.time() < deadline and thread.is_alive(), outcome
        time.sleep(0.1)
    victim = store.all_entries()[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    at_kill = len(store.all_entries())
    thread.join(timeout=400)
    assert not thread.is_alive()
    print("worker kill:",
          "the run failed, the re-run completed" if "error" in outcome else "completed without a re-run")
    if "error" in outcome:  # the run may stop on the dead actor; the same command then finishes the job
        synthesize(config)
    rows = _committed_rows(out, schema.SYNTHESIZE)
    ids = [r["task_id"] for r in rows]
    assert at_kill < len(store.all_entries())  # killed partway, not after the end
    assert len(ids) == len(set(ids)) and set(ids) == _expected_task_ids(config)
    latest = max(store.all_entries(), key=lambda e: e["committed_at"])
    assert latest["pid"] != victim  # the work after the kill ran in a new actor process
