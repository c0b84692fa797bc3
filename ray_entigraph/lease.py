"""One writer per `output_dir`: a lease, a heartbeat, takeover of a stale lease, and a fencing token.

Two runs on one `output_dir` would commit the same requests under differently composed shards, so a run
holds `<output_dir>/_lease.json` while it writes:

- **acquire**: the lease object is created only if absent (a hard link of a complete file locally, an S3
  PUT with `If-None-Match: *`). A live lease held by another run is a `LeaseHeld` error naming the holder
  (owner, host, pid, command, last heartbeat) and the fix.
- **heartbeat**: a daemon thread rewrites the lease every `lease.heartbeat_s`, conditionally on the version
  it wrote last; a lease whose heartbeat is older than `lease.ttl_s` is stale.
- **takeover**: a stale lease (or one whose holder ran on this machine and is no longer alive, as after a
  SIGKILL) is replaced by a conditional write on the version that was read (`If-Match`
  on S3, a lock-guarded compare locally), so of two runs taking over at once exactly one wins. The winner's
  fencing token is the old token + 1.
- **fencing**: every commit marker is written only after `Fence.check` has read the lease and found this
  run's token; the actors of a dead run that wake up after a takeover get `LeaseHeld` and commit nothing.
  (The check and the marker write are two requests: a commit that checked just before a takeover can still
  land. It commits a whole shard of the same deterministic requests, which readers read once by key.)

Within one process the lease is re-entrant: `run` holds it across synthesize, train and eval.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass

from ray_entigraph import storage
from ray_entigraph.errors import LeaseHeld, StorageError
from ray_entigraph.layout import Layout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fence:
    """What a worker needs to check that its run still holds the lease: picklable, two strings and an int."""

    lease_url: str
    owner: str
    token: int

    def check(self) -> None:
        """Raise `LeaseHeld` unless the lease still names this owner and token (one GET)."""
        try:
            record = json.loads(storage.read_text(self.lease_url))
        except FileNotFoundError:
            raise LeaseHeld(f"The lease {self.lease_url} is gone, so this run no longer holds its output_dir; "
                            "nothing more is committed. Fix: re-run (committed work is kept).") from None
        if record.get("owner") != self.owner or int(record.get("token", -1)) != self.token:
            raise LeaseHeld(
                f"This run lost its lease on {self.lease_url} (fencing token {self.token}) to "
                f"{_describe(record)}, so it commits nothing more. Fix: let the newer run finish; re-run after it "
                "(committed work is kept).")


def _dead_here(record: dict) -> bool:
    """The holder ran on this machine and its process is gone (a killed run): its lease is stale now, not
    after ttl_s. Another machine's holder is judged by its heartbeat alone."""
    if record.get("host") != os.uname().nodename or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe(record: dict) -> str:
    age = time.time() - float(record.get("heartbeat_at", 0))
    return (f"run {record.get('owner', '?')[:8]} ({record.get('command', '?')}) on host {record.get('host', '?')} "
            f"pid {record.get('pid', '?')}, token {record.get('token', '?')}, last heartbeat {age:.0f}s ago")


_HELD: dict[str, "Lease"] = {}  # output_dir -> this process's lease on it (re-entrant)
_HELD_LOCK = threading.Lock()


class Lease:
    """This process's lease on an output_dir. Use `with Lease(output_dir, ...):` or `acquire_lease`."""

    def __init__(self, output_dir: str, command: str, *, ttl_s: float = 300.0, heartbeat_s: float = 30.0):
        self.output_dir, self.command = output_dir, command
        self.url = Layout(output_dir).lease_url
        self.ttl_s, self.heartbeat_s = ttl_s, heartbeat_s
        self.owner = uuid.uuid4().hex
        self.token = 0
        self._version = ""
        self._depth = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    @property
    def fence(self) -> Fence:
        return Fence(self.url, self.owner, self.token)

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "token": self.token, "host": os.uname().nodename,
                           "pid": os.getpid(), "command": self.command, "heartbeat_at": now,
                           "ttl_s": self.ttl_s}, sort_keys=True).encode()

    def acquire(self) -> "Lease":
        """Create the lease, or take over a stale one; `LeaseHeld` when another live run holds it."""
        for _ in range(5):  # a lost race re-reads what won
            try:
                self._version = storage.create_exclusive(self.url, self._record())
                break
            except storage.VersionConflict:
                pass
            try:
                data, version = storage.read_versioned(self.url)
            except FileNotFoundError:
                continue  # released in between: create again
            try:
                record = json.loads(data)
            except ValueError:
                raise StorageError(f"The lease {self.url} is not JSON. Fix: if no run is writing to this "
                                   "output_dir, delete that file and re-run.") from None
            age = time.time() - float(record.get("heartbeat_at", 0))
            if age <= float(record.get("ttl_s", self.ttl_s)) and not _dead_here(record):
                raise LeaseHeld(
                    f"output_dir {self.output_dir!r} is in use by {_describe(record)}; two runs on one output_dir "
                    "would commit the same requests twice. Fix: wait for that run to finish, stop it, or choose "
                    "another output_dir (a dead run's lease is taken over once its heartbeat is "
                    f"{float(record.get('ttl_s', self.ttl_s)):.0f}s old).")
            self.token = int(record.get("token", 0)) + 1
            try:
                self._version = storage.replace_if(self.url, self._record(), version)
                logger.warning("took over the stale lease of %s", _describe(record))
                break
            except storage.VersionConflict:
                continue
        else:
            raise LeaseHeld(f"Could not acquire the lease {self.url}: other runs kept changing it. Fix: make sure "
                            "only one run writes to this output_dir.")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="ray-entigraph-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.renew()

    def renew(self) -> None:
        """One heartbeat: rewrite the lease if it is still ours (conditional on the version we wrote)."""
        try:
            self._version = storage.replace_if(self.url, self._record(), self._version)
        except storage.VersionConflict:
            self.lost = f"the lease {self.url} was taken over"
            logger.error("%s; this run's commits will be refused", self.lost)
            self._stop.set()
        except Exception as exc:  # noqa: BLE001 - a failed heartbeat is retried at the next beat
            logger.warning("lease heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            data, version = storage.read_versioned(self.url)
            if json.loads(data).get("owner") == self.owner:
                fs, path = storage.filesystem(self.url)
                fs.rm(path)
        except Exception as exc:  # noqa: BLE001 - a lease left behind goes stale and is taken over
            logger.warning("could not release the lease %s (%s); it goes stale after %.0fs",
                           self.url, exc, self.ttl_s)

    def __enter__(self) -> "Lease":
        with _HELD_LOCK:
            held = _HELD.get(self.output_dir)
            if held is not None:
                held._depth += 1
                return held
            self.acquire()
            self._depth = 1
            _HELD[self.output_dir] = self
            return self

    def __exit__(self, *exc) -> None:
        with _HELD_LOCK:
            held = _HELD[self.output_dir]
            held._depth -= 1
            if held._depth == 0:
                del _HELD[self.output_dir]
                held.release()


def holder(output_dir: str, ttl_s: float = 300.0) -> dict | None:
    """Who holds the lease on output_dir now, for `status`: the lease record with `alive` (its heartbeat is
    younger than ttl_s and, on this machine, its process exists) and `heartbeat_age_s`; None when no lease."""
    try:
        record = json.loads(storage.read_text(Layout(output_dir).lease_url))
    except FileNotFoundError:
        return None
    age = time.time() - float(record.get("heartbeat_at", 0))
    return {**record, "heartbeat_age_s": round(age, 1), "alive": age < ttl_s and not _dead_here(record)}


def lease_for(config, command: str) -> Lease:
    """The lease a command takes on config.output_dir (config.lease: ttl and heartbeat)."""
    return Lease(config.output_dir, command, ttl_s=config.lease.ttl_s, heartbeat_s=config.lease.heartbeat_s)


def leased(command: str):
    """Decorate a `fn(config, ...)` command so that it holds config.output_dir's lease while it runs."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(config, *args, **kwargs):
            with lease_for(config, command):
                return fn(config, *args, **kwargs)
        return inner
    return wrap


def fenced_layout(config) -> Layout:
    """The layout of config.output_dir whose stores check this process's lease at every commit."""
    return Layout(config.output_dir, fence=held_fence(config.output_dir), num_partitions=config.num_partitions)


def held_fence(output_dir: str) -> Fence | None:
    """The fence of the lease this process holds on output_dir, if any."""
    held = _HELD.get(output_dir)
    return held.fence if held is not None else None
