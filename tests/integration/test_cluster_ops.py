"""Cluster operations on real Ray clusters started with `ray start` on this machine: jobs submitted with
`ray job submit` (success and failure as a user sees them), and synthesis then training (a worker killed
mid-run included) on a two-node cluster writing to S3.

Each cluster has its own ports, temp dir and auth token, and is stopped by killing exactly the processes it
started (never `ray stop`, which stops every Ray instance on the machine, other people's included).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ray_entigraph import schema, storage
from ray_entigraph.ledger import read_run_state
from ray_entigraph.train.metrics import read_metrics
from tests import stores
from tests.procs import own_processes, stop_processes

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the environment's bin: `ray`, `ray-entigraph`

# The demo job's entry command (the whole run), and the synthesis command the two-node test runs.
ENTRY = ("ray-entigraph", "run")
SYNTH = ("ray-entigraph", "synthesize")
# small training and evaluation for the job: one CPU worker, a few steps, a few questions
RUN_SMALL = ["train.block_len=64", "train.global_batch_size=2", "train.micro_batch_size=1", "train.num_workers=1",
             "train.epochs=1", "train.checkpoint_every=2", "eval.max_questions=4", "eval.perplexity_texts=2",
             "eval.perplexity_window=128", "run.raw_cpt_control_steps=null"]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def tiny_overrides(model_dir, corpus, out) -> list[str]:
    """The settings of tests/integration/test_pipeline.py:tiny_config as command-line overrides (on top of
    configs/demo.yaml): a random 2-layer model, 12 new tokens per request, 3 pairs + 1 triplet per document."""
    return [
        f"input.path={corpus}", f"output_dir={out}", f"model.name={model_dir}", "model.dtype=float32",
        "ingest.max_document_tokens=256", "extract.max_attempts=1", "extract.sampling.max_new_tokens=12",
        "synthesis.sampling.max_new_tokens=12", "plan.max_pairs_per_doc=3", "plan.max_triplets_per_doc=1",
        "plan.tasks_per_group=2", "resources.batch_size=2", "engine.max_batch_size=4",
    ]


class LocalRayCluster:
    """Ray nodes started with `ray start` on this machine, each its own process session, with token auth on
    (a per-cluster token passed in RAY_AUTH_TOKEN: no ~/.ray/auth_token is read or written)."""

    def __init__(self) -> None:
        # Short: Ray puts unix sockets under it, and socket paths must stay under 108 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="rco", dir="/tmp")
        self.token = secrets.token_hex(32)
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.gcs_address: str | None = None
        self.dashboard_url: str | None = None
        self.submitted: list[str] = []
        self._sessions: list[int] = []

    @property
    def env(self) -> dict[str, str]:
        """Environment for the nodes and for every client (CLI, driver). The nodes inherit it, so the AWS
        variables of the S3 fixture reach the workers, and `ray-entigraph` is on the PATH of job entry points."""
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        env.pop("RAY_ADDRESS", None)
        return env

    def _ray_start(self, *args: str) -> str:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--disable-usage-stats", "--temp-dir", self.temp_dir,
             "--object-store-memory", str(150 * 1024 * 1024), "--min-worker-port", "0", "--max-worker-port", "0",
             "--dashboard-agent-listen-port", "0", *args],
            env=self.env, cwd=self.temp_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # every process of the node (workers included) stays in this session
        )
        self._sessions.append(proc.pid)
        out, _ = proc.communicate(timeout=180)
        if proc.returncode:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out[-4000:]}")
        return out

    def start_head(self, num_cpus: int) -> None:
        gcs_port, dash_port, client_port = _free_ports(3)
        out = self._ray_start("--head", "--port", str(gcs_port), "--num-cpus", str(num_cpus),
                              "--include-dashboard", "true",  # the job API lives in the dashboard
                              "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                              "--ray-client-server-port", str(client_port))
        # Ray replaces 127.0.0.1 by the machine's address for the GCS; take the address it prints.
        match = re.search(r"ray start --address='([^']+)'", out)
        self.gcs_address = match.group(1) if match else f"127.0.0.1:{gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{dash_port}"
        self._wait(lambda: self.api("/api/version") is not None, "the job API to answer")

    def add_worker(self, num_cpus: int) -> None:
        expected = len(self.nodes()) + 1
        self._ray_start("--address", self.gcs_address, "--num-cpus", str(num_cpus))
        self._wait(lambda: len(self.nodes()) == expected, f"{expected} alive nodes")

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(self.dashboard_url + path, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except OSError:
            return None

    def nodes(self) -> list[dict]:
        data = self.api("/api/v0/nodes") or {}
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return [n for n in rows if n.get("state") == "ALIVE"]

    def job(self, submission_id: str) -> dict:
        return self.api(f"/api/jobs/{submission_id}") or {}

    def wait_job(self, submission_id: str, timeout: float = 300) -> dict:
        self._wait(lambda: self.job(submission_id).get("status") in TERMINAL, f"job {submission_id} to finish", timeout)
        return self.job(submission_id)

    def ray_cli(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env={**self.env, **env}, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)

    @staticmethod
    def _wait(predicate, what: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    def _own_processes(self) -> list[int]:
        """Our processes: members of the nodes' sessions, anything naming our temp dir, and job drivers and
        their watchers (Ray starts those in sessions of their own; they carry our token)."""
        return own_processes(self._sessions, self.temp_dir, self.token)

    def stop(self) -> None:
        if self.dashboard_url:
            for submission_id in self.submitted:
                if self.job(submission_id).get("status") not in TERMINAL:
                    self.api(f"/api/jobs/{submission_id}/stop", method="POST")
        stop_processes(self._own_processes, term_grace_s=5.0, poll_s=0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture()
def ray_cluster():
    """A cluster with no node yet; the test starts what it needs. Stopped at teardown, also on failure."""
    cluster = LocalRayCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def _committed_rows(out: str, stage: str) -> list[dict]:
    return stores.rows(out, stage)


@pytest.mark.timeout(600)
def test_job_submit_succeeds_then_fails_with_reason(ray_cluster, tiny_model_dir, small_corpus, tmp_path):
    started = time.time()
    ray_cluster.start_head(num_cpus=2)
    out = tmp_path / "run"  # absolute: a relative output_dir would land in the job's unpacked working dir

    # the documented command: upload the checkout, run the CLI as the job's entry point, stream its logs
    # the demo corpus (it holds the questions that evaluation needs), its first 2 documents
    entry = [*ENTRY, "--config", "configs/demo.yaml", *tiny_overrides(tiny_model_dir, "builtin:demo", out),
             "input.max_documents=2", *RUN_SMALL]
    ray_cluster.submitted.append("rco-ok")
    ok = ray_cluster.ray_cli("job", "submit", "--address", ray_cluster.dashboard_url, "--submission-id", "rco-ok",
                             "--working-dir", str(REPO), "--runtime-env", "jobs/runtime_env.yaml", "--", *entry)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert ray_cluster.wait_job("rco-ok")["status"] == "SUCCEEDED"
    logs = ray_cluster.ray_cli("job", "logs", "--address", ray_cluster.dashboard_url, "rco-ok").stdout
    assert re.search(r"\[synthetic\] \d+/\d+ requests", logs), logs[-3000:]  # progress streamed to the job log
    assert f"{' '.join(ENTRY)}: done" in logs and "[run] eval: done" in logs

    # committed output, from storage alone
    state = read_run_state(str(out))
    assert state["run"]["state"] == "finished"
    shards = list((out / "synthetic").glob("*/p=*/*.parquet"))
    assert shards and sum(pq.read_metadata(f).num_rows for f in shards) > 0
    rows = _committed_rows(str(out), schema.SYNTHESIZE)
    assert len(rows) == state["stages"]["synthetic"]["num_ok"] > 0
    assert len({r["task_id"] for r in rows}) == len(rows)
    assert {r["kind"] for r in rows} >= {"pair", "triplet"}
    assert len(state["stages"]["synthetic"]["node_ids"]) == 1  # one node: the head
    report = json.loads((out / "eval" / "report.json").read_text())
    assert [r["label"] for r in report["summary"]] == ["base", "trained"] and report["summary"][1]["n"] == 4
    assert (out / "train" / "model" / "model.safetensors").exists() and (out / "eval" / "accuracy.png").exists()
    print(f"\njob submit (head start + whole-run job): {time.time() - started:.1f}s")

    # a job that must fail, through the wrapper: FAILED, non-zero exit, the reason in its last lines and in the job log
    failed_at = time.time()
    missing = tmp_path / "missing" / "corpus.jsonl"
    ray_cluster.submitted.append("rco-bad")
    bad = subprocess.run(
        ["bash", str(REPO / "jobs" / "submit.sh"), *ENTRY[1:], "--config", "configs/demo.yaml",
         *tiny_overrides(tiny_model_dir, missing, tmp_path / "bad")],
        env={**ray_cluster.env, "RAY_ADDRESS": ray_cluster.dashboard_url, "RAY": str(BIN / "ray"),
             "SUBMISSION_ID": "rco-bad"},
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    assert "job rco-bad: FAILED" in bad.stdout
    reason = f"{' '.join(ENTRY)}: error: Input path '{missing}' does not exist"
    assert reason in "\n".join(bad.stderr.strip().splitlines()[-5:]), bad.stderr[-3000:]
    info = ray_cluster.job("rco-bad")
    assert info["status"] == "FAILED" and "exit code 2" in info["message"]
    logs = ray_cluster.ray_cli("job", "logs", "--address", ray_cluster.dashboard_url, "rco-bad").stdout
    assert reason in logs
    print(f"failing job through jobs/submit.sh: {time.time() - failed_at:.1f}s")


@pytest.mark.timeout(900)
def test_synthesis_and_training_on_two_nodes_with_s3(ray_cluster, s3_bucket, tiny_model_dir, small_corpus):
    started = time.time()
    # Resources: 2 physical cores, two nodes of 3 logical CPUs each, model actors of 2 CPUs, a pool of exactly 2.
    # Two actors cannot share a node (2 + 2 > 3), so the pool spans both nodes; and each node keeps 1 CPU for
    # Ray Data's read/repartition/plan tasks (a node whose CPUs all go to an actor hangs the read, see
    # docs/architecture.md). With 1 CPU per node, whole-CPU actors leave no CPU for those tasks, and 0.5-CPU
    # actors could both land on one node. torch uses 1 thread per actor: 2 actors on 2 cores.
    ray_cluster.start_head(num_cpus=3)
    ray_cluster.add_worker(num_cpus=3)
    nodes = ray_cluster.nodes()
    head = next(n["node_id"] for n in nodes if n["is_head_node"])
    worker = next(n["node_id"] for n in nodes if not n["is_head_node"])

    out = f"{s3_bucket}/two-nodes"
    cmd = [str(BIN / SYNTH[0]), *SYNTH[1:], "--config", "configs/demo.yaml",
           *tiny_overrides(tiny_model_dir, small_corpus, out),
           "resources.min_actors=2", "resources.max_actors=2", "resources.num_cpus_per_actor=2",
           # one task group per unit of work: 10 units (the first document is 2 chunks of <= 256 tokens), enough
           # for both actors
           "input.max_documents=1", "resources.batch_size=1", "plan.tasks_per_group=1", "engine.torch_threads=1"]
    # The driver runs outside the cluster and connects with ray.init() through RAY_ADDRESS. Ray Data is told to
    # wait until the whole pool is up before handing out work: by default the first actor ready takes the work
    # (measured: in 1 of 2 runs without this, all 20 synthesis units and all extraction ran on the head).
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.gcs_address, "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"}
    run = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"{' '.join(SYNTH)}: done" in run.stdout

    state = read_run_state(out)
    assert state["run"]["state"] == "finished"
    syn = state["stages"]["synthetic"]
    rows = _committed_rows(out, schema.SYNTHESIZE)
    assert len(rows) == syn["num_ok"] > 0 and len({r["task_id"] for r in rows}) == len(rows)
    # work ran on both nodes: the commit markers record the Ray node of each shard
    assert set(syn["node_ids"]) == {head, worker}, syn
    assert set(state["stages"]["entities"]["node_ids"]) <= {head, worker}
    assert len(syn["hosts"]) == 1  # one machine: the host name cannot tell the nodes apart, the node id can
    markers = stores.store(out, schema.SYNTHESIZE).all_entries()
    per_node = {name: sum(e.get("node_id") == node for e in markers)
                for name, node in (("head", head), ("worker", worker))}
    print(f"\ntwo-node synthesis to S3 (2 node starts + run): {time.time() - started:.1f}s, "
          f"synthetic shards {per_node}")

    # Continued pretraining on the same two nodes: one Ray Train worker per node (2 CPUs each, 3 per node), gloo
    # across them, blocks and checkpoints on S3, one worker SIGKILLed after the first checkpoint is uploaded: Ray
    # Train restarts the workers and the run finishes all its steps with a rank on each node.
    train = [*tiny_overrides(tiny_model_dir, small_corpus, out), "input.max_documents=1", "train.corpus=synthetic+raw",
             "train.block_len=32",
             "train.global_batch_size=2", "train.micro_batch_size=1", "train.num_workers=2",
             "train.cpus_per_worker=2", "train.torch_threads=1", "train.lr=3e-3", "train.max_steps=6",
             "train.checkpoint_every=2", "train.max_failures=1"]
    cmd = [str(BIN / "ray-entigraph"), "train", "--config", "configs/demo.yaml", *train, "train.name=killed"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fs, ckpts = storage.filesystem(f"{out}/killed/ray/train")
    deadline, killed = time.time() + 300, None
    while killed is None:
        assert proc.poll() is None and time.time() < deadline, "train ended or stalled before its first checkpoint"
        fs.invalidate_cache()
        if fs.exists(f"{ckpts}/checkpoint-step-00000002/train_state.pt"):
            killed = _kill_one_train_worker(ray_cluster)
        time.sleep(0.1)
    output, _ = proc.communicate(timeout=420)
    assert proc.returncode == 0, output[-4000:]
    resumed = read_metrics(f"{out}/killed")
    assert [m["step"] for m in resumed] == list(range(1, 7))
    restarted = [json.loads(storage.read_text(u)) for u in storage.list_files(f"{out}/killed/workers", ".json")]
    assert killed not in {w["pid"] for w in restarted}  # the workers now running were started after the kill
    # Where they resumed is recorded, not asserted: here the kill lands within a second of the first checkpoint's
    # upload, and the restarted workers were measured to start again at step 0 (why is not established; perhaps
    # Ray Train had not registered the checkpoint yet). A resume continuing the same trajectory: test_train.py.
    resumed_from = sorted(w["resumed_from_step"] for w in restarted)
    assert {w["node_id"] for w in restarted} == {head, worker}, restarted  # one rank on each node
    assert storage.exists(f"{out}/killed/model/model.safetensors")
    print(f"two-node training and a killed worker (restarted ranks resumed from steps {resumed_from}): "
          f"{time.time() - started:.1f}s in all")


def _kill_one_train_worker(cluster: LocalRayCluster) -> int:
    """SIGKILL one Ray Train worker process of this cluster; its pid."""
    for pid in cluster._own_processes():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"RayTrainWorker" in cmdline:
            os.kill(pid, signal.SIGKILL)
            return pid
    raise AssertionError("no Ray Train worker process found")
