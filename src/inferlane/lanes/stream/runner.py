"""The stream pipeline: consume → micro-batch → decode and score → write → commit.

Three threads, each stage in order, so commits follow writes in the order events were consumed:

- the **consumer** (the calling thread) polls the source, closes a micro-batch at ``max_batch``
  events or ``max_wait_ms`` after its first event, hands it on, and commits positions that the
  writer reports done. Kafka rebalance callbacks run here too.
- the **scorer** decodes events (bad ones become dead letters) and runs the model; when a batch
  fails it is split in halves until the events that fail alone are found and dead-lettered.
- the **writer** writes outputs and dead letters, retrying until the destination acknowledges
  them, then reports the batch's positions for commit.

At most ``max_inflight`` batches are between consumer and commit; beyond that the consumer pauses
the source (Kafka keeps polling so the group does not evict it), which bounds memory under any
overload. On partition revoke and on stop, the partial batch is handed on, every in-flight batch
finishes, and its positions are committed before the partitions go (or the process exits). A
killed process commits nothing it has not written: its events are delivered again.

    runner = StreamRunner(model, decoder, source, sink, dead_letters, StreamSettings(max_batch=512))
    report = runner.run(stop_event)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferlane.core.errors import ConfigError
from inferlane.core.inputs import RecordDecoder
from inferlane.core.model import ModelVersion
from inferlane.core.retry import RetryPolicy, is_transient
from inferlane.lanes.stream.metrics import StreamMetrics
from inferlane.lanes.stream.sinks import DeadLetter, DeadLetters, Scored, Sink
from inferlane.lanes.stream.sources import Event, Positions, Source

log = logging.getLogger("inferlane.stream")


@dataclass
class StreamSettings:
    max_batch: int = 512
    """Events per micro-batch at most."""
    max_wait_ms: float = 50.0
    """A micro-batch closes this long after its first event, full or not."""
    max_inflight: int = 4
    """Micro-batches between consumer and commit; beyond, consumption pauses (backpressure)."""
    shutdown_timeout_s: float = 30.0
    """On stop or revoke, how long in-flight batches may take to finish before giving up on them."""
    idle_exit_s: float | None = None
    """Stop once no event arrived for this long and everything is committed (None: run until stopped)."""
    pause_after_s: float = 5.0
    """Backpressure longer than this pauses the source (Kafka: paused partitions, still polled)."""
    retry_backoff_s: float = 0.2
    """First pause before retrying a failed sink write; doubles up to 5 s."""
    sink_retry_s: float = 120.0
    """How long transient sink failures are retried before the lane stops with the error."""
    lag_interval_s: float = 1.0
    log_interval_s: float = 10.0

    def check(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch}: at least 1")
        if not 0 <= self.max_wait_ms <= 600_000:
            raise ConfigError(f"--max-wait-ms {self.max_wait_ms}: between 0 and 600000")
        if self.max_inflight < 1:
            raise ConfigError(f"--max-inflight {self.max_inflight}: at least 1")
        if self.sink_retry_s < 0:
            raise ConfigError(f"--sink-retry-s {self.sink_retry_s}: 0 or more")


@dataclass(slots=True)
class _Work:
    events: list[Event]
    positions: Positions
    scored: Scored | None = None
    dead: list[DeadLetter] = field(default_factory=list)


class _Aborted(Exception):
    """Stop was requested while a write kept failing: the batch stays uncommitted."""


_STOP = object()


class StreamRunner:
    def __init__(self, model: ModelVersion, decoder: RecordDecoder, source: Source, sink: Sink,
                 dead_letters: DeadLetters, settings: StreamSettings | None = None,
                 metrics: StreamMetrics | None = None) -> None:
        self.model = model
        self.decoder = decoder
        self.source = source
        self.sink = sink
        self.dead_letters = dead_letters
        self.settings = settings or StreamSettings()
        self.settings.check()
        self.metrics = metrics or StreamMetrics(model.name, model.version)
        self._cond = threading.Condition()
        self._inflight = 0
        self._done: list[Positions] = []
        self._fatal: BaseException | None = None
        self._abort = threading.Event()
        self._scoring: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writing: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._partial: list[Event] = []
        self._batches = 0
        self._blocked_since: float | None = None
        self._source_paused = False
        self._first_event_at: float | None = None
        self._last_written_at = 0.0
        source.on_revoke = self._revoked

    # -- consumer thread ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> dict[str, Any]:
        """Consume until ``stop`` is set (or idle for ``idle_exit_s``); returns a report. Raises the
        error of a failed stage after committing what was written before it."""
        s = self.settings
        started = time.monotonic()
        threads = [threading.Thread(target=self._stage, args=(self._scoring, self._score, False),
                                    name="stream-scorer", daemon=True),
                   threading.Thread(target=self._stage, args=(self._writing, self._write, True),
                                    name="stream-writer", daemon=True)]
        for t in threads:
            t.start()
        max_wait = s.max_wait_ms / 1000
        first_at = 0.0
        last_event = time.monotonic()
        next_lag = next_log = 0.0
        try:
            while not stop.is_set() and self._fatal is None:
                now = time.monotonic()
                self._commit_done(wait=False)
                if now >= next_lag:
                    next_lag = now + s.lag_interval_s
                    self.metrics.set_lag(self.source.lag())
                if now >= next_log:
                    next_log = now + s.log_interval_s
                    log.info("stream: %s", self.metrics.snapshot())
                if self._inflight >= s.max_inflight:
                    self._backpressure(now)
                    continue
                if self._blocked_since is not None:
                    self._blocked_since = None
                    last_event = now  # nothing was read while blocked: that was not idle time
                    self.metrics.set_paused(False)
                    if self._source_paused:
                        self.source.resume()
                        self._source_paused = False
                if self._partial:
                    timeout = max(0.0, first_at + max_wait - now)
                else:
                    timeout = 0.1
                    if not self.source.assigned:
                        last_event = now  # idle time counts from the assignment (a group join takes seconds)
                    elif s.idle_exit_s is not None and now - last_event >= s.idle_exit_s and self._inflight == 0:
                        break
                events = self.source.poll(s.max_batch - len(self._partial), timeout)
                if events:
                    last_event = time.monotonic()
                    if self._first_event_at is None:
                        self._first_event_at = last_event
                    if not self._partial:
                        first_at = last_event
                    self._partial.extend(events)
                    self.metrics.on_consumed(len(events))
                if self._partial and (len(self._partial) >= s.max_batch
                                      or time.monotonic() - first_at >= max_wait):
                    self._dispatch()
            self._finish(s.shutdown_timeout_s)
        finally:
            self._abort.set()
            self._scoring.put(_STOP)
            for t in threads:
                t.join(timeout=5)
        if self._fatal is not None:
            raise self._fatal
        elapsed = time.monotonic() - started
        # the rate over the time events were flowing: from the first consumed to the last written
        busy = self._last_written_at - self._first_event_at if self._first_event_at is not None else 0.0
        ev = dict(self.metrics.events)
        return {"events_in": ev["in"], "events_out": ev["out"], "dead_lettered": ev["dead_lettered"],
                "batches": self._batches, "duration_s": round(elapsed, 3), "busy_s": round(max(busy, 0.0), 3),
                "events_per_s": round(ev["out"] / busy, 1) if busy > 0 else 0.0,
                "model": self.model.name, "model_version": self.model.version}

    def _backpressure(self, now: float) -> None:
        """The pipeline is full: wait for room. Kafka keeps prefetching into its bounded queue
        meanwhile; pausing costs a fetch restart (about a second), so the source is paused — and
        polled, to keep the group membership — only when the wait gets long."""
        if self._blocked_since is None:
            self._blocked_since = now
            self.metrics.set_paused(True)
        if now - self._blocked_since >= self.settings.pause_after_s:
            if not self._source_paused:
                self.source.pause()
                self._source_paused = True
            self.source.poll(self.settings.max_batch, 0.05)  # returns nothing while paused
            return
        with self._cond:
            self._cond.wait_for(lambda: self._inflight < self.settings.max_inflight or self._fatal is not None,
                                timeout=0.05)

    def _dispatch(self) -> None:
        batch, self._partial = self._partial, []
        work = _Work(batch, self.source.positions(batch))
        with self._cond:
            self._inflight += 1
            self.metrics.set_inflight(self._inflight)
        self._batches += 1
        self._scoring.put(work)

    def _commit_done(self, *, wait: bool) -> None:
        with self._cond:
            done, self._done = self._done, []
        if not done:
            return
        merged: Positions = {}
        for pos in done:
            self.source.merge(merged, pos)
        self.source.commit(merged, wait=wait)

    def _finish(self, timeout_s: float) -> None:
        """Hand on the partial batch, wait for every in-flight batch (up to ``timeout_s``), commit."""
        if self._partial and self._fatal is None:
            self._dispatch()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._inflight and self._fatal is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("%d micro-batch(es) did not finish within %.0f s; their events will be "
                                "delivered again", self._inflight, timeout_s)
                    break
                self._cond.wait(min(left, 0.1))
        self._commit_done(wait=True)

    def _revoked(self) -> None:
        if self._abort.is_set():
            # The run is over and its stages are stopped (this is the source closing): what is still
            # in flight never finishes, so waiting for it again would only double the shutdown.
            self._commit_done(wait=True)
            return
        self._finish(self.settings.shutdown_timeout_s)

    # -- scorer and writer threads ------------------------------------------------------------------
    def _stage(self, inbox: queue.SimpleQueue[Any], step: Callable[[list[_Work]], None], group: bool) -> None:
        """Run ``step`` on work from ``inbox`` in order; with ``group``, on everything waiting at once."""
        while True:
            works = [inbox.get()]
            while group and works[-1] is not _STOP:
                try:
                    works.append(inbox.get_nowait())
                except queue.Empty:
                    break
            stop = works[-1] is _STOP
            works = [w for w in works if w is not _STOP]
            if works and self._fatal is None:
                try:
                    step(works)
                except _Aborted:
                    pass
                except BaseException as e:  # a bug or a broken destination configuration: stop the stream
                    log.exception("stream stage %s failed", threading.current_thread().name)
                    with self._cond:
                        self._fatal = self._fatal or e
                        self._cond.notify_all()
            if stop:
                if not group:
                    self._writing.put(_STOP)
                return

    def _score(self, works: list[_Work]) -> None:
        work, = works
        events = work.events
        decoded = self.decoder.decode([e.value for e in events])
        self.metrics.on_batch(len(events), min(e.ts_ms for e in events), time.time())
        work.dead = [DeadLetter(events[i], "decode", reason) for i, reason in decoded.rejects]
        outputs, failures = self._forward(decoded.inputs, len(decoded.index))
        key_field = self.decoder.key[0]
        index, keys = decoded.index, decoded.keys[key_field]
        if failures:
            failed = {j for j, _ in failures}
            work.dead.extend(DeadLetter(events[index[j]], "score", err) for j, err in failures)
            keep = [j for j in range(len(index)) if j not in failed]
            index = [index[j] for j in keep]
            keys = [keys[j] for j in keep]
        work.scored = Scored(self.model.name, self.model.version, key_field, keys, outputs,
                             [events[i].ts_ms for i in index])
        self._writing.put(work)

    def _forward(self, inputs: dict[str, np.ndarray], rows: int) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
        """Outputs of the rows that scored, and (row, error) for those that failed on their own."""
        if rows == 0:
            return {s.name: np.zeros((0,), dtype=np.float32) for s in self.model.config.outputs}, []
        try:
            return self.model.score(inputs, self.settings.max_batch), []
        except Exception as e:  # one event may break a whole batch: find it
            if rows == 1:
                return {}, [(0, f"{type(e).__name__}: {e}"[:1000])]
        half = rows // 2
        left_out, left_fail = self._forward({k: v[:half] for k, v in inputs.items()}, half)
        right_out, right_fail = self._forward({k: v[half:] for k, v in inputs.items()}, rows - half)
        failures = left_fail + [(j + half, err) for j, err in right_fail]
        parts = [p for p in (left_out, right_out) if p and len(next(iter(p.values()))) > 0]
        if not parts:
            return self._forward({k: v[:0] for k, v in inputs.items()}, 0)[0], failures
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, failures

    def _write(self, works: list[_Work]) -> None:
        """Every batch waiting is written together: one acknowledgement wait (a Kafka flush, a
        transaction) for all of them, which keeps the sink's round trip off the per-batch path."""
        scored = _concat([w.scored for w in works if w.scored is not None])
        dead = [d for w in works for d in w.dead]
        if scored.keys:
            self._retry(lambda: self.sink.write(scored), self.sink.description)
        if dead:
            self._retry(lambda: self.dead_letters.write(dead), self.dead_letters.description)
        self.metrics.on_written(np.asarray(scored.event_ms, dtype=np.float64), time.time(), len(dead))
        self._last_written_at = time.monotonic()
        with self._cond:
            self._done.extend(w.positions for w in works)
            self._inflight -= len(works)
            self.metrics.set_inflight(self._inflight)
            self._cond.notify_all()

    def _retry(self, write: Callable[[], None], what: str) -> None:
        """Write under the one retry policy (core/retry.py): transient failures are retried with
        backoff for at most ``sink_retry_s``, then the lane stops with the error; a permanent one
        stops it at once. Either way nothing unwritten is committed. A stop request ends the wait."""
        def on_retry(n: int, e: BaseException, delay: float) -> None:
            self.metrics.on_sink_retry()

        def sleep(seconds: float) -> None:
            if self._abort.wait(seconds):
                raise _Aborted

        policy = RetryPolicy(attempts=None, backoff_s=self.settings.retry_backoff_s, max_backoff_s=5.0,
                             give_up_after_s=self.settings.sink_retry_s)
        try:
            policy.call(write, what=f"write to {what}", on_retry=on_retry, sleep=sleep)
        except _Aborted:
            raise
        except Exception as e:
            if self._abort.is_set() and is_transient(e):
                raise _Aborted from e
            raise


def _concat(parts: list[Scored]) -> Scored:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    with_rows = [p for p in parts if p.keys] or [first]
    return Scored(first.model, first.version, first.key_field, [k for p in parts for k in p.keys],
                  {name: np.concatenate([p.outputs[name] for p in with_rows]) for name in with_rows[0].outputs},
                  [t for p in parts for t in p.event_ms])
