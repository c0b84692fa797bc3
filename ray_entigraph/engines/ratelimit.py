"""Shared rate limits for hosted APIs: requests and tokens per minute across every actor of a run, and
in-flight requests that adapt to 429s.

A hosted API limits the account, not the actor: N actors x 16 requests in flight each meet a storm of 429s
unless they share one budget. `RateSchedule` is that budget, a virtual schedule (GCRA): each request reserves
the next start time at which both the requests-per-minute and the tokens-per-minute budget allow it, and waits
until then. Nothing bursts past the configured rate, and a freed slot is never lost to polling.

- The schedule tightens itself from the server's `x-ratelimit-*` headers: a lower limit than configured is
  followed (with a 5% margin), and `remaining-requests: 0` (or `remaining-tokens: 0`) holds every request
  until the window resets. A 429 holds them for its Retry-After.
- One schedule per run and endpoint lives in a Ray actor (a `RateSchedule`, named after the endpoint and
  model, found or created by every engine actor); outside Ray, a process-local schedule.
- `AdaptiveConcurrency` bounds the requests in flight per engine: halved on a 429, raised by one after as
  many successes as the current bound, never above `max_concurrency`.

The clock is injected (`clock`), so the schedule is tested on virtual time.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from typing import Callable, Mapping

MARGIN = 0.95  # of a limit the server reports: stay under it rather than on it
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_reset(value: str | None) -> float | None:
    """Seconds until a rate-limit window resets, from `x-ratelimit-reset-*` ("1s", "6m0s", "20ms", "0.5")."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class RateSchedule:
    """The shared budget: `reserve(tokens)` returns how long the caller waits before it may send."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None,
                 clock: Callable[[], float] = time.monotonic):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.clock = clock
        self.next_request = self.next_token = self.held_until = float("-inf")
        self.server_rpm: float | None = None
        self.server_tpm: float | None = None

    def _limit(self, configured: float | None, server: float | None) -> float | None:
        limits = [x for x in (configured, server * MARGIN if server else None) if x]
        return min(limits) if limits else None

    def reserve(self, tokens: int = 0) -> float:
        now = self.clock()
        start = max(now, self.next_request, self.next_token, self.held_until)
        rpm, tpm = self._limit(self.rpm, self.server_rpm), self._limit(self.tpm, self.server_tpm)
        if rpm:
            self.next_request = start + 60.0 / rpm
        if tpm and tokens:
            self.next_token = max(self.next_token, start) + tokens * 60.0 / tpm
        return start - now

    def observe(self, headers: Mapping[str, str]) -> None:
        """Follow the limits and remaining budget the server reports (OpenAI-style `x-ratelimit-*`)."""
        h = {k.lower(): v for k, v in headers.items()}
        self.server_rpm = _number(h.get("x-ratelimit-limit-requests")) or self.server_rpm
        self.server_tpm = _number(h.get("x-ratelimit-limit-tokens")) or self.server_tpm
        for kind in ("requests", "tokens"):
            if _number(h.get(f"x-ratelimit-remaining-{kind}")) == 0:
                reset = parse_reset(h.get(f"x-ratelimit-reset-{kind}"))
                self.hold(reset if reset is not None else 1.0)

    def hold(self, seconds: float) -> None:
        """No request starts for `seconds` (a 429's Retry-After, an exhausted window)."""
        self.held_until = max(self.held_until, self.clock() + seconds)


class LocalGate:
    """A schedule in this process, with the interface of the Ray actor's handle wrapper (`RayGate`)."""

    def __init__(self, schedule: RateSchedule):
        self.schedule = schedule
        self._lock = threading.Lock()  # engines in several threads may share it

    async def reserve(self, tokens: int) -> float:
        with self._lock:
            return self.schedule.reserve(tokens)

    def observe(self, headers: Mapping[str, str]) -> None:
        with self._lock:
            self.schedule.observe(headers)

    def hold(self, seconds: float) -> None:
        with self._lock:
            self.schedule.hold(seconds)


class RayGate:
    """Every engine actor's handle on the one schedule actor of its endpoint (a `RateSchedule` in Ray)."""

    def __init__(self, handle):
        self.handle = handle

    async def reserve(self, tokens: int) -> float:
        return await self.handle.reserve.remote(tokens)

    def observe(self, headers: Mapping[str, str]) -> None:
        self.handle.observe.remote({k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratelimit")})

    def hold(self, seconds: float) -> None:
        self.handle.hold.remote(seconds)


def limiter_name(base_url: str, model: str) -> str:
    return "ray_entigraph-ratelimit-" + hashlib.sha256(f"{base_url}|{model}".encode()).hexdigest()[:16]


def gate_for(base_url: str, model: str, requests_per_minute: float | None, tokens_per_minute: float | None):
    """The shared gate of an endpoint: the named Ray actor when Ray runs (every actor of the job finds the same
    one), else a schedule in this process; None when no limit is configured."""
    if not requests_per_minute and not tokens_per_minute:
        return None
    import ray

    if not ray.is_initialized():
        return LocalGate(RateSchedule(requests_per_minute, tokens_per_minute))
    actor = ray.remote(num_cpus=0, max_restarts=-1)(RateSchedule)
    handle = actor.options(name=limiter_name(base_url, model), get_if_exists=True).remote(
        requests_per_minute, tokens_per_minute)
    return RayGate(handle)


class AdaptiveConcurrency:
    """An async bound on requests in flight that halves on a 429 and grows back by one per `limit` successes."""

    def __init__(self, maximum: int):
        self.maximum = self.limit = max(1, maximum)
        self.in_flight = 0
        self.successes = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> "AdaptiveConcurrency":
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
        return self

    async def __aexit__(self, *exc) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def rate_limited(self) -> None:
        self.limit = max(1, self.limit // 2)
        self.successes = 0

    def succeeded(self) -> None:
        self.successes += 1
        if self.successes >= self.limit and self.limit < self.maximum:
            self.limit += 1
            self.successes = 0
