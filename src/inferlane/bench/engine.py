"""The load generator's engine: keep-alive connections as asyncio protocols, and three ways of
deciding when each request goes out.

- ``OpenLoop``: requests arrive on a schedule (Poisson at a target rate) whether or not the server
  keeps up. Latency runs from each request's *scheduled* time, so a request that waited for a free
  connection, or for a late generator, pays that wait: no coordinated omission. Each request also
  records how late it was written (its send lag), so a generator that falls behind says so.
- ``ClosedLoop``: N connections, each with one request in flight; the next goes when the previous
  answer arrived. Latency runs from the send. This is what most tools (and wrk) measure; it hides
  stalls, since a stalled server also stops the load.
- ``FixedList``: a closed loop over a given list of requests (the demo's and the tests' burst).

    tally = asyncio.run(OpenLoop(target, rate=2000, duration_s=10, warmup_s=2, connections=64).run())

Why protocols and not streams: a ``StreamReader`` costs a future and several awaits per response;
``data_received`` is one callback. Timestamps are ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux,
shared by every process, so several generator processes agree on one schedule).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from inferlane.bench.wire import ProtocolError, Response, ResponseParser

now = time.perf_counter
RECONNECT_BACKOFF_S = 0.05
WATCHDOG_S = 0.25
TICK_S = 0.001


@dataclass(frozen=True)
class Target:
    """Where the load goes: an address and the pre-built requests it cycles through."""

    host: str
    port: int
    requests: tuple[bytes, ...]
    timeout_s: float = 10.0
    """A request with no answer after this long counts as a ``timeout`` and its connection is reopened."""


@dataclass
class Tally:
    """What one generator process measured. Latencies and lags are seconds, for the requests
    scheduled (open loop) or sent (closed loop) inside the measured window only."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    """Requests with no HTTP answer, by cause: refused, reset, closed, timeout, protocol, unsent."""
    send_lags: list[float] = field(default_factory=list)
    """Open loop: write time minus scheduled time, per measured request (a wait for a free
    connection included)."""
    late: list[float] = field(default_factory=list)
    """Open loop: how late the generator itself got to each measured request (its scheduler's
    lateness, before any wait for a connection): the generator falling behind, not the server."""
    scheduled: int = 0
    """Open loop: requests the schedule put in the measured window."""
    waited: int = 0
    """Open loop: measured requests that found every connection busy and queued for one."""
    window_s: float = 0.0
    answered_in_window: int = 0
    """Answers (any status) that arrived inside the measured window: the throughput's numerator."""
    sent_in_window: int = 0
    """Requests written inside the measured window."""
    reconnect_failures: int = 0
    """Attempts to reopen a dropped connection that failed (the server refused or was gone)."""
    cpu_s: float = 0.0
    """CPU time this generator process used during the run (warm-up and drain included)."""
    wall_s: float = 0.0
    headers: list[dict[str, str]] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)
        self.send_lags += other.send_lags
        self.late += other.late
        self.scheduled += other.scheduled
        self.waited += other.waited
        self.reconnect_failures += other.reconnect_failures
        self.answered_in_window += other.answered_in_window
        self.sent_in_window += other.sent_in_window
        self.window_s = max(self.window_s, other.window_s)
        self.cpu_s += other.cpu_s
        self.wall_s = max(self.wall_s, other.wall_s)
        self.headers += other.headers


def _cause(exc: BaseException | None) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "closed" if exc is None else type(exc).__name__


class Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(keep_headers=driver.keep_headers)
        self.scheduled = 0.0  # when the request in flight was due (open loop) or sent (closed loop)
        self.sent = 0.0
        self.busy = False
        self.lost: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def send(self, scheduled: float, raw: bytes) -> None:
        assert self.transport is not None
        self.busy = True
        self.scheduled = scheduled
        self.sent = now()
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except ProtocolError as e:
            self.fail(e)
            return
        for response in responses:
            if not self.busy:  # an answer nobody asked for: the framing is off
                self.fail(ProtocolError("a response with no request in flight"))
                return
            self.busy = False
            self.driver.answered(self, response, now())
            if response.close:
                self.fail(None, counted=False)
                return

    def fail(self, exc: BaseException | None, counted: bool = True) -> None:
        """Drop this connection; a request in flight fails with ``exc``'s cause."""
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        if self.busy and counted:
            self.busy = False
            self.driver.failed(self, _cause(exc))
        self.driver.reconnect(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:  # the server closed it, not us
            self.transport = None
            if self.busy:
                self.busy = False
                self.driver.failed(self, _cause(exc))
            self.driver.reconnect(self)


def _factory(conn: Conn) -> Callable[[], Conn]:
    return lambda: conn


class Driver:
    """What the loops share: the connections, the tally, reconnecting and the request timeout."""

    keep_headers = False

    def __init__(self, target: Target, connections: int) -> None:
        self.target = target
        self.n_connections = connections
        self.conns: list[Conn] = []
        self.tally = Tally()
        self.next_request = 0
        self.stopping = False
        self.settled = asyncio.Event()
        """Set when nothing is in flight or queued once the schedule has ended (see ``drain``)."""
        self.draining = False
        self.measure_from = float("inf")
        self.measure_until = float("inf")

    def raw(self) -> bytes:
        reqs = self.target.requests
        raw = reqs[self.next_request % len(reqs)]
        self.next_request += 1
        return raw

    async def connect(self) -> None:
        """Open every connection; OSError (refused, unreachable) propagates: nothing can be measured."""
        loop = asyncio.get_running_loop()
        for _ in range(self.n_connections):
            conn = Conn(self)
            await loop.create_connection(_factory(conn), self.target.host, self.target.port)
            self.conns.append(conn)

    def measured(self, scheduled: float) -> bool:
        return self.measure_from <= scheduled < self.measure_until

    def answered(self, conn: Conn, response: Response, t: float) -> None:
        if self.measure_from <= t < self.measure_until:
            self.tally.answered_in_window += 1
        if self.measure_from <= conn.sent < self.measure_until:
            self.tally.sent_in_window += 1
        if self.measured(conn.scheduled):
            self.tally.latencies.append(t - conn.scheduled)
            self.tally.statuses[response.status] += 1
            if response.headers is not None:
                self.tally.headers.append(response.headers)
        self.freed(conn)

    def failed(self, conn: Conn, cause: str) -> None:
        if self.measure_from <= conn.sent < self.measure_until:
            self.tally.sent_in_window += 1
        if self.measured(conn.scheduled):
            self.tally.errors[cause] += 1

    def freed(self, conn: Conn) -> None:
        """``conn`` has no request in flight and is open: give it the next one, or let it idle."""
        raise NotImplementedError

    def reconnect(self, conn: Conn) -> None:
        asyncio.get_running_loop().create_task(self._reconnect(conn))

    async def _reconnect(self, conn: Conn) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            fresh = Conn(self)
            try:
                await loop.create_connection(_factory(fresh), self.target.host, self.target.port)
            except OSError:
                self.tally.reconnect_failures += 1
                await asyncio.sleep(RECONNECT_BACKOFF_S)
                continue
            self.conns[self.conns.index(conn)] = fresh
            self.freed(fresh)
            return

    def expire(self) -> None:
        """Fail every request in flight for longer than the target's timeout."""
        limit = now() - self.target.timeout_s
        for conn in list(self.conns):
            if conn.busy and conn.sent < limit:
                conn.fail(TimeoutError())

    def all_idle(self) -> bool:
        return not any(c.busy for c in self.conns)

    def check_settled(self, pending: collections.deque[float] | None = None) -> None:
        if self.draining and not pending and self.all_idle():
            self.settled.set()

    async def drain(self, pending: collections.deque[float] | None = None) -> None:
        """Wait for the requests in flight (and any queued) to finish, or time out."""
        self.draining = True
        deadline = now() + self.target.timeout_s + WATCHDOG_S
        self.check_settled(pending)
        while not self.settled.is_set() and now() < deadline:
            self.expire()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.settled.wait(), WATCHDOG_S)
        self.stopping = True
        if pending:
            self.tally.errors["unsent"] += sum(1 for s in pending if self.measured(s))
            pending.clear()
        for conn in self.conns:
            if conn.busy:
                conn.fail(TimeoutError(), counted=True)
            elif conn.transport is not None:
                conn.transport.close()
                conn.transport = None


def _pause(delay: float, rate: float) -> float:
    """How long the scheduler sleeps before the next arrival, ``delay`` away.

    Event-loop timers have millisecond resolution (libuv's, and epoll's timeout), so a shorter
    sleep either returns at once or overshoots. At a high rate (arrivals closer than a millisecond)
    the scheduler wakes once per millisecond and sends everything due: one loop iteration per
    batch, not per request, which is what lets one core keep 20k requests/s; each request's
    lateness (up to a millisecond) is recorded and counts in its latency. At a low rate it sleeps
    to the arrival (``0``, a bare yield, when the arrival is under a tenth of a millisecond away).
    """
    if delay <= 0:
        return 0.0
    if rate * TICK_S >= 1:
        return max(delay, TICK_S)
    return 0.0 if delay < TICK_S / 10 else delay


class OpenLoop(Driver):
    """Poisson arrivals at ``rate`` per second over warm-up then ``duration_s``."""

    def __init__(self, target: Target, *, rate: float, duration_s: float, warmup_s: float, connections: int,
                 seed: int = 0) -> None:
        super().__init__(target, connections)
        self.rate = rate
        self.duration_s = duration_s
        self.warmup_s = warmup_s
        self.seed = seed
        self.idle: list[Conn] = []
        self.pending: collections.deque[float] = collections.deque()

    def schedule(self, start: float) -> list[float]:
        """Every arrival time, from exponential gaps: a Poisson process starting at ``start``."""
        span = self.warmup_s + self.duration_s
        rng = np.random.default_rng(self.seed)
        n = int(self.rate * span + 6 * (self.rate * span) ** 0.5 + 10)
        times = start + np.cumsum(rng.exponential(1.0 / self.rate, size=n))
        result: list[float] = times[times < start + span].tolist()
        return result

    def freed(self, conn: Conn) -> None:
        if self.pending:
            scheduled = self.pending.popleft()
            conn.send(scheduled, self.raw())
            if self.measured(scheduled):
                self.tally.send_lags.append(conn.sent - scheduled)
        elif not self.stopping:
            self.idle.append(conn)
            self.check_settled(self.pending)

    def dispatch(self, scheduled: float, t: float) -> None:
        measured = self.measured(scheduled)
        if measured:
            self.tally.scheduled += 1
            self.tally.late.append(t - scheduled)
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is None or conn.busy:
                continue  # lost while idle; its reconnect puts a fresh one back
            conn.send(scheduled, self.raw())
            if measured:
                self.tally.send_lags.append(conn.sent - scheduled)
            return
        if measured:
            self.tally.waited += 1
        self.pending.append(scheduled)

    async def run(self, start: float | None = None, connected: bool = False) -> Tally:
        if not connected:
            await self.connect()
        self.idle = list(self.conns)
        cpu0 = time.process_time()
        start = now() + 0.001 if start is None else start
        self.measure_from = start + self.warmup_s
        self.measure_until = self.measure_from + self.duration_s
        times = self.schedule(start)
        next_watchdog = start + WATCHDOG_S
        i, n = 0, len(times)
        while i < n:
            t = now()
            while i < n and times[i] <= t:
                self.dispatch(times[i], t)
                i += 1
            if t >= next_watchdog:
                self.expire()
                next_watchdog = t + WATCHDOG_S
            if i < n:
                await asyncio.sleep(_pause(times[i] - now(), self.rate))
        await self.drain(self.pending)
        self.tally.window_s = self.duration_s
        self.tally.cpu_s = time.process_time() - cpu0
        self.tally.wall_s = now() - start
        return self.tally


class ClosedLoop(Driver):
    """``connections`` connections, each sending its next request as soon as the last one is answered."""

    def __init__(self, target: Target, *, duration_s: float, warmup_s: float, connections: int) -> None:
        super().__init__(target, connections)
        self.duration_s = duration_s
        self.warmup_s = warmup_s

    def freed(self, conn: Conn) -> None:
        t = now()
        if t < self.measure_until and not self.stopping:
            conn.send(t, self.raw())
        else:
            self.check_settled()

    async def run(self, start: float | None = None, connected: bool = False) -> Tally:
        if not connected:
            await self.connect()
        cpu0 = time.process_time()
        start = now() if start is None else start
        self.measure_from = start + self.warmup_s
        self.measure_until = self.measure_from + self.duration_s
        await asyncio.sleep(max(0.0, start - now()))
        for conn in self.conns:
            self.freed(conn)
        while now() < self.measure_until:
            self.expire()
            await asyncio.sleep(min(WATCHDOG_S, max(0.0, self.measure_until - now())))
        await self.drain()
        self.tally.window_s = self.duration_s
        self.tally.cpu_s = time.process_time() - cpu0
        self.tally.wall_s = now() - start
        return self.tally


class FixedList(Driver):
    """Every request of ``target.requests`` once, over ``connections`` closed-loop connections."""

    def __init__(self, target: Target, *, connections: int, keep_headers: bool = False) -> None:
        super().__init__(target, min(connections, max(1, len(target.requests))))
        self.keep_headers = keep_headers
        self.measure_from, self.measure_until = 0.0, float("inf")
        self.done = 0
        self.finished = asyncio.Event()

    def freed(self, conn: Conn) -> None:
        if self.next_request < len(self.target.requests) and not self.stopping:
            conn.send(now(), self.raw())

    def answered(self, conn: Conn, response: Response, t: float) -> None:
        self._count()
        super().answered(conn, response, t)

    def failed(self, conn: Conn, cause: str) -> None:
        self._count()
        super().failed(conn, cause)

    def _count(self) -> None:
        self.done += 1
        if self.done >= len(self.target.requests):
            self.finished.set()

    async def run(self) -> Tally:
        if not self.target.requests:
            return self.tally
        await self.connect()
        t0 = now()
        for conn in self.conns:
            self.freed(conn)
        while not self.finished.is_set():
            self.expire()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), WATCHDOG_S)
        self.stopping = True
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
                conn.transport = None
        self.tally.wall_s = self.tally.window_s = now() - t0
        return self.tally
