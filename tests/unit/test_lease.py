"""One writer per output_dir (lease.py): a second live run is refused with the holder named, a stale lease is
taken over with a higher fencing token, the old holder's commits are then refused, and the lease is
re-entrant within a process and released at the end. Locally (hard link, lock-guarded compare) and on S3
(moto in server mode: If-None-Match / If-Match)."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pytest

from ray_entigraph import storage
from ray_entigraph.errors import LeaseHeld
from ray_entigraph.layout import Layout
from ray_entigraph.lease import Lease


def _commit(layout: Layout, key: str) -> None:
    layout.store("synthetic").commit(pa.table({"task_id": [key]}), None, keys=[key], stats={})


def _exercise(out: str) -> None:
    first = Lease(out, "synthesize", ttl_s=60, heartbeat_s=30)
    with first:
        with Lease(out, "train", ttl_s=60, heartbeat_s=30) as again:  # re-entrant in one process
            assert again is first
        assert storage.exists(Layout(out).lease_url)  # still held by the outer block
        second = Lease(out, "synthesize", ttl_s=60, heartbeat_s=30)
        with pytest.raises(LeaseHeld, match=r"is in use by run .* \(synthesize\) on host .* token 0.*Fix: wait"):
            second.acquire()
        _commit(Layout(out, fence=first.fence), "t-held")  # the holder commits
    assert not storage.exists(Layout(out).lease_url)  # released

    # a dead run: its lease's heartbeat is older than its ttl
    dead = Lease(out, "synthesize", ttl_s=60, heartbeat_s=30).acquire()
    dead._stop.set()  # the process "dies": no more heartbeats
    data, _ = storage.read_versioned(dead.url)
    record = json.loads(data)
    record["heartbeat_at"] = time.time() - 3600
    storage.write_text(dead.url, json.dumps(record))
    newer = Lease(out, "run", ttl_s=60, heartbeat_s=30).acquire()
    newer._stop.set()
    assert newer.token == dead.token + 1
    old_layout = Layout(out, fence=dead.fence)
    with pytest.raises(LeaseHeld, match=r"lost its lease .*\(fencing token 0\)"):
        _commit(old_layout, "t-late")  # a late actor of the dead run
    assert not storage.exists(storage.join(old_layout.store("synthetic").committed_url,
                                           storage.shard_name(["t-late"]) + ".json"))
    _commit(Layout(out, fence=newer.fence), "t-new")
    dead.renew()  # the dead run's heartbeat thread waking up finds the lease taken
    assert dead.lost and json.loads(storage.read_versioned(dead.url)[0])["owner"] == newer.owner
    newer.release()
    assert not storage.exists(newer.url)


def test_lease_on_local_disk(tmp_path):
    _exercise(str(tmp_path / "run"))


def test_lease_on_s3(s3_bucket):
    _exercise(f"{s3_bucket}/run")


def test_conditional_writes_on_s3(s3_bucket):
    url = f"{s3_bucket}/obj.json"
    v1 = storage.create_exclusive(url, b"1")
    with pytest.raises(storage.VersionConflict):
        storage.create_exclusive(url, b"2")
    v2 = storage.replace_if(url, b"3", v1)
    with pytest.raises(storage.VersionConflict):
        storage.replace_if(url, b"4", v1)  # v1 is stale
    assert storage.read_versioned(url) == (b"3", v2)


def test_a_killed_run_on_this_machine_is_taken_over_at_once(tmp_path):
    """A run killed with SIGKILL leaves a fresh-looking lease; its process is gone, so the re-run takes over
    without waiting for ttl_s."""
    import subprocess
    import sys

    out = str(tmp_path / "run")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = Lease(out, "synthesize", ttl_s=600, heartbeat_s=30).acquire()
    killed._stop.set()
    record = json.loads(storage.read_versioned(killed.url)[0])
    storage.write_text(killed.url, json.dumps({**record, "pid": int(gone.stdout)}))  # a process that has exited
    rerun = Lease(out, "synthesize", ttl_s=600, heartbeat_s=30).acquire()
    rerun.release()
    assert rerun.token == killed.token + 1
