"""Helpers shared by the stream-lane tests: produce events, read outputs back, run the lane as a
real subprocess (``python -m inferlane.cli.main stream run ...``).

    events = fraud_events(200)                         # [{"id": "e0", "features": [...30 floats]}, ...]
    produce_kafka(bootstrap, topic, events)            # keyed by id
    proc = start_lane(model_dir, source, group, sink, "--idle-exit", "3")
    code, out, err = finish(proc)
    records = drain_kafka(bootstrap, sink_topic, expect=200)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from inferlane.demo.models import synthetic_transactions

Record = dict[str, Any]


def fraud_events(n: int, start: int = 0, prefix: str = "e") -> list[Record]:
    """``n`` JSON-ready events for the demo fraud model: ``{"id": "<prefix><i>", "features": [30 floats]}``."""
    x, _ = synthetic_transactions(start + n)
    return [{"id": f"{prefix}{i}", "features": x[i].tolist()} for i in range(start, start + n)]


def encode(event: Record | bytes) -> bytes:
    return event if isinstance(event, bytes) else orjson.dumps(event)


def produce_kafka(bootstrap: str, topic: str, events: Iterable[Record | bytes]) -> int:
    """Produce events (dicts as JSON, bytes as they are; keyed by ``id`` when there is one); returns the count."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    n = 0
    for event in events:
        key = str(event["id"]).encode() if isinstance(event, dict) and "id" in event else None
        while True:
            try:
                producer.produce(topic, encode(event), key=key)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    left = producer.flush(30)
    assert left == 0, f"{left} events not delivered to {topic}"
    return n


def drain_kafka(bootstrap: str, topic: str, expect: int | None = None, idle_s: float = 3.0,
                timeout_s: float = 60.0) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) in ``topic`` from the start: reads until ``expect`` records arrived and then
    ``idle_s`` passed with nothing new (to catch extras), or ``idle_s`` of silence when expect is None."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "fetch.wait.max.ms": 50})
    consumer.subscribe([topic])
    out: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, 0.2)
            got = [(m.key(), m.value()) for m in batch if m.error() is None]
            if got:
                out += got
                last = time.monotonic()
            elif (expect is None or len(out) >= expect) and time.monotonic() - last > idle_s:
                break
    finally:
        consumer.close()
    return out


def kafka_committed(bootstrap: str, topic: str, group: str) -> int:
    """Sum over partitions of the group's committed offset in ``topic`` (0 where none)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p) for p in meta.partitions]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


def xadd_events(redis_url: str, stream: str, events: Iterable[Record | bytes], field: str = "data") -> int:
    """XADD each event as ``{field: json}``; returns the count."""
    import redis

    client = redis.Redis.from_url(redis_url)
    n = 0
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(stream, {field: encode(event)})
        n += 1
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()
    client.close()
    return n


def read_redis_stream(redis_url: str, stream: str) -> list[dict[bytes, bytes]]:
    """Every entry's fields in ``stream``, oldest first."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return [fields for _, fields in client.xrange(stream)]
    finally:
        client.close()


def lane_command(model: Path | str, source: str, group: str, sink: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "inferlane.cli.main", "stream", "run", "--model", str(model),
            "--source", source, "--group", group, "--sink", sink, "--key", "id", *args]


def start_lane(model: Path | str, source: str, group: str, sink: str, *args: str,
               cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start ``inferlane stream run`` (key field ``id``) as a subprocess with stdout/stderr piped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(lane_command(model, source, group, sink, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def finish(proc: subprocess.Popen[str], timeout: float = 120.0) -> tuple[int, str, str]:
    """Wait for the lane to exit (killing it after ``timeout``); returns (exit code, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the lane did not exit in {timeout} s; stderr:\n{err[-4000:]}") from None
    return proc.returncode, out, err


def run_lane(model: Path | str, source: str, group: str, sink: str, *args: str,
             timeout: float = 120.0) -> tuple[int, str, str]:
    """Run the lane to completion (pass ``--idle-exit``); returns (exit code, stdout, stderr)."""
    return finish(start_lane(model, source, group, sink, *args), timeout)


def output_records(values: Sequence[bytes]) -> list[Record]:
    return [orjson.loads(v) for v in values]


def stream_url(redis_url: str, name: str) -> str:
    """``redis://host:port/<name>`` on the test server (the lane's URLs name the stream in the path;
    the fixture's URL ends in the database number)."""
    return f"{redis_url.rsplit('/', 1)[0]}/{name}"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)
