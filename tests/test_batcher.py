"""Dynamic batcher unit tests, driven by a fake clock and events (no sleeps)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from inferlane.core.batcher import BACKGROUND, DynamicBatcher, Prediction
from inferlane.core.clock import FakeClock
from inferlane.core.errors import BatchSizeMismatch, DeadlineExceeded, ModelError, QueueFull
from inferlane.core.spec import BatchingPolicy

pytestmark = pytest.mark.anyio


class Recorder:
    """A forward pass that records batch sizes; optionally blocks until released."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray] | None = None, block: bool = False) -> None:
        self.calls: list[int] = []
        self.fn = fn or (lambda x: x * 2)
        self.gate = threading.Event()
        self.started = threading.Event()
        self.called = threading.Condition()
        if not block:
            self.gate.set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.called:
            self.calls.append(batch["x"].shape[0])
            self.called.notify_all()
        self.started.set()
        self.gate.wait(10)
        return {"y": self.fn(batch["x"])}

    def wait_calls(self, n: int) -> None:
        """Block until the model was called ``n`` times (from a thread: ``asyncio.to_thread``)."""
        with self.called:
            assert self.called.wait_for(lambda: len(self.calls) >= n, 5), self.calls


def make(rec: Recorder, clock: FakeClock, **policy: object) -> DynamicBatcher:
    p = BatchingPolicy(**{"max_batch_size": 4, "max_queue_delay_ms": 5, **policy})  # type: ignore[arg-type]
    return DynamicBatcher(rec, p, elements_budget=10_000, clock=clock)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def submit(b: DynamicBatcher, clock: FakeClock, value: float, *, rows: int = 1,
           timeout: float = 10.0) -> asyncio.Task[Prediction]:
    x = np.full((rows, 2), value, dtype=np.float32)
    return asyncio.ensure_future(b.submit({"x": x}, rows=rows, elements=x.size,
                                          deadline=clock.now() + timeout))


async def occupy(b: DynamicBatcher, clock: FakeClock, rec: Recorder,
                 value: float = 0.0) -> asyncio.Task[Prediction]:
    """Submit one request and wait until the (blocking) model runs it: the model is busy."""
    task = submit(b, clock, value)
    await asyncio.to_thread(rec.started.wait, 5)
    return task


async def test_closes_at_max_batch_size_without_waiting_for_the_delay() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_queue_delay_ms=1000)
    tasks = [submit(b, clock, i) for i in range(4)]
    results = await asyncio.gather(*tasks)  # the clock never moves: only the size closes it
    assert rec.calls == [4]
    assert [float(r.outputs["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0]
    assert all(r.batch_rows == 4 for r in results)
    await b.close()


async def test_an_idle_model_takes_a_lone_request_at_once() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=64, max_queue_delay_ms=1000)
    result = await submit(b, clock, 1.0)  # the clock never moves: no delay was waited
    assert rec.calls == [1]
    assert result.queue_s == 0.0
    await b.close()


async def test_arrivals_during_a_forward_pass_form_the_next_batch() -> None:
    clock, rec = FakeClock(), Recorder(block=True)
    b = make(rec, clock, max_batch_size=64, max_queue_delay_ms=1000)
    first = await occupy(b, clock, rec)
    later = [submit(b, clock, i, rows=2) for i in range(1, 4)]
    await settle()
    assert rec.calls == [1] and b.queue_depth == 3  # they wait for the model, not for a delay
    rec.gate.set()
    results = await asyncio.gather(first, *later)
    assert rec.calls == [1, 6]  # the three arrivals went together as soon as the model was free
    assert [r.batch_rows for r in results] == [1, 6, 6, 6]
    await b.close()


async def test_with_a_free_slot_beside_a_running_batch_it_waits_up_to_max_queue_delay() -> None:
    clock, rec = FakeClock(), Recorder(block=True)
    b = make(rec, clock, max_batch_size=64, max_queue_delay_ms=5, max_inflight_batches=2)
    first = await occupy(b, clock, rec)
    later = [submit(b, clock, i) for i in range(1, 4)]
    await settle()
    clock.advance(0.004)
    await settle()
    assert rec.calls == [1]  # one batch runs; the next waits for company, up to 5 ms
    clock.advance(0.0011)
    await settle()
    await asyncio.to_thread(rec.wait_calls, 2)
    assert rec.calls == [1, 3]
    rec.gate.set()
    await asyncio.gather(first, *later)
    await b.close()


async def test_closes_early_when_the_oldest_deadline_would_be_missed() -> None:
    clock, rec = FakeClock(), Recorder(block=True)
    b = make(rec, clock, max_batch_size=64, max_queue_delay_ms=100, max_inflight_batches=2)
    first = await occupy(b, clock, rec)
    b.seed_forward_estimate(0.010)
    task = submit(b, clock, 1.0, timeout=0.030)  # must start by 30 - 10 = 20 ms, not at 100
    await settle()
    clock.advance(0.019)
    await settle()
    assert rec.calls == [1]
    clock.advance(0.0011)
    await settle()
    await asyncio.to_thread(rec.wait_calls, 2)
    rec.gate.set()
    result = await task
    await first
    assert rec.calls == [1, 1]
    assert result.queue_s == pytest.approx(0.0201, abs=1e-6)
    await b.close()


async def test_expired_requests_are_answered_504_without_model_time() -> None:
    clock, rec = FakeClock(), Recorder(block=True)
    b = make(rec, clock, max_batch_size=1, max_queue_delay_ms=0, max_inflight_batches=1)
    first = submit(b, clock, 1.0)
    await settle()
    await asyncio.to_thread(rec.started.wait, 5)
    late = submit(b, clock, 2.0, timeout=0.050)
    await settle()
    clock.advance(0.051)  # the queued request's deadline passes while the model is busy
    with pytest.raises(DeadlineExceeded, match="in the queue"):
        await late
    rec.gate.set()
    await first
    await settle()
    assert rec.calls == [1]  # the expired request never reached the model
    assert b.queue_depth == 0
    await b.close()


async def test_queue_full_answers_with_retry_after() -> None:
    clock, rec = FakeClock(), Recorder(block=True)
    b = make(rec, clock, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    running = await occupy(b, clock, rec)
    queued = [submit(b, clock, 1.0), submit(b, clock, 2.0)]
    await settle()
    with pytest.raises(QueueFull) as info:
        await b.submit({"x": np.zeros((1, 2), np.float32)}, rows=1, elements=2,
                       deadline=clock.now() + 1)
    assert info.value.retry_after >= 1
    assert info.value.http_status == 503
    rec.gate.set()
    await asyncio.gather(running, *queued)
    assert rec.calls == [1, 1, 1]
    await b.close()


async def test_an_error_from_forward_fails_every_request_of_the_batch_with_it() -> None:
    # ModelVersion.forward raises BatchSizeMismatch for a wrong row count (tests/test_models.py);
    # the batcher hands whatever its forward raised to every request of that batch.
    def fn(x: np.ndarray) -> np.ndarray:
        raise BatchSizeMismatch("y", len(x), len(x) - 1)

    clock, rec = FakeClock(), Recorder(fn=fn)
    b = make(rec, clock, max_batch_size=3, max_queue_delay_ms=1000)
    tasks = [submit(b, clock, i) for i in range(3)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, BatchSizeMismatch) for r in results)
    assert "'y' has 2 rows for a batch of 3 rows" in str(results[0])
    await b.close()


async def test_a_model_exception_fails_its_batch_but_not_the_next() -> None:
    clock = FakeClock()
    fail = {"on": True}

    def fn(x: np.ndarray) -> np.ndarray:
        if fail["on"]:
            raise RuntimeError("boom")
        return x

    rec = Recorder(fn=fn)
    b = make(rec, clock, max_batch_size=2, max_queue_delay_ms=1000)
    bad = await asyncio.gather(submit(b, clock, 1), submit(b, clock, 2), return_exceptions=True)
    assert all(isinstance(e, ModelError) and "boom" in str(e) for e in bad)
    fail["on"] = False
    good = await asyncio.gather(submit(b, clock, 1), submit(b, clock, 2))
    assert [float(g.outputs["y"][0, 0]) for g in good] == [1.0, 2.0]
    await b.close()


async def test_cancelled_request_never_reaches_the_model() -> None:
    clock, rec = FakeClock(), Recorder(block=True)
    b = make(rec, clock, max_batch_size=64, max_queue_delay_ms=5)
    first = await occupy(b, clock, rec)
    gone = submit(b, clock, 1.0)
    kept = submit(b, clock, 2.0, rows=2)
    await settle()
    gone.cancel()  # the caller went away while its request was queued
    await settle()
    rec.gate.set()
    result = await kept
    await first
    assert rec.calls == [1, 2]
    assert result.batch_rows == 2
    await b.close()


async def test_batching_disabled_runs_each_request_alone() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, enabled=False, max_queue_delay_ms=1000)
    await asyncio.gather(*(submit(b, clock, i, rows=2) for i in range(3)))
    assert rec.calls == [2, 2, 2]
    await b.close()


async def test_element_budget_closes_a_batch_before_it_grows_past_memory() -> None:
    clock, rec = FakeClock(), Recorder()
    p = BatchingPolicy(max_batch_size=100, max_queue_delay_ms=1000)
    b = DynamicBatcher(rec, p, elements_budget=10, clock=clock)  # 5 rows of 2 elements
    tasks = [submit(b, clock, i, rows=2) for i in range(4)]  # 16 elements queued
    await settle()
    clock.advance(1.1)
    await asyncio.gather(*tasks)
    assert max(rec.calls) * 2 <= 10
    assert sum(rec.calls) == 8
    await b.close()


async def test_requests_with_different_variable_dims_are_not_concatenated() -> None:
    clock = FakeClock()
    seen: list[tuple[int, ...]] = []

    def fwd(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(batch["x"].shape)
        return {"y": batch["x"].sum(axis=1)}

    b = DynamicBatcher(fwd, BatchingPolicy(max_batch_size=8, max_queue_delay_ms=1000),
                       elements_budget=1000, clock=clock)
    a = np.ones((1, 3), np.float32)
    c = np.ones((1, 5), np.float32)
    tasks = [asyncio.ensure_future(b.submit({"x": x}, rows=1, elements=x.size, key=x.shape[1:],
                                            deadline=clock.now() + 10)) for x in (a, a, c)]
    await settle()
    clock.advance(1.1)
    await settle()
    clock.advance(1.1)
    out = await asyncio.gather(*tasks)
    assert sorted(seen) == [(1, 5), (2, 3)]
    assert [float(o.outputs["y"][0]) for o in out] == [3.0, 3.0, 5.0]
    await b.close()


async def test_deadline_already_passed_is_refused_at_submit() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock)
    with pytest.raises(DeadlineExceeded, match="before it was queued"):
        await b.submit({"x": np.zeros((1, 2), np.float32)}, rows=1, elements=2, deadline=clock.now())
    assert rec.calls == []
    await b.close()


async def test_online_requests_go_before_queued_background_work() -> None:
    clock, rec = FakeClock(), Recorder(block=True)
    seen: list[float] = []
    rec.fn = lambda x: (seen.extend(x[:, 0].tolist()), x)[1]
    b = make(rec, clock, max_batch_size=2, max_queue_delay_ms=0)
    first = await occupy(b, clock, rec, -1.0)
    x = np.zeros((1, 2), np.float32)
    jobs = [asyncio.ensure_future(b.submit({"x": x + 10 + i}, rows=1, elements=2, deadline=clock.now() + 10,
                                           priority=BACKGROUND)) for i in range(3)]
    await settle()
    online = [submit(b, clock, 1.0), submit(b, clock, 2.0)]
    await settle()
    rec.gate.set()
    await asyncio.gather(first, *online, *jobs)
    assert seen == [-1.0, 1.0, 2.0, 10.0, 11.0, 12.0]  # online jumped the three queued jobs
    assert rec.calls == [1, 2, 2, 1]
    await b.close()


async def test_a_forward_measured_fast_runs_on_the_event_loop_and_a_slow_one_in_a_thread() -> None:
    clock = FakeClock()
    threads: list[str] = []

    def fwd(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        threads.append(threading.current_thread().name)
        return {"y": batch["x"]}

    b = DynamicBatcher(fwd, BatchingPolicy(max_batch_size=8), elements_budget=1000, clock=clock,
                       inline_below_s=0.001)
    b.seed_forward_estimate(0.000_05, rows=1)  # 50 µs a row: a batch of 8 is 0.4 ms, under 1 ms
    assert b.runs_inline(8) and not b.runs_inline(64)
    await submit(b, clock, 1.0)
    assert threads == [threading.current_thread().name]  # no hand-off for a fast model
    slow = DynamicBatcher(fwd, BatchingPolicy(max_batch_size=8), elements_budget=1000, clock=clock,
                          inline_below_s=0.001)
    slow.seed_forward_estimate(0.002, rows=1)
    await submit(slow, clock, 1.0)
    assert threads[1].startswith("forward-")
    await b.close()
    await slow.close()


def live_timers(clock: FakeClock) -> int:
    return sum(1 for _, _, timer, _ in clock._timers if not timer.cancelled)


async def test_one_timer_watches_every_deadline_in_or_out_of_order() -> None:
    clock, rec = FakeClock(), Recorder(block=True)
    b = make(rec, clock, max_batch_size=1, max_queue_size=1000)
    first = await occupy(b, clock, rec)
    queued = [submit(b, clock, i, timeout=1.0 + i / 1000) for i in range(100)]
    short = submit(b, clock, 9.0, timeout=0.5)  # earlier than those queued before it
    await settle()
    assert live_timers(clock) == 1  # not one per request
    clock.advance(0.51)
    with pytest.raises(DeadlineExceeded):
        await short
    assert not any(t.done() for t in queued)
    clock.advance(0.5)  # past the first queued deadlines: they expire together, in order
    await settle()
    assert sum(t.done() for t in queued) >= 1
    clock.advance(0.2)
    await settle()
    assert all(t.done() for t in queued) and live_timers(clock) == 1  # the running request's deadline
    rec.gate.set()
    await first
    assert rec.calls == [1]
    await b.close()


async def test_an_idle_fast_model_gathers_a_burst_that_keeps_arriving_into_one_batch() -> None:
    clock = FakeClock()
    seen: list[int] = []

    def fwd(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(batch["x"].shape[0])
        return {"y": batch["x"]}

    b = DynamicBatcher(fwd, BatchingPolicy(max_batch_size=64, max_queue_delay_ms=5), elements_budget=10_000,
                       clock=clock)
    b.seed_forward_estimate(0.000_01)  # fast: runs inline, led by the request that found it idle
    x = np.zeros((1, 2), np.float32)

    async def arrive_later(turns: int) -> Prediction:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await b.submit({"x": x}, rows=1, elements=2, deadline=clock.now() + 1)

    await arrive_later(0)  # the first request starts the batcher's task; from now on it is idle
    await asyncio.sleep(0)
    assert seen == [1]
    # a burst spread over a few turns of the event loop, as requests read from several sockets are
    await asyncio.gather(*(arrive_later(t) for t in (0, 0, 0, 1, 2, 3, 3, 4)))
    assert seen == [1, 8]
    # a lone request goes at once: nobody else came in its first turn
    await arrive_later(0)
    assert seen == [1, 8, 1]
    await b.close()
