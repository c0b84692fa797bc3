"""One engine, several units of work in flight: the calls of a model actor share its engine.

A model actor runs `resources.units_in_flight_per_actor` calls at once (Ray Data's
`max_concurrent_calls_per_actor`, each call one unit of work with its own exactly-once commit). Without this,
each call runs its requests to the end before the next call starts, so the engine idles while a batch drains
its last long requests and while the next unit is read, planned and handed over.

`SharedEngine` wraps the actor's engine. Every call's `generate` hands its requests to one pump thread, the
only thread that touches the engine, and waits for its own results:
- an engine that streams (vLLM: `start` adds requests to the running engine, `step` advances it and returns
  the requests that finished) gets every call's requests as they arrive, so a new unit's requests join the
  batch that is running (continuous batching across units) and a call returns as soon as its own are done;
- any other engine (transformers, the HTTP engine, echo) gets one `generate` over the requests of every call
  waiting when the previous one ends, so the next batch is ready the moment the engine is free.
Results go back to the call that asked, in its order; an engine error fails the calls it was running, never
the others. Token counting is serialised with the pump's work (tokenizers are not all thread-safe).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from ray_entigraph.engines.base import GenerationRequest, GenerationResult

logger = logging.getLogger(__name__)


@dataclass
class _Call:
    requests: list[GenerationRequest]
    results: list[GenerationResult | None] = field(default_factory=list)
    left: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.requests)
        self.left = len(self.requests)
        if not self.left:
            self.done.set()

    def deliver(self, index: int, result: GenerationResult) -> None:
        self.results[index] = result
        self.left -= 1
        if self.left == 0:
            self.done.set()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.done.set()


class SharedEngine:
    """An engine shared by concurrent calls (threads); see the module docstring. Other attributes (model_name,
    supports_json_schema, close, ...) are the wrapped engine's."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.streams = callable(getattr(engine, "start", None)) and callable(getattr(engine, "step", None))
        self._queue: queue.Queue[_Call] = queue.Queue()
        self._lock = threading.Lock()  # the engine's: the pump's work and token counting
        self._thread = threading.Thread(target=self._pump, name="shared-engine", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        call = _Call(list(requests))
        if call.left:
            self._queue.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.results  # type: ignore[return-value]

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return self.engine.count_tokens(text)

    # -- the pump thread ---------------------------------------------------------------------------------
    def _waiting(self, block: bool) -> list[_Call]:
        calls = []
        try:
            calls.append(self._queue.get(block=block))
            while True:
                calls.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return calls

    def _pump(self) -> None:
        in_flight: dict[int, tuple[_Call, int]] = {}  # stream id -> (call, index in the call)
        next_id = 0
        while True:
            calls = self._waiting(block=not in_flight)
            if not self.streams:
                self._generate_merged(calls)
                continue
            for call in calls:
                with self._lock:
                    try:
                        ids = list(range(next_id, next_id + len(call.requests)))
                        next_id += len(ids)
                        for i, res in self.engine.start(call.requests, ids):
                            call.deliver(i, res)  # refused before it reached the engine (too long, bad prompt)
                        in_flight.update({rid: (call, i) for i, rid in enumerate(ids)
                                          if call.results[i] is None})
                    except Exception as exc:  # noqa: BLE001 - this call fails, not its neighbours
                        logger.warning("engine refused a unit's requests: %s", exc)
                        call.fail(exc)
            if not in_flight:
                continue
            with self._lock:
                try:
                    finished = self.engine.step()
                except Exception as exc:  # noqa: BLE001 - the calls running fail; later ones get a fresh try
                    logger.warning("engine step failed with %d requests in flight: %s", len(in_flight), exc)
                    for call in {id(c): c for c, _ in in_flight.values()}.values():
                        call.fail(exc)
                    self.engine.abort(list(in_flight))
                    in_flight.clear()
                    continue
            for rid, res in finished:
                if rid not in in_flight:  # added before its call failed to start: nobody waits for it
                    continue
                call, i = in_flight.pop(rid)
                if call.error is None:
                    call.deliver(i, res)

    def _generate_merged(self, calls: list[_Call]) -> None:
        merged = [r for call in calls for r in call.requests]
        with self._lock:
            try:
                results = self.engine.generate(merged)
            except Exception as exc:  # noqa: BLE001 - the calls of this batch fail, the pump goes on
                for call in calls:
                    call.fail(exc)
                return
        k = 0
        for call in calls:
            for i in range(len(call.requests)):
                call.deliver(i, results[k])
                k += 1
