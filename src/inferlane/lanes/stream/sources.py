"""Where events come from: a Kafka topic through a consumer group, or a Redis stream through a
consumer group. Both hand out events in order and commit only what the runner says is done.

    source = open_source("kafka://127.0.0.1:9092/transactions", group="fraud-scorer")
    events = source.poll(max_events=512, timeout_s=0.05)
    ...                                   # score, write, wait for the sink's ack
    source.commit(source.positions(events), wait=False)

URLs:

- ``kafka://host:port[,host:port]/topic[,topic]?<librdkafka setting>=<value>&...`` — any consumer
  setting can ride along in the query (``security.protocol``, ``session.timeout.ms``, ...).
- ``redis://[user:password@]host:port[/db]/stream?field=data`` (``rediss://`` for TLS): each entry
  holds the JSON event in one field (``data`` unless ``field=`` says otherwise).

Both are parsed by core/urls.py, with the rules every lane shares.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from inferlane.core import tracing
from inferlane.core.errors import ConfigError
from inferlane.core.state import state_dir
from inferlane.core.urls import kafka_url, redact, redis_url, scheme
from inferlane.lanes.stream.deliveries import DeliveryLog

log = logging.getLogger("inferlane.stream")

Positions = dict[str, Any]
"""What to commit: Kafka ``{"topic/partition": next offset}``, Redis ``{stream: [entry ids]}``."""


_TRACEPARENT = tracing.TRACEPARENT.encode()


def _kafka_traceparent(headers: Any) -> str | None:
    """The ``traceparent`` header of a Kafka message (a list of (key, value) pairs, or None)."""
    for key, value in headers or ():
        if key == tracing.TRACEPARENT:
            return value.decode("latin-1") if isinstance(value, bytes) else value if isinstance(value, str) else None
    return None


class Event(NamedTuple):
    value: bytes | None
    key: bytes | None
    ts_ms: int
    """Event time: the Kafka message timestamp, or the time in the Redis entry id."""
    partition: str
    """``topic/partition`` for Kafka, the stream name for Redis."""
    offset: int | str
    deliveries: int = 1
    """How many times the source has handed this event out, this time included (Redis: the
    entry's delivery count; Kafka: counted in ``<state dir>/deliveries``, see deliveries.py)."""
    trace_parent: str | None = None
    """The W3C traceparent the producer attached (Kafka header or Redis field ``traceparent``), read
    only while traces are on (core/tracing.py)."""


class Source(Protocol):
    description: str
    on_revoke: Callable[[], None] | None
    """Set by the runner: called (inside ``poll``) before this consumer loses partitions, so that
    in-flight batches finish and commit while the partitions are still ours."""

    def poll(self, max_events: int, timeout_s: float) -> list[Event]: ...

    @property
    def assigned(self) -> bool:
        """True once this consumer has been given something to read (Kafka: partitions)."""
        ...

    def positions(self, events: list[Event]) -> Positions: ...

    def handing_out(self, events: list[Event]) -> None:
        """Called before ``events`` are scored: a source that counts deliveries itself (Kafka) notes
        them durably here, so that a crash while they are scored counts as a delivery."""
        ...

    def merge(self, into: Positions, more: Positions) -> None: ...

    def commit(self, positions: Positions, *, wait: bool) -> None: ...

    def pause(self) -> None:
        """Stop fetching (the pipeline is full); ``poll`` keeps the group membership alive."""
        ...

    def resume(self) -> None: ...

    def lag(self) -> dict[str, int]:
        """Events not yet consumed, per partition (Kafka) or stream (Redis)."""
        ...

    def close(self) -> None: ...


def require_topics(client: Any, topics: list[str], label: str) -> None:
    """ConfigError unless the broker answers and has every topic (the lane never creates one)."""
    try:
        meta = client.list_topics(timeout=15)
    except Exception as e:  # librdkafka raises KafkaException for every failure (no broker, bad settings)
        raise ConfigError(f"{label}: cannot reach the broker ({e})") from e
    missing = [t for t in topics if t not in meta.topics or meta.topics[t].error is not None]
    if missing:
        raise ConfigError(f"{label}: no topic {', '.join(missing)} on the broker; create it first")


class KafkaSource:
    """A consumer in a group: offsets are stored and committed only by :meth:`commit`. Deliveries
    of uncommitted events are counted in ``<state_dir>/deliveries`` (see deliveries.py)."""

    def __init__(self, url: str, group: str, *, start: str = "earliest", max_wait_ms: int = 50,
                 state_dir: Path | None = None) -> None:
        from confluent_kafka import Consumer, TopicPartition

        target = kafka_url(url, "--source")
        topics = target.names
        self._tp = TopicPartition
        self.topics = topics
        self.description = f"Kafka {target.bootstrap} topic(s) {','.join(topics)} group {group}"
        conf: dict[str, Any] = {
            "bootstrap.servers": target.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": start,
            "session.timeout.ms": 10_000,
            "fetch.wait.max.ms": max(5, min(max_wait_ms, 500)),
            # Prefetch bound: with the pipeline bound, what keeps memory flat under overload.
            "queued.max.messages.kbytes": 16_384,
            # When that queue is full, fetch again soon (the default waits a whole second).
            "fetch.queue.backoff.ms": 10,
            "client.id": f"inferlane-{socket.gethostname()}-{os.getpid()}",
        }
        conf.update(target.settings)
        self.on_revoke: Callable[[], None] | None = None
        self._paused = False
        self._held: list[Event] = []
        self._deliveries = DeliveryLog((state_dir or default_state_dir(group)) / "deliveries")
        self._consumer = Consumer(conf, logger=log)
        require_topics(self._consumer, topics, self.description)
        self._assigned = False
        self._consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._revoked, on_lost=self._lost)

    @property
    def assigned(self) -> bool:
        return self._assigned

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("partitions assigned: %s", ", ".join(f"{p.topic}/{p.partition}" for p in partitions) or "none")
        self._assigned = bool(partitions)

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("partitions revoked: %s", ", ".join(f"{p.topic}/{p.partition}" for p in partitions))
        self._held.clear()  # fetched but never scored: the next owner reads them again
        self._assigned = False
        if self.on_revoke is not None:
            self.on_revoke()
        self._deliveries.forget()

    def _lost(self, consumer: Any, partitions: list[Any]) -> None:
        # The group moved on without us (session timeout): our commits would be refused, and the
        # events of in-flight batches are re-delivered to the new owner anyway.
        log.warning("partitions lost: %s", ", ".join(f"{p.topic}/{p.partition}" for p in partitions))
        self._held.clear()
        self._assigned = False
        self._deliveries.forget()

    def poll(self, max_events: int, timeout_s: float) -> list[Event]:
        if self._paused:
            self._held.extend(self._consume(max_events, timeout_s))
            return []
        if self._held:
            out, self._held = self._held[:max_events], self._held[max_events:]
            return out
        return self._consume(max_events, timeout_s)

    def _consume(self, max_events: int, timeout_s: float) -> list[Event]:
        # What is already fetched, at once; when nothing is, wait only for the first message, like
        # XREADGROUP BLOCK. consume(n, timeout) waits until n messages arrived: on a quiet stream it
        # held the first events of a micro-batch for the whole idle timeout (100 ms) before
        # --max-wait-ms even started counting.
        msgs = self._consumer.consume(num_messages=max_events, timeout=0)
        if not msgs and timeout_s > 0:
            first = self._consumer.poll(timeout_s)
            if first is not None:
                msgs = [first]
                if max_events > 1:
                    msgs += self._consumer.consume(num_messages=max_events - 1, timeout=0)
        out = []
        count = self._deliveries.count
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise RuntimeError(f"Kafka consumer: {err}")
                log.warning("Kafka consumer: %s", err)
                continue
            partition, offset = f"{m.topic()}/{m.partition()}", m.offset() or 0
            out.append(Event(m.value(), m.key(), m.timestamp()[1], partition, offset, count(partition, offset),
                             _kafka_traceparent(m.headers()) if tracing.on() else None))
        return out

    def positions(self, events: list[Event]) -> Positions:
        pos: Positions = {}
        for e in events:  # in offset order within a partition: the last one wins
            pos[e.partition] = e.offset
        return {p: int(off) + 1 for p, off in pos.items()}

    def handing_out(self, events: list[Event]) -> None:
        spans: dict[str, tuple[int, int]] = {}
        for e in events:  # in offset order within a partition
            first = spans.get(e.partition)
            spans[e.partition] = (int(e.offset) if first is None else first[0], int(e.offset))
        self._deliveries.handing_out(spans)

    def merge(self, into: Positions, more: Positions) -> None:
        for p, off in more.items():
            into[p] = max(into.get(p, -1), off)

    def commit(self, positions: Positions, *, wait: bool) -> None:
        from confluent_kafka import KafkaException

        if not positions:
            return
        offsets = []
        for label, off in positions.items():
            topic, part = label.rsplit("/", 1)
            offsets.append(self._tp(topic, int(part), off))
        self._deliveries.committed(positions)
        try:
            if wait:  # two calls, not asynchronous=not wait: the stubs type each overload by a literal
                self._consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:  # e.g. a rebalance took the partition: it is re-delivered
            log.warning("offset commit refused (%s); those events will be re-delivered", e)

    def pause(self) -> None:
        if not self._paused:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False

    def lag(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            assigned = self._consumer.assignment()
            positions = self._consumer.position(assigned) if assigned else []
        except Exception:  # a metric must never stop the stream
            return out
        for tp in positions:
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except Exception:
                continue
            if high < 0 or tp.offset < 0:  # no position before the first fetch after an assignment
                continue
            out[f"{tp.topic}/{tp.partition}"] = max(0, high - max(tp.offset, low))
        return out

    def close(self) -> None:
        self._consumer.close()  # leaves the group: its partitions move to the others at once


class RedisStreamSource:
    """XREADGROUP/XACK on one stream; entries left pending by a dead consumer are taken over with
    XAUTOCLAIM once idle for ``claim_idle_ms``, and this consumer's own pending entries (a restart
    under the same ``--consumer`` name) are read again first."""

    def __init__(self, url: str, group: str, *, start: str = "earliest", consumer: str | None = None,
                 claim_idle_ms: int = 30_000) -> None:
        import redis

        target = redis_url(url, "--source", name="required")
        assert target.name is not None
        if "," in target.name:
            raise ConfigError(f"--source {redact(url)}: one Redis stream per source")
        self.stream = target.name
        self.group = group
        self.field = target.params.get("field", "data").encode()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.description = (f"Redis {target.host}:{target.port} stream {self.stream} group {group} "
                            f"consumer {self.consumer}")
        self.on_revoke: Callable[[], None] | None = None
        self._r = target.client()
        self._own_pending: bytes | None = b"0"  # re-read our own pending entries first
        self._next_pending_check = 0.0
        self._claim_cursor = b"0-0"
        self._next_claim = 0.0
        self._paused = False
        self._handed_out: set[str] = set()
        """Entry ids given to the runner and not yet acknowledged: XAUTOCLAIM cannot skip entries this
        consumer already owns, and the pending re-read can meet claimed ones; neither may hand an
        entry out twice."""
        try:
            self._r.xgroup_create(self.stream, group, id="0" if start == "earliest" else "$", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise ConfigError(f"{self.description}: {e}") from e
        except redis.ConnectionError as e:
            raise ConfigError(f"{self.description}: cannot reach Redis ({e})") from e

    @property
    def assigned(self) -> bool:
        return True

    def _events(self, entries: list[Any], *, redelivered: bool = False) -> list[Event]:
        """Events of XREADGROUP/XAUTOCLAIM entries; ``redelivered`` (pending entries read again)
        asks XPENDING how often each was delivered."""
        counts: dict[bytes, int] = {}
        ids = [entry_id for entry_id, _ in entries if entry_id is not None]
        if redelivered and ids:
            for p in self._r.xpending_range(self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) * 2,
                                            consumername=self.consumer):
                counts[p["message_id"]] = int(p["times_delivered"])
        out = []
        handed_out = self._handed_out
        for entry_id, fields in entries:
            if entry_id is None:
                continue
            eid = entry_id.decode()
            if eid in handed_out:
                continue
            handed_out.add(eid)
            value = fields.get(self.field) if fields else None
            trace = fields.get(_TRACEPARENT) if fields and tracing.on() else None
            out.append(Event(value, None, int(eid.split("-", 1)[0]), self.stream, eid, counts.get(entry_id, 1),
                             trace.decode("latin-1") if isinstance(trace, bytes) else None))
        return out

    def poll(self, max_events: int, timeout_s: float) -> list[Event]:
        if self._paused:
            time.sleep(timeout_s)
            return []
        try:
            return self._poll(max_events, timeout_s)
        except Exception:
            # A reply lost with the connection (a Redis restart) leaves entries pending at this
            # consumer that it never received: read its pending entries again once Redis is back.
            self._own_pending = b"0"
            raise

    def _poll(self, max_events: int, timeout_s: float) -> list[Event]:
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + max(0.5, self.claim_idle_ms / 2000)
            cursor, claimed, *_ = self._r.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms,
                                                     start_id=self._claim_cursor, count=max_events)
            self._claim_cursor = cursor
            events = self._events(claimed, redelivered=True)
            if events:
                log.info("claimed %d pending entries of %s from idle consumers", len(events), self.stream)
                return events
        while self._own_pending is not None:
            found = self._r.xreadgroup(self.group, self.consumer, {self.stream: self._own_pending}, count=max_events)
            entries = found[0][1] if found else []
            if not entries:
                self._own_pending = None
                break
            self._own_pending = entries[-1][0]
            events = self._events(entries, redelivered=True)
            if events:
                return events
        block = max(1, int(timeout_s * 1000))
        found = self._r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=max_events, block=block)
        if found:
            return self._events(found[0][1])
        if now >= self._next_pending_check:
            # Idle: look for entries pending at this consumer that it never received (a reply lost
            # in a way no error reported); handed-out ones are skipped.
            self._next_pending_check = now + 1.0
            self._own_pending = b"0"
        return []

    def positions(self, events: list[Event]) -> Positions:
        return {self.stream: [e.offset for e in events]} if events else {}

    def handing_out(self, events: list[Event]) -> None:
        pass  # Redis counts deliveries itself (XPENDING)

    def merge(self, into: Positions, more: Positions) -> None:
        for stream, ids in more.items():
            into.setdefault(stream, []).extend(ids)

    def commit(self, positions: Positions, *, wait: bool) -> None:
        pipe = self._r.pipeline(transaction=False)
        for stream, ids in positions.items():
            for i in range(0, len(ids), 10_000):
                pipe.xack(stream, self.group, *ids[i:i + 10_000])
        pipe.execute()
        for ids in positions.values():
            self._handed_out.difference_update(ids)

    def pause(self) -> None:
        self._paused = True  # Redis hands out entries only when asked: stop asking

    def resume(self) -> None:
        self._paused = False

    def lag(self) -> dict[str, int]:
        try:
            for g in self._r.xinfo_groups(self.stream):
                if g["name"].decode() == self.group:
                    lag = g.get("lag")
                    return {self.stream: int(lag if lag is not None else g.get("pending", 0))}
        except Exception:  # a metric must never stop the stream
            pass
        return {}

    def close(self) -> None:
        self._r.close()


def default_state_dir(group: str) -> Path:
    """Where the lane keeps a group's local state by default: ``<state folder>/stream/<group>``
    (``core/state.py``: ``$INFERLANE_STATE_DIR``, else ``.inferlane`` under the current directory)."""
    return state_dir() / "stream" / group


def open_source(url: str, group: str, *, start: str = "earliest", max_wait_ms: int = 50,
                consumer: str | None = None, claim_idle_ms: int = 30_000, state_dir: Path | None = None) -> Source:
    if not group:
        raise ConfigError("--group: name the consumer group (instances with one group share the work)")
    if start not in ("earliest", "latest"):
        raise ConfigError(f"--start {start}: earliest or latest")
    kind = scheme(url)
    if kind == "kafka":
        return KafkaSource(url, group, start=start, max_wait_ms=max_wait_ms, state_dir=state_dir)
    if kind in ("redis", "rediss"):
        return RedisStreamSource(url, group, start=start, consumer=consumer, claim_idle_ms=claim_idle_ms)
    raise ConfigError(f"--source {redact(url)}: use kafka://host:port/topic or redis://host:port/stream")
