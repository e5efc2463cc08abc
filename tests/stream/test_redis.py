"""The stream lane on Redis Streams, against a real redis-server: a backlog drains to a Redis
output stream with one output per event and nothing left pending; poison events go to a Redis
dead-letter stream; a consumer killed with pending entries has them claimed by another one; and a
stalled destination bounds what the group reads (backpressure)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis

from inferlane.core.inputs import RecordDecoder
from inferlane.core.model import ModelVersion
from inferlane.lanes.stream import (
    StreamRunner,
    StreamSettings,
    open_dead_letters,
    open_source,
    open_stream_sink,
)
from inferlane.lanes.stream.sinks import Scored, Sink
from inferlane.testing import wait_until
from tests.stream.support import (
    Record,
    finish,
    fraud_events,
    output_records,
    read_redis_stream,
    start_lane,
    stream_url,
    xadd_events,
)


def entries(client: redis.Redis, stream: str, lo: str = "-", hi: str = "+") -> list[tuple[bytes, dict[bytes, bytes]]]:
    return cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream, lo, hi))


def pending_count(client: redis.Redis, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def pending_by_consumer(client: redis.Redis, stream: str, group: str) -> dict[str, int]:
    return {c["name"].decode(): int(c["pending"]) for c in client.xpending(stream, group)["consumers"]}


def group_read_unread(client: redis.Redis, stream: str, group: str) -> tuple[int, int]:
    """(entries the group has been handed, entries after its last-delivered-id): XINFO GROUPS'
    entries-read and lag, counted in a way that any Redis with consumer groups answers."""
    [info] = [g for g in client.xinfo_groups(stream) if g["name"].decode() == group]
    last = info["last-delivered-id"].decode()
    read = len(entries(client, stream, "-", last)) if last != "0-0" else 0
    return read, client.xlen(stream) - read


def outputs(redis_url: str, stream: str) -> list[Record]:
    return output_records([fields[b"data"] for fields in read_redis_stream(redis_url, stream)])


def prediction(rec: Record) -> tuple[Any, ...]:
    """What the model said about an event (``scored_at_ms`` differs between deliveries, legitimately)."""
    return rec["id"], rec["model_version"], rec["label"], tuple(rec["probabilities"])


@pytest.mark.e2e
def test_backlog_drains_to_a_redis_stream_exactly_once(model_repo: Path, stream_redis_url: str, topic_prefix: str,
                                                       client: redis.Redis, tmp_path: Path) -> None:
    src, out, group = f"{topic_prefix}:events", f"{topic_prefix}:scores", f"{topic_prefix}-scorer"
    events = fraud_events(2000)
    xadd_events(stream_redis_url, src, events)

    proc = start_lane(model_repo / "fraud", stream_url(stream_redis_url, src), group, stream_url(stream_redis_url, out),
                      "--dlq", stream_url(stream_redis_url, f"{topic_prefix}:dlq"), "--max-batch", "128",
                      "--idle-exit", "2", "--json", cwd=tmp_path)
    code, stdout, stderr = finish(proc)
    assert code == 0, stderr[-4000:]
    report = orjson.loads(stdout.strip().splitlines()[-1])
    assert report["events_in"] == 2000 and report["events_out"] == 2000 and report["dead_lettered"] == 0

    entries = read_redis_stream(stream_redis_url, out)
    records = output_records([e[b"data"] for e in entries])
    assert sorted(r["id"] for r in records) == sorted(e["id"] for e in events)  # each exactly once
    assert all(e[b"key"] == f"{r['id']}@1".encode() for e, r in zip(entries, records, strict=True))
    first = records[0]
    assert first["model_name"] == "fraud" and first["model_version"] == "1"
    assert len(first["probabilities"]) == 2 and first["label"] in (0, 1)
    assert {"event_time_ms", "scored_at_ms"} <= first.keys()
    assert pending_count(client, src, group) == 0
    assert group_read_unread(client, src, group) == (2000, 0)
    assert client.xlen(f"{topic_prefix}:dlq") == 0


@pytest.mark.e2e
def test_poison_events_go_to_the_redis_dead_letter_stream(model_repo: Path, stream_redis_url: str,
                                                          topic_prefix: str, client: redis.Redis,
                                                          tmp_path: Path) -> None:
    src, out, dlq, group = (f"{topic_prefix}:events", f"{topic_prefix}:scores", f"{topic_prefix}:dlq",
                            f"{topic_prefix}-scorer")
    good = fraud_events(500)
    width = len(good[0]["features"])
    poison: list[bytes] = [
        b"not json at all",
        b"[1, 2, 3]",
        orjson.dumps({"features": good[0]["features"]}),                 # no key
        orjson.dumps({"id": "p-short", "features": [1.0, 2.0]}),         # wrong shape
        orjson.dumps({"id": "p-null", "features": [None] * width}),      # nulls
        orjson.dumps({"id": "p-text", "features": ["x"] * width}),       # not numbers
        orjson.dumps({"id": "p-missing", "amount": 3.5}),                # no input field
    ]
    mixed: list[Record | bytes] = list(good)
    for i, p in enumerate(poison):  # spread over several micro-batches
        mixed.insert(i * 70 + 5, p)
    xadd_events(stream_redis_url, src, mixed)

    proc = start_lane(model_repo / "fraud", stream_url(stream_redis_url, src), group, stream_url(stream_redis_url, out),
                      "--dlq", stream_url(stream_redis_url, dlq), "--max-batch", "64", "--idle-exit", "2",
                      "--json", cwd=tmp_path)
    code, stdout, stderr = finish(proc)
    assert code == 0, stderr[-4000:]
    report = orjson.loads(stdout.strip().splitlines()[-1])
    assert (report["events_in"], report["events_out"], report["dead_lettered"]) == (len(mixed), 500, len(poison))

    assert sorted(r["id"] for r in outputs(stream_redis_url, out)) == sorted(e["id"] for e in good)
    ids = {entry_id.decode(): fields[b"data"] for entry_id, fields in entries(client, src)}
    letters = outputs(stream_redis_url, dlq)
    assert sorted(d["payload"].encode() for d in letters) == sorted(poison)
    for d in letters:
        assert d["stage"] == "decode" and d["error"]
        assert d["source"] == src and ids[d["offset"]] == d["payload"].encode()
        assert d["model_name"] == "fraud" and d["model_version"] == "1"
    by_payload = {d["payload"].encode(): d["error"] for d in letters}
    assert "not JSON" in by_payload[poison[0]]
    assert "not an object" in by_payload[poison[1]]
    assert "key field" in by_payload[poison[2]]
    assert "features" in by_payload[poison[3]] and "features" in by_payload[poison[6]]
    assert pending_count(client, src, group) == 0


@pytest.mark.e2e
def test_pending_entries_of_a_killed_consumer_are_claimed(model_repo: Path, stream_redis_url: str,
                                                          topic_prefix: str, client: redis.Redis,
                                                          tmp_path: Path) -> None:
    src, out, before, group = (f"{topic_prefix}:events", f"{topic_prefix}:scores", f"{topic_prefix}:scores-a",
                               f"{topic_prefix}-scorer")
    events = fraud_events(2000)
    xadd_events(stream_redis_url, src, events[:1000])
    source, sink = stream_url(stream_redis_url, src), stream_url(stream_redis_url, out)
    dlq = stream_url(stream_redis_url, f"{topic_prefix}:dlq")

    a = start_lane(model_repo / "fraud", source, group, sink, "--dlq", dlq, "--consumer", "a",
                   "--max-batch", "64", "--max-inflight", "2", cwd=tmp_path)
    try:
        wait_until(lambda: bool(client.exists(out)) and client.xlen(out) >= 1000
                   and pending_count(client, src, group) == 0, "consumer a scored the first 1000 events")
        # The destination breaks under consumer a: its outputs so far move aside and the key becomes a
        # string, so every write of a fails from now on and what it reads stays pending.
        pipe = client.pipeline(transaction=True)
        pipe.rename(out, before)
        pipe.set(out, "not a stream")
        pipe.execute()
        xadd_events(stream_redis_url, src, events[1000:])
        wait_until(lambda: pending_by_consumer(client, src, group).get("a", 0) >= 64,
                   "consumer a holds pending entries")
    finally:
        a.kill()
        a.communicate()
    held = pending_by_consumer(client, src, group)
    assert held.get("a", 0) >= 64, held

    client.delete(out)  # the destination is back
    b = start_lane(model_repo / "fraud", source, group, sink, "--dlq", dlq, "--consumer", "b",
                   "--claim-idle-ms", "500", "--max-batch", "64", "--idle-exit", "2", cwd=tmp_path)
    code, _, stderr = finish(b)
    assert code == 0, stderr[-4000:]
    assert "claimed" in stderr

    assert pending_count(client, src, group) == 0
    assert group_read_unread(client, src, group) == (2000, 0)
    records = outputs(stream_redis_url, before) + outputs(stream_redis_url, out)
    assert {r["id"] for r in records} == {e["id"] for e in events}
    seen: dict[str, tuple[Any, ...]] = {}
    for r in records:  # a re-delivered event may have two outputs, but never two different ones
        assert seen.setdefault(r["id"], prediction(r)) == prediction(r), r["id"]
    assert client.xlen(f"{topic_prefix}:dlq") == 0


class StalledSink:
    """A real sink behind a destination that stops answering until ``release`` is set."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.description = f"stalled {sink.description}"
        self.release = threading.Event()
        self.stalled = threading.Event()

    def write(self, batch: Scored) -> None:
        if not self.release.is_set():
            self.stalled.set()
            if not self.release.wait(120):
                raise TimeoutError("the test never released the sink")
        self.sink.write(batch)

    def close(self) -> None:
        self.sink.close()


def test_a_stalled_sink_bounds_what_the_group_reads(model_repo: Path, stream_redis_url: str, topic_prefix: str,
                                                    client: redis.Redis) -> None:
    src, out, group = f"{topic_prefix}:events", f"{topic_prefix}:scores", f"{topic_prefix}-scorer"
    n, max_batch, max_inflight, idle_exit = 5000, 64, 2, 2.0
    bound = (max_inflight + 2) * max_batch
    xadd_events(stream_redis_url, src, fraud_events(n))

    model = ModelVersion.open(model_repo / "fraud", None, 1)
    sink = StalledSink(open_stream_sink(stream_url(stream_redis_url, out), key_field="id"))
    dead = open_dead_letters(stream_url(stream_redis_url, f"{topic_prefix}:dlq"), group=group, model=model.name,
                             version=model.version)
    source = open_source(stream_url(stream_redis_url, src), group, consumer="bp", claim_idle_ms=600_000)
    settings = StreamSettings(max_batch=max_batch, max_wait_ms=20, max_inflight=max_inflight, pause_after_s=0.5,
                              idle_exit_s=idle_exit, lag_interval_s=0.2)
    runner = StreamRunner(model, RecordDecoder.create(model.config, "id"), source, sink, dead, settings)
    stop = threading.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["report"] = runner.run(stop)
        except BaseException as e:  # reported by the assertions below
            result["error"] = e

    thread = threading.Thread(target=run, name="stream-under-test", daemon=True)
    thread.start()
    try:
        assert sink.stalled.wait(60), "the sink was never written to"
        stalled_at = time.monotonic()
        wait_until(lambda: runner.metrics.snapshot()["paused"] == 1 and runner.metrics.snapshot()["inflight"]
                   == max_inflight, "backpressure paused consumption")
        # Past pause_after_s the runner pauses the source itself (it then stops asking Redis for entries).
        wait_until(lambda: source._paused, "the runner paused the source")

        def stalled_past_idle_exit() -> bool:
            """The group stays put while the destination is stalled (checked on every poll), until the
            stall has outlasted idle_exit_s."""
            snap = runner.metrics.snapshot()
            assert snap["paused"] == 1 and snap["out"] == 0, snap
            assert 0 < pending_count(client, src, group) <= bound
            read, unread = group_read_unread(client, src, group)
            assert 0 < read <= bound and unread == n - read
            assert 0 < runner.metrics.events["in"] <= bound
            return time.monotonic() >= stalled_at + idle_exit + 0.5

        # A stall longer than idle_exit_s is not idleness: the backlog must still be drained after it.
        # Elapsed time is itself the condition under test here (the runner measures idleness with
        # time.monotonic, the clock read above), so the wait ends when the stall is long enough.
        wait_until(stalled_past_idle_exit, "the stall has outlasted idle_exit_s", 30, interval_s=0.15)
    finally:
        sink.release.set()
    thread.join(120)
    assert not thread.is_alive(), "the runner did not finish after the sink was released"
    try:
        assert "error" not in result, result.get("error")
        report = result["report"]
        assert report["events_in"] == n and report["events_out"] == n
        assert runner.metrics.snapshot()["paused"] == 0
        assert pending_count(client, src, group) == 0
        assert group_read_unread(client, src, group) == (n, 0)
        assert sorted(r["id"] for r in outputs(stream_redis_url, out)) == sorted(f"e{i}" for i in range(n))
    finally:
        for part in (source, sink, dead):
            part.close()
        model.close()


class SlowSink:
    """A real sink behind a destination that takes ``delay`` seconds to acknowledge each write."""

    def __init__(self, sink: Sink, delay: float) -> None:
        self.sink = sink
        self.delay = delay
        self.description = f"slow {sink.description}"
        self.writes = 0

    def write(self, batch: Scored) -> None:
        time.sleep(self.delay)
        self.writes += 1
        self.sink.write(batch)

    def close(self) -> None:
        self.sink.close()


def test_a_consumer_never_reclaims_its_own_inflight_entries(model_repo: Path, stream_redis_url: str,
                                                            topic_prefix: str, client: redis.Redis) -> None:
    """Batches stay pending longer than --claim-idle-ms behind a slow sink. XAUTOCLAIM returns the
    consumer's own in-flight entries too; handing them out again would score them twice."""
    src, out, group = f"{topic_prefix}:events", f"{topic_prefix}:scores", f"{topic_prefix}-scorer"
    n = 2000
    xadd_events(stream_redis_url, src, fraud_events(n))
    model = ModelVersion.open(model_repo / "fraud", None, 1)
    sink = SlowSink(open_stream_sink(stream_url(stream_redis_url, out), key_field="id"), delay=0.3)
    dead = open_dead_letters(stream_url(stream_redis_url, f"{topic_prefix}:dlq"), group=group, model=model.name,
                             version=model.version)
    source = open_source(stream_url(stream_redis_url, src), group, consumer="solo", claim_idle_ms=50)
    settings = StreamSettings(max_batch=64, max_wait_ms=10, max_inflight=4, idle_exit_s=1.5)
    runner = StreamRunner(model, RecordDecoder.create(model.config, "id"), source, sink, dead, settings)
    try:
        report = runner.run(threading.Event())
    finally:
        for part in (source, sink, dead):
            part.close()
        model.close()
    assert sink.writes >= 3  # batches did wait behind the slow destination, longer than claim-idle
    assert report["events_in"] == n and report["events_out"] == n
    records = outputs(stream_redis_url, out)
    assert len(records) == n
    assert sorted(r["id"] for r in records) == sorted(f"e{i}" for i in range(n))
    assert pending_count(client, src, group) == 0
