"""A fault-injecting HTTP reverse proxy on 127.0.0.1, for testing HTTP engines against a real server.

It forwards each request to the upstream server on a fresh connection (one request per connection: every
answer carries `Connection: close`), except that POSTs to `.../chat/completions` first consume a fault
schedule, one fault per request in arrival order:

  "429"       answer 429 with `Retry-After: <retry_after_s>` (nothing reaches the server)
  "500"/"503" answer that status (nothing reaches the server)
  "drop"      close the connection without answering (nothing reaches the server)
  "truncate"  start a 200 answer, then close mid-body (nothing reaches the server)

It counts, per request key (header X-Request-Key), how many requests reached the server and how many it
answered with a 2xx, so a test can check that every request completed exactly once upstream. Every count
(and the record of an injected fault) is updated before the client gets the answer, so a test that reads
them after its requests returned reads final counts.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

FAULTS = ("429", "500", "503", "drop", "truncate")


class FaultProxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1", retry_after_s: int = 1):
        self.upstream = (upstream_host, upstream_port)
        self.retry_after_s = retry_after_s
        self.faults: list[str] = []
        self.injected: list[tuple[str | None, str]] = []  # (request key, fault) in the order injected
        self.reached: Counter = Counter()  # requests per key that reached the server
        self.succeeded: Counter = Counter()  # 2xx answers per key from the server
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset(self, faults: list[str] = ()) -> None:
        """A new fault schedule, and counters from zero."""
        unknown = set(faults) - set(FAULTS)
        assert not unknown, f"unknown faults {unknown}; known: {FAULTS}"
        with self._lock:
            self.faults = list(faults)
            self.injected = []
            self.reached = Counter()
            self.succeeded = Counter()

    # -- internals --------------------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()

    async def _handle_one(self, reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        key = headers.get("x-request-key")

        fault = None
        if method == "POST" and path.endswith("/chat/completions"):
            with self._lock:
                if self.faults:
                    fault = self.faults.pop(0)
                    self.injected.append((key, fault))
        if fault in ("429", "500", "503"):
            extra = f"Retry-After: {self.retry_after_s}\r\n" if fault == "429" else ""
            payload = json.dumps({"error": {"message": f"injected {fault}", "code": int(fault)}}).encode()
            writer.write(f"HTTP/1.1 {fault} Injected\r\nContent-Type: application/json\r\n{extra}"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            await writer.drain()
            return
        if fault == "drop":
            return
        if fault == "truncate":
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"id": "cut')
            await writer.drain()
            return

        # pass through: the same request on a fresh upstream connection; the answer is read whole, then relayed
        out_headers = [line for line in lines[1:]
                       if line and not line.lower().startswith(("connection:", "keep-alive:"))]
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            with self._lock:
                self.reached[key] += 1
            upstream_head = "\r\n".join([lines[0], *out_headers, "Connection: close"]) + "\r\n\r\n"
            up_writer.write(upstream_head.encode("latin-1") + body)
            await up_writer.drain()
            answer = await up_reader.read()  # the server closes after its answer (Connection: close)
        finally:
            up_writer.close()
        head, sep, rest = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        if 200 <= status < 300:
            with self._lock:
                self.succeeded[key] += 1
        # we close after every answer: say so, so that the client never reuses the connection
        kept = [h for h in head.split(b"\r\n") if not h.lower().startswith((b"connection:", b"keep-alive:"))]
        writer.write(b"\r\n".join([*kept, b"Connection: close"]) + sep + rest if sep else answer)
        await writer.drain()
