"""The load client: ``python -m benchmarks.rollout.client PORT RATE OUT [PATH BODIES]``.

Sends unpinned V2 requests for model ``m`` (or POSTs to PATH, the bodies in turn from BODIES, a file
of one JSON body per line) at RATE per second on a fixed schedule (open loop:
request i is due at start + i / RATE, whatever became of the earlier ones) over CONNECTIONS
keep-alive connections, one request in flight each; a request due while every connection is busy
waits for the first one free. It prints ``ready`` once its connections are open and starts at once;
when a line (or end of file) arrives on stdin it stops scheduling, waits for the requests already
due, writes every answer to OUT (JSON, one array per field) and prints one JSON summary line.

Per answer: ``due`` (time.monotonic() when it was due; the machine's clock, shared with the
benchmark), ``issued`` (when the schedule woke up and issued it: timers tick in milliseconds, so up
to a millisecond after ``due``, more when the client is short of CPU), ``done`` (its whole response
read), ``status`` (BROKEN: the connection failed; HUNG: no answer within REQUEST_TIMEOUT_S) and
``version`` (the ``inferlane-model-version`` header). Latency is ``done - issued``: a wait for a free
connection counts (no coordinated omission), the timer's granularity does not.

One asyncio protocol per connection parses the answers as they arrive, with no task or future per
request, so that one client core offers thousands of requests per second on time. It runs in a
process of its own, pinned to the client core.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import orjson

from benchmarks.common import emit
from benchmarks.rollout.models import MODEL, request_bodies
from inferlane.testing import LOOPBACK

CONNECTIONS = 64
REQUEST_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 30.0
"""After stop: the longest wait for the requests already due."""
DISTINCT_BODIES = 1000
BROKEN, HUNG = 0, -1
_VERSION = b"inferlane-model-version"
_LENGTH = b"content-length"


@dataclass
class Answers:
    due: list[float] = field(default_factory=list)
    issued: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    version: list[str | None] = field(default_factory=list)

    def add(self, due: float, issued: float, status: int, version: str | None) -> None:
        self.due.append(due)
        self.issued.append(issued)
        self.done.append(time.monotonic())
        self.status.append(status)
        self.version.append(version)


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; tells the client when it is free."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.request: tuple[float, float] | None = None
        """(due, issued) of the request in flight."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def send(self, raw: bytes, due: float, issued: float) -> None:
        assert self.transport is not None
        self.request = (due, issued)
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.request is None:
            return
        lines = self.buffer[:end].split(b"\r\n")
        length, version = 0, None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == _LENGTH:
                length = int(value)
            elif name == _VERSION:
                version = value.strip().decode()
        if len(self.buffer) < end + 4 + length:
            return  # the body is still coming
        self.buffer = self.buffer[end + 4 + length:]
        due, issued = self.request
        self.request = None
        self.client.answers.add(due, issued, int(lines[0].split(b" ", 2)[1]), version)
        self.client.free(self)

    def fail(self, status: int) -> None:
        """Record the request in flight as failed and drop the connection (the client opens another)."""
        if self.request is not None:
            due, issued = self.request
            self.request = None
            self.client.answers.add(due, issued, status, None)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.request is not None:
            self.fail(BROKEN)
        self.client.replace(self)


class Client:
    """The schedule, the queue of requests waiting for a connection, and the connections."""

    def __init__(self, port: int, rate: float, path: str = f"/v2/models/{MODEL}/infer",
                 bodies: list[bytes] | None = None) -> None:
        self.port, self.rate = port, rate
        self.requests = [
            (f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            for body in bodies or request_bodies(DISTINCT_BODIES)]
        self.answers = Answers()
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.waiting: collections.deque[tuple[int, float, float]] = collections.deque()
        self.stop = asyncio.Event()
        self.drained = asyncio.Event()
        self.scheduled = 0

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Connection(self), LOOPBACK, self.port)
        self.free(conn)

    def _submit(self, i: int, due: float, issued: float) -> None:
        if self.idle:
            conn = self.idle.pop()
            self.busy.add(conn)
            conn.send(self.requests[i % len(self.requests)], due, issued)
        else:
            self.waiting.append((i, due, issued))

    def free(self, conn: Connection) -> None:
        self.busy.discard(conn)
        self.idle.append(conn)
        if self.waiting:
            self._submit(*self.waiting.popleft())
        elif not self.busy and self.stop.is_set():
            self.drained.set()

    def replace(self, conn: Connection) -> None:
        """A connection closed (by the server, or failed here): open another in its place."""
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if not self.drained.is_set():
            asyncio.get_running_loop().create_task(self._open())

    def _expire(self) -> None:
        """Every request in flight for longer than REQUEST_TIMEOUT_S is hung."""
        now = time.monotonic()
        for conn in list(self.busy):
            if conn.request is not None and now - conn.request[1] > REQUEST_TIMEOUT_S:  # issued, queue included
                conn.fail(HUNG)

    async def _schedule(self) -> float:
        """Submit request i at start + i / rate until stopped; returns the seconds scheduled."""
        start, i, next_check = time.monotonic(), 0, 1.0
        while not self.stop.is_set():
            now = time.monotonic()
            while start + i / self.rate <= now:  # every request due by now, even after a late wake-up
                self._submit(i, start + i / self.rate, now)
                i += 1
            self.scheduled = i
            if now - start > next_check:
                self._expire()
                next_check += 1.0
            # At least a millisecond: shorter sleeps return at once on uvloop, and the loop would spin.
            await asyncio.sleep(max(0.001, start + i / self.rate - time.monotonic()))
        return time.monotonic() - start

    async def _drain(self) -> None:
        if not self.busy and not self.waiting:
            self.drained.set()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not self.drained.is_set() and time.monotonic() < deadline:
            self._expire()
            with contextlib.suppress(TimeoutError):  # look for hung requests every second
                await asyncio.wait_for(self.drained.wait(), 1.0)

    async def run(self) -> dict[str, float | int]:
        for _ in range(CONNECTIONS):
            await self._open()
        loop = asyncio.get_running_loop()
        threading.Thread(target=lambda: (sys.stdin.readline(), loop.call_soon_threadsafe(self.stop.set)),
                         daemon=True).start()
        print("ready", flush=True)
        cpu = time.process_time()
        seconds = await self._schedule()
        await self._drain()
        answered = len(self.answers.status)
        return {"scheduled_s": seconds, "scheduled": self.scheduled, "answers": answered,
                "undrained": self.scheduled - answered, "cpu_s": time.process_time() - cpu}


def main(argv: list[str]) -> int:
    import uvloop  # what `inferlane serve` runs on

    port, rate, out = int(argv[0]), float(argv[1]), Path(argv[2])
    client = Client(port, rate) if len(argv) < 5 else Client(
        port, rate, argv[3], [line for line in Path(argv[4]).read_bytes().splitlines() if line])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        summary = runner.run(client.run())
    out.write_bytes(orjson.dumps(client.answers.__dict__))
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
