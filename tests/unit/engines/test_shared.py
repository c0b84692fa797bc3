"""SharedEngine (engines/shared.py): several calls in flight on one engine, each getting its own results.

The engines here are plumbing fakes that record what the pump hands them; the real engines run through it in
tests/integration/test_vllm_engine.py (vLLM's streaming path, threaded Ray Data actors)."""

from __future__ import annotations

import threading
import time

import pytest

from ray_entigraph.engines import GenerationRequest, GenerationResult, SamplingParams
from ray_entigraph.engines.shared import SharedEngine

SAMPLING = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=4, repetition_penalty=1.0)


def requests(prefix: str, n: int) -> list[GenerationRequest]:
    return [GenerationRequest(key=f"{prefix}{i}", messages=[{"role": "user", "content": f"{prefix} {i}"}],
                              sampling=SAMPLING) for i in range(n)]


class BatchEngine:
    """generate() over a list; slow enough that calls arriving meanwhile wait for the next batch."""

    model_name = "fake"

    def __init__(self):
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def generate(self, reqs):
        self.threads.add(threading.current_thread().name)
        self.batches.append([r.key for r in reqs])
        time.sleep(0.2)
        if any(r.key.startswith("boom") for r in reqs):
            raise RuntimeError("engine exploded")
        return [GenerationResult(key=r.key, text=r.key.upper()) for r in reqs]

    def count_tokens(self, text):
        return len(text.split())


class StreamEngine:
    """start()/step(): one request finishes per step, the oldest first; 'bad' is refused at start."""

    model_name = "fake-stream"

    def __init__(self):
        self.running: list[tuple[int, GenerationRequest]] = []
        self.running_at_start: list[int] = []  # requests already running when each start() came

    def start(self, reqs, ids):
        refused = []
        self.running_at_start.append(len(self.running))
        for i, (r, rid) in enumerate(zip(reqs, ids)):
            if r.key.startswith("bad"):
                refused.append((i, GenerationResult.failed(r.key, "refused: bad prompt")))
            else:
                self.running.append((rid, r))
        return refused

    def step(self):
        time.sleep(0.01)
        rid, r = self.running.pop(0)
        return [(rid, GenerationResult(key=r.key, text=r.key.upper()))]

    def abort(self, ids):
        self.running = [(rid, r) for rid, r in self.running if rid not in ids]


def run_together(engine, calls: dict[str, list[GenerationRequest]], stagger: float = 0.05):
    out, errors = {}, {}

    def one(name, reqs):
        try:
            out[name] = engine.generate(reqs)
        except Exception as exc:  # noqa: BLE001
            errors[name] = exc

    threads = []
    for name, reqs in calls.items():
        threads.append(threading.Thread(target=one, args=(name, reqs)))
        threads[-1].start()
        time.sleep(stagger)
    for t in threads:
        t.join(timeout=30)
    return out, errors


def test_calls_waiting_for_a_batching_engine_share_its_next_batch_and_get_their_own_results():
    fake = BatchEngine()
    shared = SharedEngine(fake)
    out, errors = run_together(shared, {"a": requests("a", 3), "b": requests("b", 2), "c": requests("c", 1)})

    assert not errors
    for name, n in (("a", 3), ("b", 2), ("c", 1)):
        assert [r.key for r in out[name]] == [f"{name}{i}" for i in range(n)]
        assert [r.text for r in out[name]] == [f"{name.upper()}{i}" for i in range(n)]
    # a runs alone; b and c arrive while it runs and go in together
    assert fake.batches == [["a0", "a1", "a2"], ["b0", "b1", "c0"]]
    assert fake.threads == {"shared-engine"}  # only the pump touches the engine
    assert shared.model_name == "fake" and shared.count_tokens("one two") == 2
    assert shared.generate([]) == []


def test_an_engine_error_fails_the_calls_of_its_batch_and_the_pump_goes_on():
    fake = BatchEngine()
    shared = SharedEngine(fake)
    out, errors = run_together(shared, {"a": requests("a", 1), "boom": requests("boom", 1), "c": requests("c", 1)},
                               stagger=0.3)
    assert set(errors) == {"boom"} and "exploded" in str(errors["boom"])
    assert [r.text for r in out["a"]] == ["A0"] and [r.text for r in out["c"]] == ["C0"]


def test_a_streaming_engine_takes_a_new_call_into_its_running_batch():
    fake = StreamEngine()
    shared = SharedEngine(fake)
    assert shared.streams
    out, errors = run_together(shared, {"a": requests("a", 8), "b": [*requests("b", 2), *requests("bad", 1)]},
                               stagger=0.02)

    assert not errors
    assert [r.text for r in out["a"]] == [f"A{i}" for i in range(8)]
    assert [r.key for r in out["b"]] == ["b0", "b1", "bad0"]
    assert out["b"][2].error == "refused: bad prompt" and out["b"][0].text == "B0"
    assert fake.running_at_start[0] == 0 and fake.running_at_start[1] > 0  # b joined while a's were running


@pytest.mark.parametrize("kind", ["batch", "stream"])
def test_many_concurrent_calls_each_get_exactly_their_results(kind):
    shared = SharedEngine(BatchEngine() if kind == "batch" else StreamEngine())
    calls = {f"u{k}-": requests(f"u{k}-", 1 + k % 4) for k in range(12)}
    out, errors = run_together(shared, calls, stagger=0.0)
    assert not errors
    for name, reqs in calls.items():
        assert [r.key for r in out[name]] == [r.key for r in reqs]
