"""The processes a test's own Ray nodes started, found by session, temp dir or auth token, so that a test
stops its own nodes and never another Ray instance on the machine."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable


def own_processes(sessions: set[int], temp_dir: str, token: str) -> list[int]:
    """Pids of members of `sessions`, of anything naming `temp_dir` on its command line, and of anything
    holding `token` (job drivers and their watchers run in sessions of their own; they carry the token)."""
    marker = f"RAY_AUTH_TOKEN={token}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                session = int(f.read().rsplit(b")", 1)[1].split()[3])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if session in sessions or temp_dir.encode() in cmdline or marker in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def stop_processes(find: Callable[[], list[int]], *, term_grace_s: float, poll_s: float) -> None:
    """SIGTERM what `find` returns, wait up to `term_grace_s` for it to go, then SIGKILL what is left (5 s)."""
    for sig, grace in ((signal.SIGTERM, term_grace_s), (signal.SIGKILL, 5.0)):
        for pid in find():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while find() and time.time() < deadline:
            time.sleep(poll_s)
