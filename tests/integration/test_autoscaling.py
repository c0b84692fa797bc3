"""Autoscaling on Ray's fake multi-node provider (one machine, no GPU): the head has no GPU, so a model stage whose
actors ask for one (resources.num_gpus_per_actor=1) can only run once the autoscaler has brought up the configured
GPU worker node type (a Ray node declaring {"CPU": 2, "GPU": 1}, no real GPU behind it); the extract and synthesize
shards' commit markers record that node, and once the stages end the node is idle and the autoscaler releases it
after idle_timeout_minutes.

The cluster is a `ray start --head` with an autoscaling config for the `fake_multinode` provider (what
ray.cluster_utils.AutoscalingCluster does, without its `ray stop --force`, which would stop every Ray instance on the
machine, and without the example.yaml it loads, which Ray's wheel does not ship). It has its own ports, temp dir and
auth token, and is stopped by killing exactly its processes. The driver runs in a subprocess connected through
RAY_ADDRESS (as under `ray job submit`), apart from any Ray session of this test process; it records every node it
sees while the run goes on and after it, until the GPU node is gone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ray_entigraph import schema
from tests import stores
from tests.procs import own_processes, stop_processes

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GPU_NODE_TYPE = "gpu_worker"
IDLE_TIMEOUT_MINUTES = 0.1  # 6 s: the GPU node outlives the few seconds between extract and synthesize
RELEASE_BOUND_S = 60.0  # idle timeout + the autoscaler's 1 s updates + draining, with room for a loaded machine
DRIVER_TIMEOUT_S = 200
OBJECT_STORE_BYTES = 100 * 1024 * 1024
# extract and synthesize on one GPU model actor, the echo engine (instant answers), a handful of requests
OVERRIDES = ["engine.kind=echo", "num_partitions=1", "extract.max_attempts=1", "plan.max_pairs_per_doc=2",
             "plan.max_triplets_per_doc=0", "plan.tasks_per_group=4", "resources.batch_size=4",
             "resources.min_actors=1", "resources.max_actors=1", "resources.num_cpus_per_actor=1",
             "resources.num_gpus_per_actor=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeAutoscalingCluster:
    """A head node without GPU whose autoscaler (monitor, v1) launches `gpu_worker` nodes as local Ray nodes."""

    def __init__(self) -> None:
        from ray._private.services import get_node_ip_address

        self.temp_dir = tempfile.mkdtemp(prefix="ras", dir="/tmp")  # short: unix socket paths live under it
        self.token = secrets.token_hex(32)
        self.gcs_address = f"{get_node_ip_address()}:{_free_port()}"  # the fake provider's nodes join it here
        self._session: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """The nodes' environment (the autoscaler and the nodes it launches inherit it) and the driver's."""
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        env.pop("RAY_ADDRESS", None)
        return env

    def config(self) -> dict:
        """The autoscaling config, whole: the monitor validates it but fills no defaults in."""
        return {
            "cluster_name": "fake-gpu", "max_workers": 1, "upscaling_speed": 1.0,
            "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
            "provider": {
                "type": "fake_multinode", "gcs_address": self.gcs_address,
                # the monitor tells nodes apart by node id, not IP (all share this machine's); no SSH updaters
                "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True,
            },
            "auth": {}, "docker": {}, "head_node_type": "ray.head.default",
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
                GPU_NODE_TYPE: {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": OBJECT_STORE_BYTES},
                                "node_config": {}, "min_workers": 0, "max_workers": 1},
            },
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    def start(self) -> None:
        config_path = Path(self.temp_dir) / "autoscaling.json"
        config_path.write_text(json.dumps(self.config()))
        port = self.gcs_address.rsplit(":", 1)[1]
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--disable-usage-stats", "--port", port, "--temp-dir", self.temp_dir,
             "--num-cpus", "2", "--num-gpus", "0", "--object-store-memory", str(OBJECT_STORE_BYTES),
             "--include-dashboard", "false", "--ray-client-server-port", str(_free_port()),
             "--min-worker-port", "0", "--max-worker-port", "0", "--dashboard-agent-listen-port", "0",
             f"--autoscaling-config={config_path}"],
            env={**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}, cwd=self.temp_dir,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # the head's processes, the autoscaler's nodes included, stay in this session
        )
        self._session = proc.pid
        out, _ = proc.communicate(timeout=180)
        if proc.returncode:
            raise RuntimeError(f"ray start --head failed:\n{out[-4000:]}")

    def monitor_log(self, chars: int | None = 3000) -> str:
        """The autoscaler's log (its tail of `chars`, for failure messages)."""
        path = Path(self.temp_dir) / "session_latest" / "logs" / "monitor.log"
        text = path.read_text(errors="replace") if path.exists() else "(no monitor.log)"
        return text[-chars:] if chars else text

    def _own_processes(self) -> list[int]:
        """Members of the head's session, anything naming our temp dir, and anything holding our token."""
        return own_processes({self._session}, self.temp_dir, self.token)

    def stop(self) -> None:
        stop_processes(self._own_processes, term_grace_s=1.0, poll_s=0.1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture()
def fake_cluster():
    cluster = FakeAutoscalingCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def drive(corpus: str, out: str, result_path: str, release_timeout_s: float) -> None:
    """The driver (run in a subprocess, RAY_ADDRESS set): synthesize while a thread records every Ray node seen
    (its resources while alive, when it was first seen alive, when first seen dead and why); after the run, keep
    looking until every node that had a GPU is dead or `release_timeout_s` has passed; write the record as JSON."""
    import ray

    import ray_entigraph as eg

    nodes: dict[str, dict] = {}
    at_connect: list[str] = []  # the nodes of the first look, right after the driver connected
    stop = threading.Event()

    def look() -> None:
        now = time.time()
        seen = ray.nodes()
        if not at_connect:
            at_connect.extend(n["NodeID"] for n in seen if n["Alive"])
        for n in seen:
            rec = nodes.setdefault(n["NodeID"], {"resources": {}, "alive_at": None, "dead_at": None, "death": ""})
            if n["Alive"]:
                rec["resources"] = rec["resources"] or dict(n["Resources"])
                rec["alive_at"] = rec["alive_at"] or now
            elif rec["dead_at"] is None:
                rec["dead_at"], rec["death"] = now, n.get("DeathReasonMessage", "")

    def watch() -> None:
        while not stop.is_set():
            if ray.is_initialized():
                try:
                    look()
                except Exception:  # noqa: BLE001 - Ray still connecting: the next look sees the nodes
                    pass
            stop.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    started = time.time()
    watcher.start()
    summary = eg.synthesize(None, [f"input.path={corpus}", f"output_dir={out}", *OVERRIDES])
    finished = time.time()
    stop.set()
    watcher.join()
    while time.time() < finished + release_timeout_s:
        look()
        if all(r["dead_at"] for r in nodes.values() if r["resources"].get("GPU")):
            break
        time.sleep(0.25)
    Path(result_path).write_text(json.dumps({"started": started, "finished": finished, "nodes": nodes,
                                             "at_connect": at_connect,
                                             "num_synthetic_rows": summary.num_synthetic_rows}))


def test_gpu_stage_brings_up_a_gpu_node_and_the_autoscaler_releases_it(fake_cluster, small_corpus, tmp_path):
    out, result_path = tmp_path / "run", tmp_path / "nodes.json"
    code = (f"from tests.integration.test_autoscaling import drive; "
            f"drive({str(small_corpus)!r}, {str(out)!r}, {str(result_path)!r}, {RELEASE_BOUND_S})")
    env = {**fake_cluster.env, "RAY_ADDRESS": fake_cluster.gcs_address}
    try:
        run = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the run did not finish within {DRIVER_TIMEOUT_S}s (no GPU node came up?)\n"
                    f"driver: {str(e.stdout or '')[-2000:]}{str(e.stderr or '')[-2000:]}\n"
                    f"monitor.log:\n{fake_cluster.monitor_log()}")
    assert run.returncode == 0, f"{run.stdout[-3000:]}{run.stderr[-3000:]}\nmonitor.log:\n{fake_cluster.monitor_log()}"
    record = json.loads(result_path.read_text())
    nodes, finished = record["nodes"], record["finished"]
    assert record["num_synthetic_rows"] > 0

    # the run started on the head alone, which has no GPU; the autoscaler added nodes of the GPU type
    (head,) = [i for i, n in nodes.items() if "node:__internal_head__" in n["resources"]]
    assert "GPU" not in nodes[head]["resources"] and record["at_connect"] == [head], (record["at_connect"], nodes)
    gpu_nodes = {i for i, n in nodes.items() if n["resources"].get("GPU")}
    assert gpu_nodes, f"no node with a GPU was launched: nodes seen {nodes}\nmonitor.log:\n{fake_cluster.monitor_log()}"
    for i in gpu_nodes:  # the resources the GPU node type declares (a fake GPU: nothing behind it)
        assert nodes[i]["resources"]["GPU"] == 1 and nodes[i]["resources"]["CPU"] == 2, nodes[i]

    # every extract and synthesize shard was committed by a model actor holding the GPU, on a GPU node
    for stage in (schema.EXTRACT, schema.SYNTHESIZE):
        markers = stores.store(out, stage).all_entries()
        ran_on = {e["node_id"] for e in markers}
        assert ran_on and ran_on <= gpu_nodes, f"{stage} shards ran on {ran_on}, GPU nodes {gpu_nodes}"
        assert all(e["resources"].get("GPU") == 1 for e in markers), [e["resources"] for e in markers]

    # ingest never lands on a model actor: its units ran on the CPU pool's actors, which hold no GPU
    ingest = stores.store(out, schema.INGEST).all_entries()
    assert ingest and all("GPU" not in e["resources"] and e["resources"].get("CPU") for e in ingest), \
        [e["resources"] for e in ingest]

    # after the run the GPU node is idle: the autoscaler releases it; the head stays
    for i in gpu_nodes:
        dead_at = nodes[i]["dead_at"]
        assert dead_at is not None, (f"GPU node {i} still alive {RELEASE_BOUND_S:.0f}s after the run ended "
                                     f"(idle_timeout_minutes={IDLE_TIMEOUT_MINUTES})\n"
                                     f"monitor.log:\n{fake_cluster.monitor_log()}")
        # the autoscaler's own account: it terminated the node for idleness (the node's recorded death reason
        # is "Terminated by autoscaler." or "received SIGTERM", depending on which of drain and kill lands first)
        idle_lines = [line for line in fake_cluster.monitor_log(None).splitlines()
                      if f"Terminating the node with id {i}" in line and "(idle)" in line]
        assert idle_lines, f"the autoscaler did not report terminating {i} as idle:\n{fake_cluster.monitor_log()}"
        print(f"\nGPU node {i[-5:]}: up {nodes[i]['alive_at'] - record['started']:.1f}s into the run, released "
              f"{dead_at - finished:.1f}s after it ended (idle timeout {IDLE_TIMEOUT_MINUTES * 60:.0f}s)")
    assert nodes[head]["dead_at"] is None
