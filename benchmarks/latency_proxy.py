"""An HTTP reverse proxy on 127.0.0.1 that adds a fixed latency to every request and counts requests by
type (LIST, GET, HEAD, PUT, DELETE, POST): an object store that answers like a remote one, for benchmarks.

Each request gets a fresh upstream connection and the answer says `Connection: close`, so every request the
client makes is one request counted here. `Expect: 100-continue` is answered at once (the client does not
wait for it), and the upstream sees the request without it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter


def request_kind(method: str, target: str) -> str:
    """LIST for a bucket listing (GET with list-type or prefix in the query), else the method."""
    path, _, query = target.partition("?")
    if method == "GET" and ("list-type=" in query or "prefix=" in query or path.rstrip("/").count("/") <= 1):
        return "LIST"
    return method


class LatencyProxy:
    def __init__(self, upstream_port: int, delay_s: float = 0.02, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._server = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LatencyProxy":
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("latency proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(self.counts)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0, limit=2**24))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one(self, reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        with self._lock:
            self.counts[request_kind(method, target)] += 1
        await asyncio.sleep(self.delay_s)
        kept = [line for line in lines[1:] if line and not line.lower().startswith(("connection:", "keep-alive:",
                                                                                     "expect:"))]
        up_reader, up_writer = await asyncio.open_connection(*self.upstream, limit=2**24)
        try:
            up_writer.write(("\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")
                            + body)
            await up_writer.drain()
            answer = await up_reader.read()
        finally:
            up_writer.close()
        head, sep, rest = answer.partition(b"\r\n\r\n")
        out = [h for h in head.split(b"\r\n") if not h.lower().startswith((b"connection:", b"keep-alive:"))]
        writer.write(b"\r\n".join([*out, b"Connection: close"]) + sep + rest if sep else answer)
        await writer.drain()
