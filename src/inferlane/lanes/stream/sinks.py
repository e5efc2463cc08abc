"""Where scored events and dead letters go. ``write`` returns only once the destination has
acknowledged every record (Kafka delivery reports with ``acks=all``, a Redis reply, a committed
transaction, an fsynced file): the runner commits source offsets after that, never before.

Record outputs (Kafka topic, Redis stream) carry one JSON object per event, keyed by
``<input key>@<model version>`` — on a compacted topic (or any consumer that keeps the last value
per key) a re-delivered event overwrites its earlier output instead of adding one:

    {"id": 17, "model_name": "fraud", "model_version": "1", "probabilities": [0.93, 0.07],
     "event_time_ms": 1764000000123, "scored_at_ms": 1764000000190}

A key-value store (``store://NAME``, ``redis://host:port/0?prefix=NAME``: the hybrid lane's store)
gets, per event, key = the event's key as text and value = its outputs with computed_at = now
(store/kv): the stream keeps the keys with new events fresher than last night's batch, and the
newest computed_at wins whichever lane wrote it. A key the store cannot hold (empty, over 1024
bytes, a NUL) is skipped with a warning.

Table outputs are the shared table writers (store/tables) — a Parquet folder, ``sqlite:///file.db``
or ``postgresql://...`` — with the primary key (input key, model_version), so a database upserts a
re-delivered event; a folder gets one part per micro-batch.

A failed write raises SinkError, which says whether a retry can help (core/retry.py decides, from
the error underneath): the runner retries transient ones within its budget and stops on the rest.

Dead letters (``--dlq``): a Kafka topic, a Redis stream, or a ``.jsonl`` file, one JSON object per
event with the error, the stage that failed and the original payload. A payload over
``DEAD_LETTER_PAYLOAD_BYTES`` keeps only its first bytes, with its size and SHA-256: an event too
big for the dead-letter destination's record limit would otherwise be refused there on every
retry and stall the stream.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import orjson

from inferlane.core.errors import ConfigError, InferlaneError
from inferlane.core.retry import is_transient
from inferlane.core.urls import kafka_url, redact, redis_url, scheme
from inferlane.lanes.stream.sources import Event, default_state_dir, require_topics
from inferlane.store.kv import KVStore, StoreError, encode_rows, invalid_keys, is_kv_url, open_kv
from inferlane.store.tables import open_row_writer, scored_table

log = logging.getLogger("inferlane.stream")


class SinkError(InferlaneError):
    """The destination did not acknowledge a write; ``transient`` says whether a retry can help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(slots=True)
class Scored:
    model: str
    version: str
    key_field: str
    keys: list[str | int]
    outputs: dict[str, np.ndarray]
    event_ms: list[int]


@dataclass(slots=True)
class DeadLetter:
    event: Event
    stage: str
    """``decode`` (the payload is not a valid event) or ``score`` (the model failed on it)."""
    error: str
    version: str | None = None
    """The version that failed on it (``score``); None: the lane's version when it started."""


class RecordWriter(Protocol):
    description: str

    def write(self, records: list[tuple[bytes | None, bytes]]) -> None:
        """(key, value) records; returns once all are acknowledged, raises SinkError otherwise."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    description: str

    def write(self, batch: Scored) -> None: ...

    def close(self) -> None: ...


# -- record writers -----------------------------------------------------------------------------

class KafkaWriter:
    def __init__(self, url: str, what: str) -> None:
        from confluent_kafka import Producer

        target = kafka_url(url, what)
        if len(target.names) != 1:
            raise ConfigError(f"{what} {redact(url)}: one topic")
        self.topic = target.names[0]
        self.description = f"Kafka {target.bootstrap} topic {self.topic}"
        conf: dict[str, Any] = {
            "bootstrap.servers": target.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "message.timeout.ms": 30_000,
            "delivery.report.only.error": True,  # no Python callback per record on the happy path
            "on_delivery": self._delivered,
        }
        conf.update(target.settings)
        self._errors: list[Any] = []
        self._producer = Producer(conf)
        require_topics(self._producer, [self.topic], f"{what} {redact(url)}")

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(err)

    def write(self, records: list[tuple[bytes | None, bytes]]) -> None:
        from confluent_kafka import KafkaException

        produce = self._producer.produce
        topic = self.topic
        for key, value in records:
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.05)
                except KafkaException as e:  # refused before sending (e.g. a message over message.max.bytes)
                    self._producer.flush(10)
                    raise SinkError(f"{self.description}: {e}", transient=is_transient(e)) from e
        left = self._producer.flush(60)
        if left or self._errors:
            errors, self._errors = self._errors, []
            # Undelivered in time (a broker away) is worth a retry; a delivery error says itself.
            transient = all(bool(e.retriable()) for e in errors)
            raise SinkError(f"{self.description}: {left} record(s) not delivered"
                            + (f"; {len(errors)} failed: {errors[0]}" if errors else ""), transient=transient)

    def close(self) -> None:
        self._producer.flush(10)


class RedisStreamWriter:
    """XADD of ``key`` and ``data`` fields, pipelined; ``maxlen=N`` in the URL caps the stream."""

    def __init__(self, url: str, what: str) -> None:
        import redis

        target = redis_url(url, what, name="required")
        assert target.name is not None
        if "," in target.name:
            raise ConfigError(f"{what} {redact(url)}: one stream")
        self.stream = target.name
        try:
            self.maxlen = int(target.params["maxlen"]) if "maxlen" in target.params else None
        except ValueError as e:
            raise ConfigError(f"{what} {redact(url)}: maxlen= takes a number") from e
        self.description = f"Redis {target.host}:{target.port} stream {self.stream}"
        self._r = target.client()
        try:
            self._r.ping()  # fail at startup, not with a write retried forever
        except redis.RedisError as e:
            self._r.close()
            raise ConfigError(f"{what} {redact(url)}: cannot reach Redis ({e})") from e

    def write(self, records: list[tuple[bytes | None, bytes]]) -> None:
        import redis

        pipe = self._r.pipeline(transaction=False)
        for key, value in records:
            fields = {b"data": value} if key is None else {b"key": key, b"data": value}
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
        try:
            pipe.execute()
        except redis.RedisError as e:
            raise SinkError(f"{self.description}: {e}", transient=is_transient(e)) from e

    def close(self) -> None:
        self._r.close()


class JsonlWriter:
    """Appends values as lines to a local file, fsynced before ``write`` returns. The file (and its
    folder) is created on the first write, so a run with no dead letters leaves nothing behind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not os.access(existing, os.W_OK) or (existing == path and path.is_dir()):
            raise ConfigError(f"{path}: cannot write there")
        self._fh: BinaryIO | None = None
        self._lock = threading.Lock()

    def write(self, records: list[tuple[bytes | None, bytes]]) -> None:
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
            self._fh.write(b"".join(value + b"\n" for _, value in records))
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


# -- outputs ------------------------------------------------------------------------------------

def output_key(key: str | int, version: str) -> bytes:
    return f"{key}@{version}".encode()


class RecordSink:
    """Scored events as JSON records on a Kafka topic or Redis stream."""

    def __init__(self, writer: RecordWriter) -> None:
        self.writer = writer
        self.description = writer.description

    def write(self, batch: Scored) -> None:
        cols = {name: arr.tolist() for name, arr in batch.outputs.items()}
        names = list(cols)
        now_ms = int(time.time() * 1000)
        dumps = orjson.dumps
        records: list[tuple[bytes | None, bytes]] = []
        for i, key in enumerate(batch.keys):
            rec: dict[str, Any] = {batch.key_field: key, "model_name": batch.model, "model_version": batch.version}
            for n in names:
                rec[n] = cols[n][i]
            rec["event_time_ms"] = batch.event_ms[i]
            rec["scored_at_ms"] = now_ms
            records.append((output_key(key, batch.version), dumps(rec)))
        self.writer.write(records)

    def close(self) -> None:
        self.writer.close()


class TableSink:
    """Scored events as rows of a table writer (Parquet folder, SQLite, PostgreSQL), keyed by
    (key, model_version)."""

    def __init__(self, url: str, key_field: str, table: str | None) -> None:
        self.key_field = key_field
        self._writer = open_row_writer(url, key=[key_field, "model_version"], table=table, flag="--sink")
        self.description = self._writer.description

    def write(self, batch: Scored) -> None:
        import pyarrow as pa

        event_time = pa.array(np.asarray(batch.event_ms, dtype="datetime64[ms]"), pa.timestamp("ms", "UTC"))
        table = scored_table({self.key_field: batch.keys}, batch.outputs, model=batch.model, version=batch.version,
                             scored_at=datetime.now(UTC), extra={"event_time": event_time})
        try:
            self._writer.write(table)
        except ConfigError:
            raise
        except Exception as e:  # database and disk errors: the runner retries the transient ones
            raise SinkError(f"{self.description}: {type(e).__name__}: {e}", transient=is_transient(e)) from e

    def close(self) -> None:
        self._writer.close()


class KVSink:
    """Scored events into a key-value store: key = str(event key), computed_at = now."""

    def __init__(self, url: str, ttl_s: float | None = None) -> None:
        self.ttl_s = ttl_s
        self.store: KVStore = open_kv(url, flag="--sink")
        self.description = self.store.description
        try:
            self.store.get_many(["inferlane-startup-check"])  # fail at startup, not with a write retried forever
        except StoreError as e:
            self.store.close()
            raise ConfigError(f"--sink {redact(url)}: cannot reach the store ({e.message})") from e

    def write(self, batch: Scored) -> None:
        keys = [str(k) for k in batch.keys]
        items = list(zip(keys, encode_rows(batch.model, batch.version, time.time(), batch.outputs), strict=True))
        bad = invalid_keys(keys)
        for i, reason in bad:
            log.warning("%s: event key %r skipped: %s", self.description, keys[i][:100], reason)
        if bad:
            skip = {i for i, _ in bad}
            items = [item for i, item in enumerate(items) if i not in skip]
        try:
            self.store.put_many(items, self.ttl_s)
        except StoreError as e:
            raise SinkError(e.message, transient=e.transient) from e

    def close(self) -> None:
        self.store.close()


DEAD_LETTER_PAYLOAD_BYTES = 16_384
"""A dead letter keeps at most this many bytes of the payload (docs/stream.md, "Dead letters")."""


class DeadLetters:
    """Failed events with their error and original payload (its first ``payload_bytes`` bytes), on
    any record writer. ``key_field`` (``--key``) names the event field reported as ``key``."""

    def __init__(self, writer: RecordWriter, model: str, version: str, *, key_field: str | None = None,
                 payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES) -> None:
        self.writer = writer
        self.description = writer.description
        self.model = model
        self.version = version
        self.key_field = key_field
        self.payload_bytes = payload_bytes

    def write(self, letters: list[DeadLetter]) -> None:
        now_ms = int(time.time() * 1000)
        records: list[tuple[bytes | None, bytes]] = []
        for d in letters:
            e = d.event
            rec: dict[str, Any] = {"error": d.error, "stage": d.stage, "source": e.partition,
                                   "offset": e.offset, "event_time_ms": e.ts_ms, "model_name": self.model,
                                   "model_version": d.version or self.version, "failed_at_ms": now_ms,
                                   "key": self._key(e)}
            rec.update(_payload(e.value, self.payload_bytes))
            records.append((e.key, orjson.dumps(rec)))
        self.writer.write(records)

    def _key(self, event: Event) -> str | int | None:
        """The event's ``--key`` field when its payload has one, else the Kafka message key."""
        if self.key_field is not None and event.value is not None:
            try:
                doc = orjson.loads(event.value)
            except orjson.JSONDecodeError:
                doc = None
            key = doc.get(self.key_field) if isinstance(doc, dict) else None
            if isinstance(key, str | int) and not isinstance(key, bool):
                return key
        return event.key.decode(errors="replace") if event.key is not None else None

    def close(self) -> None:
        self.writer.close()


def _payload(value: bytes | None, limit: int) -> dict[str, Any]:
    """``payload`` (text) or ``payload_base64``; beyond ``limit`` bytes only its start, with
    ``payload_truncated``, the original ``payload_bytes`` and ``payload_sha256``."""
    if value is None:
        return {"payload": None}
    out: dict[str, Any] = {}
    head = value
    if len(value) > limit:
        head = value[:limit]
        out = {"payload_truncated": True, "payload_bytes": len(value),
               "payload_sha256": hashlib.sha256(value).hexdigest()}
    text = _utf8(head, cut=head is not value)
    if text is None:
        out["payload_base64"] = base64.b64encode(head).decode()
    else:
        out["payload"] = text
    return out


def _utf8(raw: bytes, *, cut: bool) -> str | None:
    """``raw`` as text, or None when it is not UTF-8; with ``cut``, the partial character (at most
    3 bytes) that truncation may have left at its end is dropped."""
    for drop in range(4 if cut else 1):
        try:
            return raw[:len(raw) - drop].decode()
        except UnicodeDecodeError:
            continue
    return None


def record_writer(url: str, what: str) -> RecordWriter | None:
    kind = scheme(url)
    if kind == "kafka":
        return KafkaWriter(url, what)
    if kind in ("redis", "rediss"):
        return RedisStreamWriter(url, what)
    return None


def open_stream_sink(url: str, *, key_field: str, table: str | None = None, ttl_s: float | None = None) -> Sink:
    if is_kv_url(url):
        if table is not None:
            raise ConfigError("--table applies to database sinks, not to a key-value store")
        return KVSink(url, ttl_s)
    if ttl_s is not None:
        raise ConfigError("--ttl applies to key-value store sinks (store://NAME, redis://...?prefix=NAME)")
    writer = record_writer(url, "--sink")
    if writer is not None:
        return RecordSink(writer)
    return TableSink(url, key_field, table)


def open_dead_letters(url: str | None, *, group: str, model: str, version: str,
                      key_field: str | None = None, state_dir: Path | None = None) -> DeadLetters:
    """``--dlq``: kafka://, redis:// or a .jsonl file (default ``<state_dir>/dead-letters.jsonl``,
    ``.inferlane/stream/<group>/dead-letters.jsonl`` without one)."""
    if url is None:
        folder = state_dir or default_state_dir(group)
        return DeadLetters(JsonlWriter(folder / "dead-letters.jsonl"), model, version, key_field=key_field)
    writer = record_writer(url, "--dlq")
    if writer is None:
        kind = scheme(url)
        path = url[len("file://"):] if kind == "file" else url
        if kind not in ("", "file") or not path.endswith(".jsonl"):
            raise ConfigError(f"--dlq {redact(url)}: use kafka://host:port/topic, redis://host:port/stream "
                              "or a .jsonl file")
        writer = JsonlWriter(Path(path))
    return DeadLetters(writer, model, version, key_field=key_field)
