"""Shared rate limits on an injected clock: the schedule's arithmetic, the server's headers, and two engines
holding one requests-per-minute budget against a local server that records when each request arrives."""

from __future__ import annotations

import asyncio
import threading
import time

from ray_entigraph.config import OpenAIConfig
from ray_entigraph.engines.base import GenerationRequest, SamplingParams
from ray_entigraph.engines.openai_engine import OpenAIEngine
from ray_entigraph.engines.ratelimit import AdaptiveConcurrency, LocalGate, RateSchedule, gate_for, parse_reset

from .test_openai_engine import ScriptedServer


class Clock:
    """Virtual time: `now()` and `sleep()` run `scale` times faster than the wall clock."""

    def __init__(self, scale: float = 1.0):
        self.scale, self.t = scale, 0.0
        self.origin = time.monotonic()

    def now(self) -> float:
        return self.t if self.scale == 0 else (time.monotonic() - self.origin) * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.scale)


def test_schedule_spaces_requests_and_tokens_on_virtual_time():
    clock = Clock(scale=0)  # frozen: every reservation is made at t = 0
    rpm = RateSchedule(60, None, clock=clock.now)
    assert [rpm.reserve() for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]
    tpm = RateSchedule(None, 600, clock=clock.now)  # 100-token requests: 6 a minute, one every 10 s
    assert [tpm.reserve(100) for _ in range(3)] == [0.0, 10.0, 20.0]
    both = RateSchedule(600, 600, clock=clock.now)  # the tighter of the two budgets decides
    assert [both.reserve(50) for _ in range(3)] == [0.0, 5.0, 10.0]


def test_server_headers_lower_the_rate_and_an_empty_window_holds_everyone(monkeypatch):
    import ray

    clock = Clock(scale=0)
    s = RateSchedule(60, None, clock=clock.now)
    s.observe({"X-RateLimit-Limit-Requests": "30", "x-ratelimit-remaining-requests": "12"})
    assert s.reserve() == 0.0 and abs(s.reserve() - 60 / (30 * 0.95)) < 1e-9  # the server's limit, 5% under
    s = RateSchedule(60, None, clock=clock.now)
    s.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"})
    assert s.reserve() == 360.0
    s.hold(400.0)  # a 429's Retry-After
    assert s.reserve() == 400.0
    assert (parse_reset("1s"), parse_reset("6m0s"), parse_reset("20ms"), parse_reset("0.5"), parse_reset("x")) == (
        1.0, 360.0, 0.02, 0.5, None)
    assert gate_for("http://x/v1", "m", None, None) is None
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # (the suite's Ray may be up from earlier tests)
    assert isinstance(gate_for("http://x/v1", "m", 60, None), LocalGate)  # outside Ray: this process's schedule


def requests_per_minute(arrivals: list[float]) -> float:
    times = sorted(arrivals)
    return 60 * (len(times) - 1) / (times[-1] - times[0])


def _two_engines_send(url: str, clock: Clock, gate, per_engine: int) -> None:
    """Two engines (as two actors would), each in its own thread with its own event loop, sharing `gate`."""
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            send(name)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            errors.append(exc)

    def send(name: str) -> None:
        engine = OpenAIEngine(OpenAIConfig(base_url=url, api_key_env=None, max_concurrency=4), "m")
        engine._gate, engine._gate_resolved, engine._sleep = gate, True, clock.sleep
        sampling = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=4, repetition_penalty=1.0)
        requests = [GenerationRequest(key=f"{name}{i}", messages=[{"role": "user", "content": "hi"}],
                                      sampling=sampling) for i in range(per_engine)]
        assert all(r.error is None for r in engine.generate(requests))

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def test_two_engines_hold_a_shared_requests_per_minute_within_ten_percent():
    clock = Clock(scale=15.0)  # one virtual minute is four wall seconds (less scheduling jitter per virtual second)
    server = ScriptedServer(clock=clock.now)  # answers at once, and records when each request arrived
    try:
        _two_engines_send(server.url, clock, LocalGate(RateSchedule(60, None, clock=clock.now)), per_engine=30)
        limited = requests_per_minute(server.arrivals)
        assert len(server.arrivals) == 60 and abs(limited - 60) <= 6, limited
        server.arrivals.clear()  # the control: the same two engines with no limit go far faster
        _two_engines_send(server.url, clock, None, per_engine=30)
        assert requests_per_minute(server.arrivals) > 2 * 60  # (here: several hundred a virtual minute)
    finally:
        server.close()


def test_adaptive_concurrency_halves_on_429_and_grows_back():
    bound = AdaptiveConcurrency(8)
    bound.rate_limited()
    bound.rate_limited()
    assert bound.limit == 2
    for _ in range(2):
        bound.succeeded()
    assert bound.limit == 3
    for _ in range(100):
        bound.succeeded()
    assert bound.limit == 8
