"""The stream pipeline: consume → micro-batch → decode and score → write → commit.

Three threads, each stage in order, so commits follow writes in the order events were consumed:

- the **consumer** (the calling thread) polls the source, closes a micro-batch at ``max_batch``
  events or ``max_wait_ms`` after its first event, hands it on, and commits positions that the
  writer reports done. Kafka rebalance callbacks run here too.
- the **scorer** decodes events (bad ones become dead letters) and runs the model; when a batch
  fails it is split in halves until the events that fail alone are found and dead-lettered. When
  most of a batch fails for one reason, or the model is not ready, the model is down, not the
  events: the scorer retries the whole batch with backoff (a circuit breaker; the pipeline fills
  and consumption pauses meanwhile) and stops the lane after ``model_retry_s``.
- **crash loops**: events delivered before (in flight when the lane crashed or stopped) are scored
  one at a time, each written and committed before the next is handed out, so that a crash
  points at one event. The first of them delivered more than ``max_deliveries`` times is the
  one that keeps crashing the lane: it is dead-lettered without being scored.
- the **writer** writes outputs and dead letters, retrying until the destination acknowledges
  them, then reports the batch's positions for commit. Before that it checks the share of
  dead letters among the last ``dead_letter_window`` events: over ``max_dead_letter_ratio`` (a wrong
  ``--key``, a schema change) the lane stops, committing nothing past the last good batch.

**Versions.** A micro-batch is scored by one pinned version (``--version``: :class:`Pinned`), or by
the versions the server's route names (``rollout/follow.py``): each event goes to the version the
server's router would choose for its key, and its output records that version.

At most ``max_inflight`` batches are between consumer and commit; beyond that the consumer pauses
the source (Kafka keeps polling so the group does not evict it), which bounds memory under any
overload. On partition revoke and on stop, the partial batch is handed on, every in-flight batch
finishes, and its positions are committed before the partitions go (or the process exits). A
killed process commits nothing it has not written: its events are delivered again.

    runner = StreamRunner(model, decoder, source, sink, dead_letters, StreamSettings(max_batch=512))
    runner = StreamRunner(follower, decoder, ...)    # a RouteFollower: the versions the route names
    report = runner.run(stop_event)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from inferlane.core import tracing
from inferlane.core.errors import ConfigError, InferlaneError, Unavailable
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
    model_retry_s: float = 120.0
    """How long a failing model (most of a batch failing for one reason, or not ready) is retried
    with backoff before the lane stops with the error."""
    max_dead_letter_ratio: float = 0.5
    """Stop the lane when more than this share of the last ``dead_letter_window`` events were
    dead-lettered (1: never)."""
    dead_letter_window: int = 1000
    """Events over which ``max_dead_letter_ratio`` is measured; checked once 100 of them (or the
    whole window, when smaller) were seen."""
    max_deliveries: int = 5
    """An event delivered more often than this (uncommitted each time) is dead-lettered unscored."""
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
        if self.model_retry_s < 0:
            raise ConfigError(f"--model-retry-s {self.model_retry_s}: 0 or more")
        if not 0 <= self.max_dead_letter_ratio <= 1:
            raise ConfigError(f"--max-dead-letter-ratio {self.max_dead_letter_ratio}: between 0 and 1")
        if self.dead_letter_window < 1:
            raise ConfigError(f"--dead-letter-window {self.dead_letter_window}: at least 1")
        if self.max_deliveries < 1:
            raise ConfigError(f"--max-deliveries {self.max_deliveries}: at least 1")


@runtime_checkable
class Versions(Protocol):
    """The versions a micro-batch is scored with: :class:`Pinned`, or ``rollout.follow.RouteFollower``."""

    name: str

    @property
    def version(self) -> str:
        """The version that scores events now (stable, when following a route)."""
        ...

    def split(self, keys: Sequence[str | int]) -> AbstractContextManager[Sequence[tuple[ModelVersion,
                                                                                      np.ndarray | None]]]:
        """(version, rows of ``keys`` it scores, None for all) for each version the keys go to; the
        versions stay open until the block ends."""
        ...


class Pinned:
    """One version scores every event (``--version``, or a model object)."""

    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        self.name = model.name

    @property
    def version(self) -> str:
        return self.model.version

    @contextlib.contextmanager
    def split(self, keys: Sequence[str | int]) -> Iterator[Sequence[tuple[ModelVersion, np.ndarray | None]]]:
        yield [(self.model, None)]


def _trace_batch(model: ModelVersion, events: list[Event], started_ns: int, failed: int) -> None:
    """One micro-batch's scoring as a span, linked to the trace of each event that carried one (a
    batch serves many traces: links, not a parent, as OpenTelemetry's messaging conventions say)."""
    tracing.record(f"stream batch {model.name}", parent=None, start_ns=started_ns, end_ns=time.time_ns(),
                   kind="consumer", links=[e.trace_parent for e in events if e.trace_parent],
                   attributes={"inferlane.model": model.name, "inferlane.version": model.version,
                               "inferlane.lane": "stream", "inferlane.events": len(events),
                               "inferlane.failed": failed,
                               "inferlane.partitions": ",".join(sorted({e.partition for e in events}))[:500]})


@dataclass(slots=True)
class _Work:
    events: list[Event]
    positions: Positions
    scored: list[Scored] = field(default_factory=list)
    """One per version that scored events of this batch."""
    dead: list[DeadLetter] = field(default_factory=list)
    crashing: bool = False
    """The one event of this work crashed the lane more than ``max_deliveries`` times: dead-letter it unscored."""


class _Aborted(Exception):
    """Stop was requested while a write kept failing: the batch stays uncommitted."""


class ModelOutage(Unavailable):
    """Most of a micro-batch failed for one reason: the model (or what it depends on) is down, not
    the events. Transient: the scorer retries the batch instead of dead-lettering it."""


class TooManyDeadLetters(InferlaneError):
    """Over ``--max-dead-letter-ratio`` of recent events were dead-lettered: the job is wrong
    (``--key``, ``--columns``, the model version), not the events."""


_STOP = object()


class StreamRunner:
    def __init__(self, model: ModelVersion | Versions, decoder: RecordDecoder, source: Source, sink: Sink,
                 dead_letters: DeadLetters, settings: StreamSettings | None = None,
                 metrics: StreamMetrics | None = None) -> None:
        self.versions: Versions = model if isinstance(model, Versions) else Pinned(model)
        self.decoder = decoder
        self.source = source
        self.sink = sink
        self.dead_letters = dead_letters
        self.settings = settings or StreamSettings()
        self.settings.check()
        self.metrics = metrics or StreamMetrics(self.versions.name, self.versions.version)
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
        self._recent: deque[tuple[int, int]] = deque()
        """(events, dead letters) of the last written batches, for ``max_dead_letter_ratio``."""
        self._recent_events = self._recent_dead = 0
        self._source_failures = 0
        self._stop = threading.Event()
        source.on_revoke = self._revoked

    # -- consumer thread ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> dict[str, Any]:
        """Consume until ``stop`` is set (or idle for ``idle_exit_s``); returns a report. Raises the
        error of a failed stage after committing what was written before it."""
        s = self.settings
        self._stop = stop
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
                try:
                    events = self.source.poll(s.max_batch - len(self._partial), timeout)
                except Exception as e:
                    if not is_transient(e):
                        raise
                    self._source_down(e, stop)  # a broker restart: wait, then read on
                    last_event = time.monotonic()  # an outage is not idleness
                    continue
                self._source_failures = 0
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
                "model": self.versions.name, "model_version": self.versions.version,
                "versions": self.metrics.by_version()}

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

    def _source_down(self, error: BaseException, stop: threading.Event) -> None:
        """The source failed for a transient reason: back off (doubling to 5 s) until a poll works."""
        self._source_failures += 1
        delay = min(5.0, self.settings.retry_backoff_s * 2 ** (self._source_failures - 1))
        log.warning("reading %s failed (%s: %s); retrying in %.1f s", self.source.description,
                    type(error).__name__, error, delay)
        stop.wait(delay)

    def _dispatch(self) -> None:
        batch, self._partial = self._partial, []
        redelivered = max((i for i, e in enumerate(batch) if e.deliveries > 1), default=-1)
        if redelivered >= 0:
            if not self._isolate(batch[:redelivered + 1]):
                return  # stopping: the rest stays uncommitted and is delivered again
            batch = batch[redelivered + 1:]
            if not batch:
                return
        self._send(_Work(batch, self.source.positions(batch)))

    def _isolate(self, events: list[Event]) -> bool:
        """Score events that may have crashed the lane one at a time, each written and committed
        before the next is handed out: a crash then leaves exactly one event uncommitted, and only
        its delivery count grows. The first delivered more than ``max_deliveries`` times is the one
        that crashed the lane that often (Redis counts its neighbours' re-reads too): it alone is
        dead-lettered. False when the lane stops or fails meanwhile."""
        limit = self.settings.max_deliveries
        crashing = next((i for i, e in enumerate(events) if e.deliveries > limit), -1)
        log.warning("%d event(s) delivered before without being committed; scoring them one at a time",
                    len(events))
        if not self._settle():
            return False
        for i, e in enumerate(events):
            self._send(_Work([e], self.source.positions([e]), crashing=i == crashing))
            if not self._settle() or (self._stop.is_set() and i + 1 < len(events)):
                return False
        return True

    def _settle(self) -> bool:
        """Wait until every in-flight batch is written, then commit it; False when a stage failed."""
        with self._cond:
            self._cond.wait_for(lambda: self._inflight == 0 or self._fatal is not None)
        if self._fatal is not None:
            return False
        self._commit_done(wait=True)
        return True

    def _send(self, work: _Work) -> None:
        self.source.handing_out(work.events)  # before the model sees them: a crash now counts
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
        try:
            self.source.commit(merged, wait=wait)
        except Exception as e:
            if not is_transient(e):
                raise
            # the broker is away: commit these again with the next ones (commits are idempotent)
            log.warning("commit to %s failed (%s: %s); retrying with the next commit", self.source.description,
                        type(e).__name__, e)
            with self._cond:
                self._done.insert(0, merged)

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
        self.metrics.on_batch(len(events), min(e.ts_ms for e in events), time.time())
        if work.crashing:
            e, = events
            work.dead = [DeadLetter(e, "deliveries", f"delivered {e.deliveries} times without being committed (the "
                                    f"lane stopped or crashed while scoring it; --max-deliveries "
                                    f"{self.settings.max_deliveries})")]
            events = []
        decoded = self.decoder.decode([e.value for e in events])
        work.dead.extend(DeadLetter(events[i], "decode", reason) for i, reason in decoded.rejects)
        key_field = self.decoder.key[0]
        all_keys = decoded.keys[key_field]
        with self.versions.split(all_keys) as parts:
            for model, rows in parts:
                if rows is None:
                    index, keys, inputs = decoded.index, all_keys, decoded.inputs
                else:
                    index = [decoded.index[j] for j in rows]
                    keys = [all_keys[j] for j in rows]
                    inputs = {k: v[rows] for k, v in decoded.inputs.items()}
                started = time.time_ns()
                outputs, failures = self._score_or_wait(model, inputs, len(index))
                if tracing.on():
                    _trace_batch(model, [events[i] for i in index], started, len(failures))
                if failures:
                    failed = {j for j, _ in failures}
                    work.dead.extend(DeadLetter(events[index[j]], "score", err, model.version) for j, err in failures)
                    keep = [j for j in range(len(index)) if j not in failed]
                    index = [index[j] for j in keep]
                    keys = [keys[j] for j in keep]
                work.scored.append(Scored(model.name, model.version, key_field, keys, outputs,
                                          [events[i].ts_ms for i in index]))
        self._writing.put(work)

    def _score_or_wait(self, model: ModelVersion, inputs: dict[str, np.ndarray],
                       rows: int) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
        """Score under the circuit breaker: while the model is down (not ready, or failing most of
        the batch for one reason) the batch is retried with backoff (core/retry.py) for at most
        ``model_retry_s``, then the lane stops with the error; nothing of it is dead-lettered."""
        def attempt() -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
            outputs, failures = self._forward(model, inputs, rows)
            if rows > 1 and len(failures) * 2 > rows:
                reason, n = Counter(err.split(":", 1)[0] for _, err in failures).most_common(1)[0]
                if n * 2 > rows:
                    first = next(err for _, err in failures if err.startswith(reason))
                    raise ModelOutage(f"model {model.name} failed on {n} of {rows} events of a micro-batch "
                                      f"({first[:300]})")
            return outputs, failures

        policy = RetryPolicy(attempts=None, backoff_s=self.settings.retry_backoff_s, max_backoff_s=5.0,
                             give_up_after_s=self.settings.model_retry_s)
        try:
            return policy.call(attempt, what=f"model {model.name} {model.version}", sleep=self._sleep)
        except _Aborted:
            raise
        except Exception as e:
            if self._abort.is_set() and is_transient(e):
                raise _Aborted from e
            raise

    def _sleep(self, seconds: float) -> None:
        """A retry's pause, which a stop request ends (the batch stays uncommitted)."""
        if self._abort.wait(seconds):
            raise _Aborted

    def _forward(self, model: ModelVersion, inputs: dict[str, np.ndarray],
                 rows: int) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
        """Outputs of the rows that scored, and (row, error) for those that failed on their own."""
        if rows == 0:
            return {s.name: np.zeros((0,), dtype=np.float32) for s in model.config.outputs}, []
        try:
            return model.score(inputs, self.settings.max_batch), []
        except Exception as e:  # one event may break a whole batch: find it
            if is_transient(e):  # the model is not ready (or overloaded): no event is at fault
                raise
            if rows == 1:
                return {}, [(0, f"{type(e).__name__}: {e}"[:1000])]
        half = rows // 2
        left_out, left_fail = self._forward(model, {k: v[:half] for k, v in inputs.items()}, half)
        right_out, right_fail = self._forward(model, {k: v[half:] for k, v in inputs.items()}, rows - half)
        failures = left_fail + [(j + half, err) for j, err in right_fail]
        parts = [p for p in (left_out, right_out) if p and len(next(iter(p.values()))) > 0]
        if not parts:
            return self._forward(model, {k: v[:0] for k, v in inputs.items()}, 0)[0], failures
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, failures

    def _write(self, works: list[_Work]) -> None:
        """Every batch waiting is written together: one acknowledgement wait (a Kafka flush, a
        transaction) for all of them, which keeps the sink's round trip off the per-batch path.
        A batch that takes the dead letters over ``max_dead_letter_ratio`` stops the lane: the
        batches before it are written and committed, it and those after it are not."""
        for i, work in enumerate(works):
            error = self._count_dead_letters(work)
            if error is not None:
                if i:
                    self._write_all(works[:i])
                raise error
        self._write_all(works)

    def _count_dead_letters(self, work: _Work) -> TooManyDeadLetters | None:
        """Add a batch to the dead-letter window; the error when that takes it over the ratio."""
        s = self.settings
        recent = self._recent
        recent.append((len(work.events), len(work.dead)))
        self._recent_events += len(work.events)
        self._recent_dead += len(work.dead)
        while len(recent) > 1 and self._recent_events - recent[0][0] >= s.dead_letter_window:
            events, dead = recent.popleft()
            self._recent_events -= events
            self._recent_dead -= dead
        seen, dead = self._recent_events, self._recent_dead
        if seen < min(100, s.dead_letter_window) or dead <= s.max_dead_letter_ratio * seen:
            return None
        sample = work.dead[0] if work.dead else None
        return TooManyDeadLetters(
            f"{dead} of the last {seen} events were dead-lettered, over --max-dead-letter-ratio "
            f"{s.max_dead_letter_ratio:g}" + (f" (latest: {sample.stage}: {sample.error[:200]})" if sample else "")
            + "; stopped without committing them: check --key and --columns against the events "
              "(or raise --max-dead-letter-ratio)")

    def _write_all(self, works: list[_Work]) -> None:
        by_version: dict[str, list[Scored]] = {}
        for part in (p for w in works for p in w.scored):
            by_version.setdefault(part.version, []).append(part)
        written = [_concat(parts) for parts in by_version.values()]
        dead = [d for w in works for d in w.dead]
        for scored in written:
            if scored.keys:
                self._retry(functools.partial(self.sink.write, scored), self.sink.description)
        if dead:
            self._retry(lambda: self.dead_letters.write(dead), self.dead_letters.description)
        event_ms = [t for scored in written for t in scored.event_ms]
        self.metrics.on_written(np.asarray(event_ms, dtype=np.float64), time.time(), len(dead),
                                {s.version: len(s.keys) for s in written})
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

        policy = RetryPolicy(attempts=None, backoff_s=self.settings.retry_backoff_s, max_backoff_s=5.0,
                             give_up_after_s=self.settings.sink_retry_s)
        try:
            policy.call(write, what=f"write to {what}", on_retry=on_retry, sleep=self._sleep)
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
