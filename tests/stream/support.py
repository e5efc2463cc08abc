"""Helpers shared by the stream-lane tests: produce events, read outputs back, run the lane as a
real subprocess (``python -m inferlane.cli.main stream run ...``).

    events = fraud_events(200)                         # [{"id": "e0", "features": [...30 floats]}, ...]
    produce_kafka(bootstrap, topic, events)            # keyed by id
    proc = start_lane(model_dir, source, group, sink, "--idle-exit", "3")
    code, out, err = finish(proc)
    outputs = output_records([f[b"data"] for f in read_redis_stream(redis_url, sink_stream)])
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
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
    """Start ``inferlane stream run`` (key field ``id``) as a subprocess with stdout/stderr piped.
    With ``cwd``, its state folder is the default one, ``.inferlane`` under ``cwd``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cwd is not None:
        env.pop("INFERLANE_STATE_DIR", None)
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


def output_records(values: Sequence[bytes]) -> list[Record]:
    return [orjson.loads(v) for v in values]


def stream_url(redis_url: str, name: str) -> str:
    """``redis://host:port/<name>`` on the test server (the lane's URLs name the stream in the path;
    the fixture's URL ends in the database number)."""
    return f"{redis_url.rsplit('/', 1)[0]}/{name}"

