"""The dynamic batcher: groups concurrent requests into one forward pass.

    batcher = DynamicBatcher(model.forward, policy, elements_budget=budget)
    result = await batcher.submit({"x": rows}, rows=len(rows), elements=rows.size,
                                  deadline=clock.now() + 0.1)

A batch closes when it holds ``max_batch_size`` rows or the element budget, when the oldest
request has waited ``max_queue_delay``, or earlier when waiting longer would make the oldest
request miss its deadline given the measured forward time. Waits are timers and futures on the
event loop (no polling). Each request also has a deadline timer: when it fires the caller gets
DeadlineExceeded at once and, if the request is still queued, it never reaches the model.

``forward`` must return one row per input row for every output: ModelVersion.forward checks that
(and raises BatchSizeMismatch, which fails every request of the batch).

Requests have a priority: ``ONLINE`` (the default) or ``BACKGROUND`` (jobs). A batch takes every
queued online request it can hold first and fills the remaining rows with background requests,
so a flood of jobs delays an online request by at most the batch already running.
"""

from __future__ import annotations

import asyncio
import logging
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
ONLINE, BACKGROUND = 0, 1


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
    """Receives one call per executed batch (metrics live outside the core)."""

    def on_batch(self, rows: int, requests: int, forward_s: float, queue_waits: list[float]) -> None: ...

    def on_queue(self, depth: int, inflight: int) -> None: ...


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
    timer: Timer | None = None
    queued: bool = True


@dataclass(slots=True)
class _Batch:
    items: list[_Pending] = field(default_factory=list)
    rows: int = 0


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
        self._queues: tuple[deque[_Pending], deque[_Pending]] = (deque(), deque())
        self._live_by_priority = [0, 0]
        self._live_rows = 0
        self._live_elements = 0
        self._inflight = 0
        self._forward_estimate = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_for: Literal["arrival", "slot", "delay"] | None = None
        self._task: asyncio.Task[None] | None = None
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

    def seed_forward_estimate(self, seconds: float) -> None:
        """Start the estimate from a measured warm-up instead of zero."""
        self._forward_estimate = max(self._forward_estimate, seconds)

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
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self._name}")
        fut: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        p = _Pending(inputs, rows, elements, key, deadline, now, fut, priority)
        p.timer = self._clock.call_at(deadline, lambda: self._expire(p))
        self._queues[priority].append(p)
        self._live_by_priority[priority] += 1
        self._live_rows += rows
        self._live_elements += elements
        if self._waiting_for == "arrival" or (self._waiting_for == "delay" and self._full()):
            self._wake()
        try:
            return await fut
        except asyncio.CancelledError:
            # The caller went away (client disconnect): never spend model time on it.
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
        if p.timer is not None:
            p.timer.cancel()

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
            if not self._full():
                close_at = min(head.enqueued + self._max_delay, head.deadline - self._forward_estimate)
                if self._clock.now() < close_at:
                    await self._sleep("delay", close_at)
                    continue
            batch = self._take()
            if batch.items:
                self._inflight += 1
                if self._observer is not None:
                    self._observer.on_queue(self.queue_depth, self._inflight)
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

    def _run_batch(self, items: list[_Pending], rows: int) -> list[dict[str, np.ndarray]]:
        """Worker thread: merge, forward, split."""
        if len(items) == 1:
            merged = dict(items[0].inputs)
        else:
            merged = {name: np.concatenate([p.inputs[name] for p in items])
                      for name in items[0].inputs}
        outputs = self._forward(merged)  # checked there: one row per input row (ModelVersion.forward)
        if len(items) == 1:
            return [outputs]
        split: list[dict[str, np.ndarray]] = []
        start = 0
        for p in items:
            end = start + p.rows
            split.append({name: arr[start:end] for name, arr in outputs.items()})
            start = end
        return split

    async def _execute(self, batch: _Batch) -> None:
        items = [p for p in batch.items if not p.future.done()]
        rows = sum(p.rows for p in items)
        started = self._clock.now()
        results: list[dict[str, np.ndarray]] | None = None
        error: InferlaneError | None = None
        try:
            if items:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_batch, items, rows)
        except InferlaneError as e:
            error = e
        except Exception as e:
            log.exception("model %s failed on a batch of %d rows", self._name, rows)
            # The one retry rule decides here too: a model that lost a connection (transient) is
            # Unavailable, worth a retry; any other failure is a ModelError, which is not.
            kind = Unavailable if is_transient(e) else ModelError
            error = kind(f"model {self._name} failed: {type(e).__name__}: {e}")
            error.__cause__ = e
        finally:
            self._inflight -= 1
            if self._waiting_for == "slot":
                self._wake()
        ended = self._clock.now()
        forward_s = ended - started
        if items:
            self._forward_estimate = forward_s if self._forward_estimate == 0 else (
                0.8 * self._forward_estimate + 0.2 * forward_s)
        waits = []
        for i, p in enumerate(items):
            if p.timer is not None:
                p.timer.cancel()
            waits.append(started - p.enqueued)
            if p.future.done():
                continue
            if error is not None:
                p.future.set_exception(error)
            elif results is not None:
                p.future.set_result(Prediction(results[i], started - p.enqueued, forward_s, rows))
        if self._observer is not None and items:
            self._observer.on_batch(rows, len(items), forward_s, waits)
            self._observer.on_queue(self.queue_depth, self._inflight)
