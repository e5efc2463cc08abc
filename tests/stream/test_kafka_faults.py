"""The stream lane on Kafka under faults, against real Tansu brokers: an event that crashes the lane
on every delivery, and the broker restarted under load."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from pathlib import Path

import orjson

from inferlane.testing import create_topics, wait_until
from inferlane.testing.processes import stop_process
from inferlane.testing.services.kafka import kafka_ready, s3_storage_env, tansu_command, tansu_process
from inferlane.testing.services.s3 import s3_server
from tests.conftest import write_python_model
from tests.stream.support import (
    Record,
    finish,
    fraud_events,
    output_records,
    produce_kafka,
    read_redis_stream,
    start_lane,
    stream_url,
)
from tests.stream.test_kafka import committed_offsets, read_topic

CRASH_EXIT = 70
FAST_GROUP = "session.timeout.ms=2000&heartbeat.interval.ms=500"

CRASHING_MODEL = textwrap.dedent(f'''
    import os

    class Model:
        def predict(self, batch):
            x = batch["x"]
            if (x[:, 0] < 0).any():      # the poison event: the process dies like a native crash
                os._exit({CRASH_EXIT})
            return {{"y": x * 2.0}}
''')


def write_crashing_model(repo: Path) -> Path:
    return write_python_model(repo, "crashing", CRASHING_MODEL, {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "warmup": {"batch_sizes": [1]},
    })


def test_an_event_that_crashes_the_lane_is_dead_lettered_after_max_deliveries(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """Kafka keeps no delivery count: the lane's own, under --state-dir, ends the crash loop."""
    model = write_crashing_model(tmp_path / "models")
    src, out, group = f"{topic_prefix}-in", f"{topic_prefix}-out", f"{topic_prefix}-g"
    create_topics(kafka_bootstrap, [src, out], partitions=2)
    events: list[Record] = [{"id": f"e{i}", "x": [float(i), 1.0]} for i in range(60)]
    events[25]["x"] = [-1.0, 1.0]
    produce_kafka(kafka_bootstrap, src, events)
    dead = tmp_path / "dead.jsonl"
    codes = []
    for _ in range(5):  # a supervisor restarting the lane; 3 crashes, then the poison is dead-lettered
        # a short session: the next run waits that long for the group to drop the crashed member
        lane = start_lane(model, f"kafka://{kafka_bootstrap}/{src}?{FAST_GROUP}", group,
                          f"kafka://{kafka_bootstrap}/{out}",
                          "--dlq", str(dead), "--state-dir", str(tmp_path / "state"), "--max-deliveries", "3",
                          "--max-batch", "16", "--idle-exit", "1", cwd=tmp_path)
        code, _, stderr = finish(lane, 60)
        codes.append(code)
        if code != CRASH_EXIT:
            assert code == 0, stderr[-3000:]
            break
    assert codes == [CRASH_EXIT] * 3 + [0]
    [letter] = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert letter["key"] == "e25" and letter["stage"] == "deliveries"
    assert "delivered 4 times" in letter["error"] and "--max-deliveries 3" in letter["error"]
    outputs = {r.key: orjson.loads(r.value) for r in read_topic(kafka_bootstrap, out)}
    assert {k.decode() for k in outputs} == {f"e{i}@1" for i in range(60) if i != 25}  # every neighbour scored
    assert all(o["y"] == [2.0 * int(o["id"][1:]), 2.0] for o in outputs.values())
    assert sum(committed_offsets(kafka_bootstrap, src, group).values()) == 60


def test_a_broker_restart_under_load_loses_nothing_and_the_lane_recovers(model_repo: Path, tmp_path: Path,
                                                                         stream_redis_url: str,
                                                                         topic_prefix: str) -> None:
    """Tansu keeps its topics, offsets and groups in S3 (moto), so it can be restarted on its port.
    The outputs go to Redis: the test reads them back without the broker under test."""
    n = 2000
    events = fraud_events(n)
    src, out, group = f"{topic_prefix}-in", f"{topic_prefix}:scores", f"{topic_prefix}-g"
    (tmp_path / "tansu").mkdir()
    with s3_server(["tansu"]) as endpoint:
        env = s3_storage_env(endpoint)
        with tansu_process(tmp_path / "tansu", "s3://tansu/", env) as first:
            port, bootstrap = first.port, f"127.0.0.1:{first.port}"
            create_topics(bootstrap, [src], partitions=2)
            produce_kafka(bootstrap, src, events[: n // 2])
            lane = start_lane(model_repo / "fraud", f"kafka://{bootstrap}/{src}", group,
                              stream_url(stream_redis_url, out),
                              "--dlq", str(tmp_path / "dead.jsonl"), "--max-batch", "64", cwd=tmp_path)
            broker: subprocess.Popen[bytes] | None = None
            try:
                wait_until(lambda: sum(committed_offsets(bootstrap, src, group).values()) > 200,
                           "the lane commits its first batches", 60)
                first.proc.terminate()  # mid-stream: the lane is still scoring the first half
                first.proc.wait(15)
                with open(tmp_path / "tansu" / "restarted.log", "wb") as log:
                    broker = subprocess.Popen(tansu_command(port, "s3://tansu/"), stdout=log,
                                              stderr=subprocess.STDOUT, env={**os.environ, **env})
                wait_until(lambda: kafka_ready(port), "Tansu is back on its port", 30)
                produce_kafka(bootstrap, src, events[n // 2:])
                wait_until(lambda: sum(committed_offsets(bootstrap, src, group).values()) == n,
                           "the lane commits every event after the restart", 120)
                lane.send_signal(signal.SIGTERM)
                code, _, stderr = finish(lane, 60)
                assert code == 0, stderr[-3000:]
            finally:
                lane.kill()
                lane.communicate()
                if broker is not None:
                    stop_process(broker, timeout_s=5)
    records = output_records([fields[b"data"] for fields in read_redis_stream(stream_redis_url, out)])
    assert {r["id"] for r in records} == {e["id"] for e in events}  # nothing lost
    seen: dict[str, object] = {}
    for r in records:  # a re-delivered event may be written twice, always with the same prediction
        assert seen.setdefault(r["id"], r["probabilities"]) == r["probabilities"]
    assert len(records) - n <= 4 * 64 * 2
    assert not (tmp_path / "dead.jsonl").exists()
