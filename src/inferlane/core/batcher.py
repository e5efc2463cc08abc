"""The dynamic batcher: groups concurrent requests into one forward pass.

    batcher = DynamicBatcher(model.forward, policy, elements_budget=budget)
    result = await batcher.submit({"x": rows}, rows=len(rows), elements=rows.size,
                                  deadline=clock.now() + 0.1)

It is work-conserving: a request never waits for company that is not coming.

- When the model is idle, the queued requests go to the model at once (a lone request is a batch
  of one).
- While a forward pass runs, arrivals queue up; when the model is free they go as the next batch,
  up to ``max_batch_size`` rows and the element budget. Under load, batches grow by themselves.
- With ``max_inflight_batches`` > 1, a batch that could start beside running ones waits for
  company until the oldest request has waited ``max_queue_delay``, or until waiting longer would
  make it miss its deadline given the measured forward time. Raise the delay for bigger batches.

Waits are futures and timers on the event loop (no polling). One timer watches every deadline
(the earliest one pending): when a request's deadline passes, its caller gets DeadlineExceeded at
once and, if it is still queued, it never reaches the model. A forward pass measured faster than
``inline_below_s`` runs on the event loop itself (a thread hand-off would cost more than the
model); slower ones run in a worker thread.

``forward`` must return one row per input row for every output: ModelVersion.forward checks that
(and raises BatchSizeMismatch, which fails every request of the batch).

Requests have a priority: ``ONLINE`` (the default) or ``BACKGROUND`` (jobs). A batch takes every
queued online request it can hold first and fills the remaining rows with background requests,
so a flood of jobs delays an online request by at most the batch already running.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from inferlane.core.clock import Clock, MonotonicClock, Timer
from inferlane.core.errors import (
    DeadlineExceeded,
    InferlaneError,
    ModelError,
    ModelNotReady,
    QueueFull,
    Unavailable,
)
from inferlane.core.retry import is_transient
from inferlane.core.spec import BatchingPolicy

log = logging.getLogger(__name__)

Forward = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
_Done = tuple[list[dict[str, np.ndarray]], float]
"""A forward pass's outcome: each request's outputs, and the seconds the pass took."""
ONLINE, BACKGROUND = 0, 1
INLINE_BELOW_S = 0.0005
"""Forward passes predicted faster than this run on the event loop (a thread hand-off costs tens
of microseconds and a context switch)."""
INLINE_BELOW_ONE_CPU_S = 0.020
"""The same bound for a process with one usable CPU, where a worker thread buys no parallelism:
only passes that would stall serving for longer go to a thread."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """What one request gets back: its rows of every output, and where its time went."""

    outputs: dict[str, np.ndarray]
    queue_s: float
    """From submit until its batch started."""
    forward_s: float
    """The batch's forward pass (including merge and split)."""
    batch_rows: int
    """Rows in the batch this request rode in."""


class BatchObserver(Protocol):
    """Receives one call per executed batch (metrics live outside the core; queue depth and batches
    in flight are read at scrape time from :attr:`DynamicBatcher.queue_depth` and ``inflight``)."""

    def on_batch(self, rows: int, requests: int, forward_s: float, queue_waits: list[float]) -> None: ...


@dataclass(eq=False, slots=True)
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    elements: int
    key: Hashable
    deadline: float
    enqueued: float
    future: asyncio.Future[Prediction]
    priority: int = ONLINE
    queued: bool = True


@dataclass(slots=True)
class _Batch:
    items: list[_Pending] = field(default_factory=list)
    rows: int = 0


class _Deadlines:
    """Every pending request's deadline under one timer (armed for the earliest). Deadlines mostly
    arrive in order (one default timeout), so they sit in a FIFO; the few that do not, in a heap."""

    def __init__(self, clock: Clock, expire: Callable[[_Pending], None]) -> None:
        self._clock = clock
        self._expire = expire
        self._fifo: deque[_Pending] = deque()
        self._heap: list[tuple[float, int, _Pending]] = []
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._timer_at = math.inf

    def add(self, p: _Pending) -> None:
        if not self._fifo or p.deadline >= self._fifo[-1].deadline:
            self._fifo.append(p)
        else:
            heapq.heappush(self._heap, (p.deadline, next(self._seq), p))
        if p.deadline < self._timer_at:
            self._arm(p.deadline)

    def trim(self) -> None:
        """Forget answered requests at the front (called after each batch: keeps both short, since
        requests are answered roughly in deadline order)."""
        fifo, heap = self._fifo, self._heap
        while fifo and fifo[0].future.done():
            fifo.popleft()
        while heap and heap[0][2].future.done():
            heapq.heappop(heap)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._clock.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._clock.now()
        fifo, heap = self._fifo, self._heap
        while fifo and (fifo[0].future.done() or fifo[0].deadline <= now):
            p = fifo.popleft()
            if not p.future.done():
                self._expire(p)
        while heap and (heap[0][2].future.done() or heap[0][0] <= now):
            p = heapq.heappop(heap)[2]
            if not p.future.done():
                self._expire(p)
        nxt = min(fifo[0].deadline if fifo else math.inf, heap[0][0] if heap else math.inf)
        if nxt < math.inf:
            self._arm(nxt)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class DynamicBatcher:
    """One queue per model version; see the module docstring for when batches close."""

    def __init__(
        self,
        forward: Forward,
        policy: BatchingPolicy,
        *,
        elements_budget: int,
        clock: Clock | None = None,
        executor: Executor | None = None,
        observer: BatchObserver | None = None,
        name: str = "model",
        inline_below_s: float = INLINE_BELOW_S,
    ) -> None:
        self._forward = forward
        self._policy = policy
        self._max_rows = policy.max_batch_size if policy.enabled else 1 << 62
        self._max_delay = policy.max_queue_delay_ms / 1000.0 if policy.enabled else 0.0
        self._budget = elements_budget
        self._clock = clock or MonotonicClock()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=policy.max_inflight_batches, thread_name_prefix=f"forward-{name}")
        self._observer = observer
        self._name = name
        self._inline_below_s = inline_below_s
        self._queues: tuple[deque[_Pending], deque[_Pending]] = (deque(), deque())
        self._live_by_priority = [0, 0]
        self._live_rows = 0
        self._live_elements = 0
        self._inflight = 0
        self._forward_estimate = 0.0
        self._row_cost = 0.0
        """Smoothed forward seconds per row: predicts a batch's forward time from its rows."""
        self._deadlines = _Deadlines(self._clock, self._expire)
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_for: Literal["arrival", "slot", "delay"] | None = None
        self._task: asyncio.Task[None] | None = None
        self._leading = False
        """True while a request that found the model idle is about to run the queue as a batch."""
        self._closed = False

    # -- public surface -------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not yet in a batch)."""
        return self._live_by_priority[0] + self._live_by_priority[1]

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def forward_estimate(self) -> float:
        """Smoothed forward time of recent batches, in seconds."""
        return self._forward_estimate

    def seed_forward_estimate(self, seconds: float, rows: int = 1) -> None:
        """Start the estimates from a measured warm-up batch of ``rows`` rows instead of zero."""
        self._forward_estimate = max(self._forward_estimate, seconds)
        self._row_cost = max(self._row_cost, seconds / max(1, rows))

    def runs_inline(self, rows: int) -> bool:
        """Whether a batch of ``rows`` rows would run on the event loop (predicted fast enough)."""
        return 0.0 < self._row_cost * rows < self._inline_below_s

    async def submit(
        self, inputs: Mapping[str, np.ndarray], *, rows: int, elements: int, deadline: float,
        key: Hashable = None, priority: int = ONLINE,
    ) -> Prediction:
        """Queue one request (``rows`` rows along the first dimension) and wait for its outputs.

        ``key`` groups requests that may share a batch (requests with different variable
        dimensions cannot be concatenated). Raises QueueFull, DeadlineExceeded, ModelNotReady
        or the batch's error.
        """
        if self._closed:
            raise ModelNotReady(f"model {self._name} is unloading")
        now = self._clock.now()
        if deadline <= now:
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        if self._live_by_priority[priority] >= self._policy.max_queue_size:
            raise QueueFull(
                f"model {self._name} has {self._live_by_priority[priority]} requests queued (max_queue_size "
                f"{self._policy.max_queue_size}); retry later", retry_after=self._retry_after())
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._run(), name=f"batcher-{self._name}")
        fut: asyncio.Future[Prediction] = loop.create_future()
        p = _Pending(inputs, rows, elements, key, deadline, now, fut, priority)
        self._queues[priority].append(p)
        self._live_by_priority[priority] += 1
        self._live_rows += rows
        self._live_elements += elements
        self._deadlines.add(p)
        if self._leading:
            pass  # a request is about to take the queue as a batch itself (below): it takes this one too
        elif self._idle() and self.runs_inline(rows):
            return await self._lead(p)
        elif self._waiting_for == "arrival" or (self._waiting_for == "delay" and self._full()):
            self._wake()
        try:
            return await fut
        except asyncio.CancelledError:
            # The caller went away (client disconnect): never spend model time on it.
            self._drop(p)
            raise

    def _idle(self) -> bool:
        """No batch running and the batcher task asleep waiting for arrivals."""
        w = self._waiter
        return not self._inflight and self._waiting_for == "arrival" and w is not None and not w.done()

    async def _lead(self, p: _Pending) -> Prediction:
        """The model is idle and fast: this request runs the next batch itself, without handing it
        to the batcher task. It first lets the event loop run once, so that requests which arrived
        together (already scheduled) join the batch; then it runs the batch inline and has its own
        answer at once. Whatever is left in the queue goes back to the batcher task."""
        self._leading = True
        try:
            await asyncio.sleep(0)
            if self.queue_depth > 1:
                # Others came with this request: a burst, which may still be arriving. While it
                # grows, give the event loop two more turns (one reads the sockets, the next runs
                # the new requests' handlers), within max_queue_delay: fewer, fuller batches.
                seen = self.queue_depth
                while not self._full() and self._clock.now() - p.enqueued < self._max_delay:
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    if self.queue_depth == seen:
                        break
                    seen = self.queue_depth
        except asyncio.CancelledError:
            self._drop(p)
            raise
        finally:
            self._leading = False
            if self._idle():  # still idle: run what is queued now (this request first)
                batch = self._take()
                if batch.items:
                    self._inflight += 1
                    if self.runs_inline(batch.rows):
                        self._execute_inline(batch)
                    else:
                        asyncio.get_running_loop().create_task(self._execute(batch))
            if self.queue_depth and self._waiting_for == "arrival":
                self._wake()
        try:
            return await p.future
        except asyncio.CancelledError:
            self._drop(p)
            raise

    async def close(self) -> None:
        """Stop taking requests, let running batches finish, fail what is still queued."""
        self._closed = True
        while self._inflight:
            await self._sleep("slot", None)
        for q in self._queues:
            for p in q:
                if not p.future.done():
                    p.future.set_exception(ModelNotReady(f"model {self._name} was unloaded"))
            q.clear()
        self._deadlines.close()
        if self._task is not None:
            self._task.cancel()
        if self._own_executor:
            self._executor.shutdown(wait=False)

    # -- internals ------------------------------------------------------------------------------

    def _retry_after(self) -> int:
        batches = self.queue_depth / max(1, self._policy.max_batch_size) + 1
        return int(batches * max(self._forward_estimate, 0.001) / self._policy.max_inflight_batches) + 1

    def _full(self) -> bool:
        return self._live_rows >= self._max_rows or self._live_elements >= self._budget

    def _drop(self, p: _Pending) -> None:
        if p.queued:
            p.queued = False
            self._live_by_priority[p.priority] -= 1
            self._live_rows -= p.rows
            self._live_elements -= p.elements

    def _expire(self, p: _Pending) -> None:
        if not p.future.done():
            where = "in the queue" if p.queued else "while its batch was running"
            p.future.set_exception(DeadlineExceeded(f"the request's deadline passed {where}"))
        self._drop(p)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _sleep(self, reason: Literal["arrival", "slot", "delay"], until: float | None) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiter, self._waiting_for = fut, reason
        timer = self._clock.call_at(until, self._wake) if until is not None else None
        try:
            await fut
        finally:
            self._waiter = self._waiting_for = None
            if timer is not None:
                timer.cancel()

    def _head(self) -> _Pending | None:
        """The oldest online request, else the oldest background one."""
        for q in self._queues:
            while q and not q[0].queued:
                q.popleft()
            if q:
                return q[0]
        return None

    async def _run(self) -> None:
        while not self._closed:
            head = self._head()
            if head is None:
                await self._sleep("arrival", None)
                continue
            if self._inflight >= self._policy.max_inflight_batches:
                await self._sleep("slot", None)
                continue
            if self._inflight and not self._full():
                # Another batch is running and a slot is free: wait a little for company.
                close_at = min(head.enqueued + self._max_delay, head.deadline - self._forward_estimate)
                if self._clock.now() < close_at:
                    await self._sleep("delay", close_at)
                    continue
            batch = self._take()
            if not batch.items:
                continue
            self._inflight += 1
            if self.runs_inline(batch.rows):
                self._execute_inline(batch)
                if self.queue_depth:
                    await asyncio.sleep(0)  # a long queue: let the answers go out before the next batch
            else:
                asyncio.get_running_loop().create_task(self._execute(batch))

    def _take(self) -> _Batch:
        batch = _Batch()
        elements = 0
        key: Hashable = None
        for q in self._queues:  # online first, then background fills the rest
            while q:
                p = q[0]
                if not p.queued:
                    q.popleft()
                    continue
                if batch.items:
                    if (not self._policy.enabled or p.key != key or batch.rows + p.rows > self._max_rows
                            or elements + p.elements > self._budget):
                        break
                else:
                    key = p.key
                q.popleft()
                p.queued = False
                self._live_by_priority[p.priority] -= 1
                self._live_rows -= p.rows
                self._live_elements -= p.elements
                batch.items.append(p)
                batch.rows += p.rows
                elements += p.elements
        return batch

    def _run_batch(self, items: list[_Pending], rows: int) -> _Done:
        """Merge, forward, split (on the event loop or in a worker thread); and the seconds that took,
        measured here: awaiting a worker thread's result also waits for the busy event loop."""
        started = self._clock.now()
        if len(items) == 1:
            merged = dict(items[0].inputs)
        else:
            merged = {name: np.concatenate([p.inputs[name] for p in items])
                      for name in items[0].inputs}
        outputs = self._forward(merged)  # checked there: one row per input row (ModelVersion.forward)
        if len(items) == 1:
            return [outputs], self._clock.now() - started
        split: list[dict[str, np.ndarray]] = []
        start = 0
        for p in items:
            end = start + p.rows
            split.append({name: arr[start:end] for name, arr in outputs.items()})
            start = end
        return split, self._clock.now() - started

    def _failure(self, e: Exception, rows: int) -> InferlaneError:
        if isinstance(e, InferlaneError):
            return e
        log.exception("model %s failed on a batch of %d rows", self._name, rows)
        # The one retry rule decides here too: a model that lost a connection (transient) is
        # Unavailable, worth a retry; any other failure is a ModelError, which is not.
        kind = Unavailable if is_transient(e) else ModelError
        error = kind(f"model {self._name} failed: {type(e).__name__}: {e}")
        error.__cause__ = e
        return error

    def _live(self, batch: _Batch) -> tuple[list[_Pending], int, float]:
        """The batch's requests still waiting for an answer, their rows, and the start time."""
        items = [p for p in batch.items if not p.future.done()]
        return items, sum(p.rows for p in items), self._clock.now()

    def _execute_inline(self, batch: _Batch) -> None:
        items, rows, started = self._live(batch)
        done: _Done | InferlaneError = ([], 0.0)
        try:
            if items:
                done = self._run_batch(items, rows)
        except Exception as e:
            done = self._failure(e, rows)
        self._inflight -= 1
        self._finish(items, rows, started, done)

    async def _execute(self, batch: _Batch) -> None:
        items, rows, started = self._live(batch)
        done: _Done | InferlaneError = ([], 0.0)
        try:
            if items:
                done = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_batch, items, rows)
        except Exception as e:
            done = self._failure(e, rows)
        finally:
            self._inflight -= 1
            if self._waiting_for == "slot" or (self._waiting_for == "delay" and not self._inflight):
                self._wake()
        self._finish(items, rows, started, done)

    def _finish(self, items: list[_Pending], rows: int, started: float,
                done: _Done | InferlaneError) -> None:
        """Answer every live request of a batch: its outputs and timings, or the batch's error."""
        error = done if isinstance(done, InferlaneError) else None
        results, forward_s = (None, 0.0) if isinstance(done, InferlaneError) else done
        if items and error is None:
            per_row = forward_s / max(1, rows)
            if self._forward_estimate == 0:
                self._forward_estimate, self._row_cost = forward_s, per_row
            else:
                self._forward_estimate = 0.8 * self._forward_estimate + 0.2 * forward_s
                self._row_cost = 0.8 * self._row_cost + 0.2 * per_row
        waits = []
        for i, p in enumerate(items):
            waits.append(started - p.enqueued)
            if p.future.done():
                continue
            if error is not None:
                p.future.set_exception(error)
            elif results is not None:
                p.future.set_result(Prediction(results[i], started - p.enqueued, forward_s, rows))
        self._deadlines.trim()
        if self._observer is not None and items:
            self._observer.on_batch(rows, len(items), forward_s, waits)
