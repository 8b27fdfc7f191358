"""A minimal HTTP/1.1 keep-alive load generator for loopback benchmarks (not a benchmark itself).

httpx spends more CPU per request than a small FastAPI route does, so on a 2-core machine it
competes with the server it measures and its own queueing shows up as server latency. This
client is a bare ``asyncio.Protocol`` per connection: the request is pre-encoded bytes, the
response is read by ``Content-Length`` only (chunked bodies are refused), one request is in
flight per connection (no pipelining), and a round has a fixed request count and a deadline.
It runs on uvloop when that is installed (the same loop uvicorn picks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"


class LoadError(RuntimeError):
    """A response was not the expected status, was malformed, or a connection dropped."""


@dataclass
class LoadResult:
    """One round: requests per second over the round and each request's latency in seconds."""

    rps: float
    latencies: list[float]


@dataclass
class _Plan:
    """What a round's connections share: requests left, latencies, and one future for the round."""

    remaining: int
    expect_status: int
    done: asyncio.Future[None]
    active: int = 0  # connections still working
    latencies: list[float] = field(default_factory=list)

    def take(self) -> bool:
        """Claim one more request for a connection; False once the round's count is used up."""
        if self.remaining <= 0 or self.done.done():
            return False
        self.remaining -= 1
        return True

    def finished(self) -> None:
        """A connection has nothing left to send; the last one ends the round."""
        self.active -= 1
        if self.active == 0 and not self.done.done():
            self.done.set_result(None)

    def fail(self, message: str) -> None:
        """End the round with an error (the first one wins)."""
        if not self.done.done():
            self.done.set_exception(LoadError(message))


class _Connection(asyncio.Protocol):
    """One keep-alive connection that sends the next request as soon as a response is complete."""

    def __init__(self, request: bytes, plan: _Plan) -> None:
        self.request = request
        self.plan = plan
        self.transport: asyncio.Transport | None = None
        self.finished = False
        self.buffer = bytearray()
        self.response_end: int | None = None  # offset just past the current response's body
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; the first request waits for ``start`` (connect time is not timed)."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self) -> None:
        """Send the first request, or finish at once when the round has none left."""
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        if self.plan.take():
            self.sent_at = time.perf_counter()
            self.transport.write(self.request)
        elif not self.finished:
            self.finished = True
            self.plan.finished()

    def data_received(self, data: bytes) -> None:
        """Collect bytes; on each complete response record its latency and send the next request."""
        self.buffer += data
        while True:
            if self.response_end is None:
                head_end = self.buffer.find(_HEAD_END)
                if head_end < 0:
                    return
                head = bytes(self.buffer[:head_end]).lower()
                status = int(head[9:12]) if head.startswith(b"http/1.1 ") else -1
                at = head.find(_CONTENT_LENGTH)
                if at < 0:
                    self.plan.fail(f"a response without Content-Length: {head[:200]!r}")
                    return
                line_end = head.find(b"\r\n", at + 2)
                length = int(head[at + len(_CONTENT_LENGTH) : line_end if line_end >= 0 else None])
                self.response_end = head_end + len(_HEAD_END) + length
                if status != self.plan.expect_status:
                    body = bytes(self.buffer[head_end + 4 : self.response_end])
                    self.plan.fail(f"status {status}, expected {self.plan.expect_status}: {body[:300]!r}")
                    return
            if len(self.buffer) < self.response_end:
                return
            self.plan.latencies.append(time.perf_counter() - self.sent_at)
            del self.buffer[: self.response_end]
            self.response_end = None
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        """A connection the server closed mid-round is an error."""
        if not self.finished:
            self.plan.fail(f"the server closed the connection ({exc!r})")


def encode_get(host: str, port: int, path: str, headers: Mapping[str, str]) -> bytes:
    """A pre-encoded keep-alive ``GET``."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _run(
    host: str,
    port: int,
    request: bytes,
    total: int,
    concurrency: int,
    timeout: float,
    connect_interval: float,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    plan = _Plan(remaining=total, expect_status=200, done=loop.create_future())
    connections: list[tuple[asyncio.BaseTransport, _Connection]] = []
    try:
        for _ in range(concurrency):
            connections.append(await loop.create_connection(lambda: _Connection(request, plan), host, port))
            await asyncio.sleep(connect_interval)  # before the clock starts
        plan.active = len(connections)
        began = time.perf_counter()
        for _, protocol in connections:
            protocol.start()
        try:
            await asyncio.wait_for(asyncio.shield(plan.done), timeout)
        except TimeoutError:
            plan.done.cancel()
            raise LoadError(f"{total - plan.remaining} of {total} requests sent in {timeout} s") from None
        elapsed = time.perf_counter() - began
    finally:
        for transport, _ in connections:
            transport.close()
    return LoadResult(rps=len(plan.latencies) / elapsed, latencies=plan.latencies)


def run_load(
    host: str,
    port: int,
    path: str,
    headers: Mapping[str, str],
    *,
    total: int,
    concurrency: int,
    timeout: float = 120.0,
    connect_interval: float = 0.0,
) -> LoadResult:
    """``total`` GETs of ``path`` over ``concurrency`` keep-alive connections, each expecting 200.

    The connections are opened ``connect_interval`` seconds apart before the clock starts: a
    burst of connects lands on whichever server process accepts first (uvicorn's workers share
    one listening socket), where clients that come and go over time spread across them.
    """
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError("the load generator only targets loopback")
    request = encode_get(host, port, path, headers)
    try:
        import uvloop
    except ImportError:  # the plain asyncio loop works, it only costs the client more CPU
        return asyncio.run(_run(host, port, request, total, concurrency, timeout, connect_interval))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(host, port, request, total, concurrency, timeout, connect_interval))
