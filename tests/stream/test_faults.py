"""The stream lane under faults, against a real redis-server and Tansu: an event too big for the
dead-letter destination, a wrong ``--key``, a model outage, an event that keeps crashing the lane,
secrets in error messages, and a Redis restart under load."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from inferlane.core.model import ModelVersion
from inferlane.lanes.stream import StreamJob, StreamRunner, StreamSettings, run_stream
from inferlane.lanes.stream.sinks import DEAD_LETTER_PAYLOAD_BYTES
from inferlane.testing import RestartableRedis, create_topics, wait_until
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


def outputs(redis_url: str, stream: str) -> list[Record]:
    return output_records([fields[b"data"] for fields in read_redis_stream(redis_url, stream)])


def job(model_repo: Path, redis_url: str, prefix: str, **kw: Any) -> StreamJob:
    settings = kw.pop("settings", StreamSettings(max_batch=64, max_wait_ms=10, idle_exit_s=1.0))
    return StreamJob(model=str(model_repo / "fraud"), source=stream_url(redis_url, f"{prefix}:events"),
                     group=f"{prefix}-g", sink=stream_url(redis_url, f"{prefix}:scores"),
                     dlq=kw.pop("dlq", stream_url(redis_url, f"{prefix}:dlq")), key="id", settings=settings, **kw)


def test_an_event_over_the_dead_letter_record_limit_is_dead_lettered_truncated(
        model_repo: Path, stream_redis_url: str, kafka_bootstrap: str, topic_prefix: str) -> None:
    """The whole payload in the dead letter would be refused by the DLQ topic on every retry."""
    dlq_topic = f"{topic_prefix}-dlq"
    create_topics(kafka_bootstrap, [dlq_topic], partitions=1)
    huge = orjson.dumps({"id": "huge", "features": [1.0, 2.0], "blob": "é" * 40_000})  # 80 kB, wrong shape
    xadd_events(stream_redis_url, f"{topic_prefix}:events", [*fraud_events(20), huge])
    report = run_stream(job(model_repo, stream_redis_url, topic_prefix,
                            dlq=f"kafka://{kafka_bootstrap}/{dlq_topic}?message.max.bytes=40000"), threading.Event())
    assert (report["events_out"], report["dead_lettered"]) == (20, 1)

    from tests.stream.test_kafka import read_topic
    [message] = read_topic(kafka_bootstrap, dlq_topic)
    letter = orjson.loads(message.value)
    assert letter["key"] == "huge" and letter["stage"] == "decode"
    assert letter["payload_truncated"] is True and letter["payload_bytes"] == len(huge)
    assert letter["payload_sha256"] == hashlib.sha256(huge).hexdigest()
    assert huge.decode().startswith(letter["payload"])
    assert DEAD_LETTER_PAYLOAD_BYTES - 3 <= len(letter["payload"].encode()) <= DEAD_LETTER_PAYLOAD_BYTES


def test_a_key_no_event_has_stops_the_lane_without_committing(model_repo: Path, stream_redis_url: str,
                                                                topic_prefix: str, client: redis.Redis,
                                                                tmp_path: Path) -> None:
    src = f"{topic_prefix}:events"
    xadd_events(stream_redis_url, src, fraud_events(300))
    proc = start_lane(model_repo / "fraud", stream_url(stream_redis_url, src), f"{topic_prefix}-g",
                      stream_url(stream_redis_url, f"{topic_prefix}:scores"), "--key", "txid",
                      "--dlq", stream_url(stream_redis_url, f"{topic_prefix}:dlq"), "--idle-exit", "5", cwd=tmp_path)
    code, _, stderr = finish(proc)
    assert code == 1, stderr[-3000:]
    assert "--max-dead-letter-ratio" in stderr and "txid" in stderr
    pending = client.xpending(src, f"{topic_prefix}-g")
    assert pending["pending"] == 300  # read, never acknowledged: a fixed --key scores them all
    assert client.xlen(f"{topic_prefix}:dlq") == 0 and client.xlen(f"{topic_prefix}:scores") == 0


class DownModel:
    """The real model behind a dependency that fails every call until ``up`` is set."""

    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        self.name, self.version, self.config = model.name, model.version, model.config
        self.up = threading.Event()
        self.failures = 0

    def score(self, inputs: Mapping[str, np.ndarray], chunk_rows: int) -> dict[str, np.ndarray]:
        if not self.up.is_set():
            self.failures += 1
            raise RuntimeError("CUDA error: device lost")
        return self.model.score(inputs, chunk_rows)


def test_a_model_outage_pauses_the_stream_instead_of_dead_lettering_it(model_repo: Path, stream_redis_url: str,
                                                                       topic_prefix: str, client: redis.Redis) -> None:
    from inferlane.core.inputs import RecordDecoder
    from inferlane.lanes.stream import open_dead_letters, open_source, open_stream_sink

    src, out, group = f"{topic_prefix}:events", f"{topic_prefix}:scores", f"{topic_prefix}-g"
    xadd_events(stream_redis_url, src, fraud_events(500))
    real = ModelVersion.open(model_repo / "fraud", None, 1)
    model = DownModel(real)
    sink = open_stream_sink(stream_url(stream_redis_url, out), key_field="id")
    dead = open_dead_letters(stream_url(stream_redis_url, f"{topic_prefix}:dlq"), group=group, model=real.name,
                             version=real.version)
    source = open_source(stream_url(stream_redis_url, src), group, consumer="c")
    settings = StreamSettings(max_batch=64, max_wait_ms=10, idle_exit_s=1.0, retry_backoff_s=0.05)
    runner = StreamRunner(model, RecordDecoder.create(real.config, "id"), source, sink, dead,  # type: ignore[arg-type]
                          settings)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(report=runner.run(threading.Event())), daemon=True)
    thread.start()
    try:
        # the breaker retries the first batch whole: nothing is dead-lettered or acknowledged meanwhile
        wait_until(lambda: model.failures >= 300, "the scorer retried the batch through the outage")
        assert runner.metrics.snapshot()["dead_lettered"] == 0
        assert client.xlen(out) == 0 if client.exists(out) else True
        model.up.set()
        thread.join(60)
    finally:
        model.up.set()
        for part in (source, sink, dead):
            part.close()
        real.close()
    assert result["report"]["events_out"] == 500 and result["report"]["dead_lettered"] == 0
    assert sorted(r["id"] for r in outputs(stream_redis_url, out)) == sorted(f"e{i}" for i in range(500))
    assert client.xpending(src, group)["pending"] == 0


def test_a_model_down_past_model_retry_s_stops_the_lane_committing_nothing(
        model_repo: Path, stream_redis_url: str, topic_prefix: str, client: redis.Redis) -> None:
    from inferlane.core.errors import RetriesExhausted
    from inferlane.core.inputs import RecordDecoder
    from inferlane.lanes.stream import open_dead_letters, open_source, open_stream_sink

    src, out, group = f"{topic_prefix}:events", f"{topic_prefix}:scores", f"{topic_prefix}-g"
    xadd_events(stream_redis_url, src, fraud_events(100))
    real = ModelVersion.open(model_repo / "fraud", None, 1)
    sink = open_stream_sink(stream_url(stream_redis_url, out), key_field="id")
    dead = open_dead_letters(stream_url(stream_redis_url, f"{topic_prefix}:dlq"), group=group, model=real.name,
                             version=real.version)
    source = open_source(stream_url(stream_redis_url, src), group, consumer="c")
    settings = StreamSettings(max_batch=100, max_wait_ms=10, retry_backoff_s=0.05, model_retry_s=0.5)
    runner = StreamRunner(DownModel(real), RecordDecoder.create(real.config, "id"), source, sink,  # type: ignore[arg-type]
                          dead, settings)
    try:
        with pytest.raises(RetriesExhausted, match="device lost"):
            runner.run(threading.Event())
    finally:
        for part in (source, sink, dead):
            part.close()
        real.close()
    assert client.xpending(src, group)["pending"] == 100
    assert not client.exists(out) and not client.exists(f"{topic_prefix}:dlq")


def test_an_event_delivered_too_often_is_dead_lettered_unscored(model_repo: Path, stream_redis_url: str,
                                                                 topic_prefix: str, client: redis.Redis) -> None:
    """Each crash of the lane left the first event pending; its delivery count says so."""
    src, group = f"{topic_prefix}:events", f"{topic_prefix}-g"
    xadd_events(stream_redis_url, src, fraud_events(50))
    client.xgroup_create(src, group, id="0")
    client.xreadgroup(group, "c", {src: ">"}, count=1)   # delivery 1 ... then the crashes
    for _ in range(4):
        client.xreadgroup(group, "c", {src: "0"}, count=1)
    report = run_stream(job(model_repo, stream_redis_url, topic_prefix, consumer="c",
                            settings=StreamSettings(max_batch=64, max_wait_ms=10, idle_exit_s=1.0, max_deliveries=5)),
                        threading.Event())
    assert (report["events_out"], report["dead_lettered"]) == (49, 1)
    [letter] = outputs(stream_redis_url, f"{topic_prefix}:dlq")
    assert letter["stage"] == "deliveries" and letter["key"] == "e0" and "delivered 6 times" in letter["error"]
    assert client.xpending(src, group)["pending"] == 0


def test_secrets_in_urls_never_reach_the_error_message(model_repo: Path, tmp_path: Path) -> None:
    proc = start_lane(model_repo / "fraud", "redis://:hunter2@127.0.0.1:1/0/events", "g",
                      "kafka://127.0.0.1:1/?sasl.password=hunter2&sasl.username=app", cwd=tmp_path)
    code, out, err = finish(proc)
    assert code == 2 and "hunter2" not in out + err
    assert "sasl.password=***" in err


def test_a_redis_restart_under_load_loses_nothing_and_the_lane_recovers(model_repo: Path, tmp_path: Path,
                                                                        topic_prefix: str) -> None:
    n = 3000
    server = RestartableRedis(tmp_path / "redis")  # the same port after the restart: the lane reconnects
    server.start()
    url, port = server.url, server.port
    src, out = f"{topic_prefix}:events", f"{topic_prefix}:scores"
    events = fraud_events(n)
    xadd_events(url, src, events[: n // 2])
    lane = start_lane(model_repo / "fraud", stream_url(url, src), f"{topic_prefix}-g", stream_url(url, out),
                      "--dlq", stream_url(url, f"{topic_prefix}:dlq"), "--consumer", "c", "--max-batch", "64",
                      "--idle-exit", "3", "--json", cwd=tmp_path)
    try:
        c = redis.Redis(port=port)
        wait_until(lambda: c.exists(out) and c.xlen(out) > 100, "the lane writes outputs", 60)
        c.close()
        server.stop()  # SIGTERM: redis-server flushes its append-only file and exits
        server.start()
        xadd_events(url, src, events[n // 2:])
        code, _, stderr = finish(lane, 90)
        assert code == 0, stderr[-3000:]
        c = redis.Redis(port=port)
        records = outputs(url, out)
        missing = sorted({e["id"] for e in events} - {r["id"] for r in records}, key=lambda i: int(i[1:]))
        assert not missing, (f"lost {len(missing)}: {missing[:20]}; pending {c.xpending(src, f'{topic_prefix}-g')}; "
                             f"dead letters {c.xlen(f'{topic_prefix}:dlq') if c.exists(f'{topic_prefix}:dlq') else 0}"
                             f"\n{stderr[-4000:]}")
        seen: dict[str, Any] = {}
        for r in records:  # a re-delivered event may be written twice, always with the same prediction
            assert seen.setdefault(r["id"], r["probabilities"]) == r["probabilities"]
        assert len(records) - n <= 4 * 64
        assert c.xpending(src, f"{topic_prefix}-g")["pending"] == 0
        assert not c.exists(f"{topic_prefix}:dlq")
        c.close()
    finally:
        lane.kill()
        lane.communicate()
        server.stop()

