"""End to end through a real Kafka-protocol broker (Tansu): ``inferlane stream run`` as a subprocess
consumes a topic in a consumer group, writes outputs keyed ``<id>@<version>`` to another topic and
dead letters to a third, and commits offsets only after the outputs were acknowledged.

Topics are read back by partition assignment, without a consumer group: that costs no group join.
Tests never touch the lane's internals; they judge it by what is in the topics and the group's
committed offsets.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from inferlane.testing import create_topics, exited, free_port, redis_server, wait_until
from tests.conftest import Server
from tests.stream.support import Record, fraud_events, lane_command, produce_kafka

pytestmark = pytest.mark.e2e  # every test here starts the CLI or a server as a subprocess

PREDICTION_FIELDS = ("id", "model_name", "model_version", "label", "probabilities", "event_time_ms")


# -- helpers -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0, idle_s: float = 0.5,
               at_least: int = 0) -> list[Message]:
    """Every message in ``topic``, partition by partition, without a consumer group: read past each
    partition's high watermark and to ``at_least`` messages, then until ``idle_s`` passed with nothing
    new. (Tansu reports the base offset of a partition's last record batch, plus one, as its high
    watermark: a lower bound, so on a busy machine the last batch can come after ``idle_s``; a test
    that knows how many were acknowledged says so.)"""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        below: dict[int, int] = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                below[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while below or len(out) < at_least or time.monotonic() - last < idle_s:
            assert time.monotonic() < deadline, f"reading {topic} timed out; partitions not read to the end: {below}"
            for m in consumer.consume(1000, 0.1):
                assert m.error() is None, m.error()
                p, off, value = m.partition(), m.offset(), m.value()
                assert p is not None and off is not None and value is not None
                out.append(Message(p, off, m.key(), value))
                last = time.monotonic()
                if p in below and off + 1 >= below[p]:
                    del below[p]
        return out
    finally:
        consumer.close()


class Committed:
    """The committed offsets of a group, per partition, through one long-lived client."""

    def __init__(self, bootstrap: str, topic: str, group: str, partitions: int = 4) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self._parts = [TopicPartition(topic, p) for p in range(partitions)]

    def offsets(self) -> dict[int, int]:
        return {tp.partition: max(tp.offset, 0) for tp in self._consumer.committed(self._parts, timeout=10)}

    def total(self) -> int:
        return sum(self.offsets().values())

    def close(self) -> None:
        self._consumer.close()


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    committed = Committed(bootstrap, topic, group)
    try:
        return committed.offsets()
    finally:
        committed.close()


class Lane:
    """``inferlane stream run`` as a subprocess, its stderr (the log) in a file that tests can watch."""

    def __init__(self, log: Path, model: Path, source: str, group: str, sink: str, *args: str) -> None:
        self.log_path = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(lane_command(model, source, group, sink, *args), stdout=subprocess.PIPE,
                                         stderr=err, text=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        """The end of the lane's own log, without librdkafka's connection chatter."""
        return "\n".join(line for line in self.log().splitlines() if not line.startswith("%"))[-4000:]

    def assignment(self) -> set[str]:
        """The partitions this lane holds now, from its log (eager rebalancing: revoke takes all)."""
        held: set[str] = set()
        for line in self.log().splitlines():
            if "partitions assigned: " in line:
                names = line.split("partitions assigned: ", 1)[1].strip()
                held = set() if names == "none" else set(names.split(", "))
            elif "partitions revoked: " in line or "partitions lost: " in line:
                held = set()
        return held

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 90.0) -> tuple[int, dict[str, Any] | None]:
        """Wait for the exit; (exit code, the --json report when there is one)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"the lane did not exit in {timeout} s; log:\n{self.tail()}") from None
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return self.proc.returncode, (orjson.loads(lines[-1]) if lines else None)

    def kill(self) -> None:
        """Make sure the process is gone (a no-op after :meth:`finish`)."""
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.communicate()


def by_key(messages: list[Message]) -> dict[bytes, list[Record]]:
    out: dict[bytes, list[Record]] = defaultdict(list)
    for m in messages:
        assert m.key is not None
        out[m.key].append(orjson.loads(m.value))
    return out


def expected_keys(events: list[Record], version: str = "1") -> set[bytes]:
    return {f"{e['id']}@{version}".encode() for e in events}


def event_ids_by_offset(bootstrap: str, topic: str) -> dict[tuple[int, int], str]:
    """(partition, offset) → event id of every event in the source topic."""
    return {(m.partition, m.offset): orjson.loads(m.value)["id"] for m in read_topic(bootstrap, topic)}


@dataclass
class Topics:
    bootstrap: str
    prefix: str

    def __post_init__(self) -> None:
        self.source, self.sink, self.dlq = (f"{self.prefix}-{n}" for n in ("events", "scores", "dlq"))
        self.group = f"{self.prefix}-scorer"
        create_topics(self.bootstrap, [self.source, self.sink, self.dlq], partitions=4)

    def url(self, topic: str, conf: dict[str, object] | None = None) -> str:
        """``kafka://`` URL of ``topic``; ``conf``: librdkafka settings for the query string."""
        query = "&".join(f"{k}={v}" for k, v in (conf or {}).items())
        return f"kafka://{self.bootstrap}/{topic}" + (f"?{query}" if query else "")

    def lane(self, log: Path, model: Path, *args: str, source_conf: dict[str, object] | None = None) -> Lane:
        """The lane from the source topic to the sink topic, dead letters to the DLQ topic, in the group."""
        return Lane(log, model, self.url(self.source, source_conf), self.group, self.url(self.sink),
                    "--dlq", self.url(self.dlq), *args)


# -- one lane run over 3000 events, shared by the count and the online-equality tests --------------

@dataclass
class Drained:
    events: list[Record]
    code: int
    report: dict[str, Any] | None
    outputs: dict[bytes, list[Record]]
    dead: list[Message]
    committed: int
    log: str


@pytest.fixture(scope="module")
def drained(kafka_bootstrap: str, model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drained]:
    topics = Topics(kafka_bootstrap, f"m{uuid.uuid4().hex[:8]}")
    events = fraud_events(3000)
    produce_kafka(kafka_bootstrap, topics.source, events)
    lane = topics.lane(tmp_path_factory.mktemp("drained") / "lane.log", model_repo / "fraud",
                       "--idle-exit", "2", "--json")
    code, report = lane.finish()
    yield Drained(events, code, report, by_key(read_topic(kafka_bootstrap, topics.sink, at_least=len(events))),
                  read_topic(kafka_bootstrap, topics.dlq),
                  sum(committed_offsets(kafka_bootstrap, topics.source, topics.group).values()), lane.log())


def test_idle_exit_scores_every_event_exactly_once(drained: Drained) -> None:
    assert drained.code == 0, drained.log[-4000:]
    assert set(drained.outputs) == expected_keys(drained.events)
    assert all(len(recs) == 1 for recs in drained.outputs.values())
    assert drained.dead == []
    assert drained.committed == 3000
    report = drained.report
    assert report is not None
    assert (report["events_in"], report["events_out"], report["dead_lettered"]) == (3000, 3000, 0)
    assert report["model"] == "fraud" and report["model_version"] == "1"
    assert report["batches"] >= 3000 / 512
    for key, (rec,) in drained.outputs.items():
        assert key == f"{rec['id']}@1".encode()
        assert rec["model_name"] == "fraud" and rec["model_version"] == "1"
        assert rec["label"] in (0, 1)
        assert len(rec["probabilities"]) == 2 and abs(sum(rec["probabilities"]) - 1) < 1e-5
        assert 0 < rec["event_time_ms"] <= rec["scored_at_ms"]


def test_outputs_equal_the_online_answer(drained: Drained, server: Server) -> None:
    rng = np.random.default_rng(7)
    sample = [drained.events[i] for i in rng.choice(len(drained.events), size=20, replace=False)]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for event in sample:
            (rec,) = drained.outputs[f"{event['id']}@1".encode()]
            body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": event["features"]}]}
            r = client.post("/v2/models/fraud/infer", content=orjson.dumps(body))
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["model_version"] == rec["model_version"]
            online = {o["name"]: o["data"] for o in answer["outputs"]}
            assert online["label"] == [rec["label"]]
            np.testing.assert_allclose(online["probabilities"], rec["probabilities"], rtol=0, atol=1e-6)


# -- dead letters --------------------------------------------------------------------------------

def test_poison_events_go_to_the_dead_letter_topic(kafka_bootstrap: str, topic_prefix: str, model_repo: Path,
                                                   tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap, topic_prefix)
    good = fraud_events(400)
    features = good[0]["features"]
    poison: dict[bytes, tuple[str, str]] = {  # payload → (a piece of the error, what it is)
        b"not json {": ("not JSON", "not JSON"),
        orjson.dumps({"id": "short", "features": features[:29]}): ("shape [29] does not match [30]", "29 features"),
        orjson.dumps({"features": features}): ("key field 'id' is missing", "no id"),
        orjson.dumps([1, 2, 3]): ("not an object", "an array"),
        orjson.dumps({"id": "null", "features": None}): ("input 'features'", "null features"),
        orjson.dumps({"id": "hole", "features": [None, *features[1:]]}): ("null where FP32 numbers belong",
                                                                          "a null feature"),
        orjson.dumps({"id": "nofeatures", "amount": 3}): ("missing field 'features'", "no features"),
        b"\xff\xfe binary": ("not JSON", "not UTF-8"),
    }
    mixed: list[Record | bytes] = list(good)
    for i, payload in enumerate(poison):  # spread over the stream
        mixed.insert(30 + i * 50, payload)
    produce_kafka(kafka_bootstrap, topics.source, mixed)

    lane = topics.lane(tmp_path / "lane.log", model_repo / "fraud", "--idle-exit", "2", "--json")
    code, report = lane.finish()
    assert code == 0, lane.tail()
    assert report is not None
    assert (report["events_in"], report["events_out"], report["dead_lettered"]) == (408, 400, 8)

    outputs = by_key(read_topic(kafka_bootstrap, topics.sink))
    assert set(outputs) == expected_keys(good)
    assert all(len(recs) == 1 for recs in outputs.values())

    letters = [orjson.loads(m.value) for m in read_topic(kafka_bootstrap, topics.dlq)]
    assert len(letters) == len(poison)
    found = {(letter["payload"].encode() if "payload" in letter else base64.b64decode(letter["payload_base64"])): letter
             for letter in letters}
    assert set(found) == set(poison)
    where = {m.value: (f"{topics.source}/{m.partition}", m.offset) for m in read_topic(kafka_bootstrap, topics.source)}
    for payload, (error, what) in poison.items():
        letter = found[payload]
        assert error in letter["error"], (what, letter)
        assert letter["stage"] == "decode", what
        assert ("payload_base64" in letter) == (what == "not UTF-8"), letter
        assert (letter["source"], letter["offset"]) == where[payload], what
        assert letter["model_name"] == "fraud" and letter["model_version"] == "1"
        assert letter["event_time_ms"] > 0
    assert sum(committed_offsets(kafka_bootstrap, topics.source, topics.group).values()) == 408


# -- crashes and stops ---------------------------------------------------------------------------

def outputs_below(committed: dict[int, int], ids: dict[tuple[int, int], str]) -> set[bytes]:
    """Output keys of the events at offsets below the committed offset of their partition."""
    return {f"{ident}@1".encode() for (p, off), ident in ids.items() if off < committed.get(p, 0)}


def test_sigkill_mid_stream_loses_nothing_and_rescoring_agrees(kafka_bootstrap: str, topic_prefix: str,
                                                               model_repo: Path, tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap, topic_prefix)
    events = fraud_events(20_000)
    produce_kafka(kafka_bootstrap, topics.source, events)
    ids = event_ids_by_offset(kafka_bootstrap, topics.source)
    assert len(ids) == 20_000
    # The killed member stays in the group until its session times out: keep that short.
    conf: dict[str, object] = {"session.timeout.ms": 4000, "heartbeat.interval.ms": 1000}
    committed = Committed(kafka_bootstrap, topics.source, topics.group)
    try:
        lane = topics.lane(tmp_path / "first.log", model_repo / "fraud", "--max-batch", "64", source_conf=conf)
        try:
            wait_until(lambda: committed.total() > 0, "a first commit", abort_if=[exited(lane.proc, lane.tail)])
        finally:
            lane.kill()
        assert lane.proc.returncode == -signal.SIGKILL
        at_kill = committed.offsets()
    finally:
        committed.close()
    assert 0 < sum(at_kill.values()) < 20_000, "the lane was not killed mid-stream"

    # Commits only follow acknowledged writes: everything committed has its output already.
    first = by_key(read_topic(kafka_bootstrap, topics.sink))
    assert outputs_below(at_kill, ids) <= set(first)

    lane = topics.lane(tmp_path / "restart.log", model_repo / "fraud", "--idle-exit", "2", "--json",
                       source_conf=conf)
    code, report = lane.finish()
    assert code == 0, lane.tail()
    assert report is not None
    assert report["events_in"] == report["events_out"] == 20_000 - sum(at_kill.values())
    assert report["dead_lettered"] == 0

    outputs = by_key(read_topic(kafka_bootstrap, topics.sink))
    assert set(outputs) == expected_keys(events)
    assert sum(map(len, outputs.values())) == 20_000 + (sum(map(len, first.values())) - sum(at_kill.values()))
    for key, recs in outputs.items():  # a re-delivered event may be scored twice, never differently
        assert len({tuple(orjson.dumps(r[f]) for f in PREDICTION_FIELDS) for r in recs}) == 1, (key, recs)
    assert committed_offsets(kafka_bootstrap, topics.source, topics.group) == {
        p: sum(1 for (q, _) in ids if q == p) for p in range(4)}


def test_sigterm_finishes_in_flight_batches_and_commits_what_it_wrote(
        kafka_bootstrap: str, topic_prefix: str, model_repo: Path, tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap, topic_prefix)
    events = fraud_events(20_000)
    produce_kafka(kafka_bootstrap, topics.source, events)
    ids = event_ids_by_offset(kafka_bootstrap, topics.source)
    assert len(ids) == 20_000
    committed = Committed(kafka_bootstrap, topics.source, topics.group)
    try:
        lane = topics.lane(tmp_path / "first.log", model_repo / "fraud", "--max-batch", "64", "--json")
        try:
            wait_until(lambda: committed.total() > 0, "a first commit", abort_if=[exited(lane.proc, lane.tail)])
            lane.signal(signal.SIGTERM)
            code, report = lane.finish()
        finally:
            lane.kill()
        assert code == 0, lane.tail()
        at_stop = committed.offsets()
    finally:
        committed.close()
    done = sum(at_stop.values())
    assert 0 < done < 20_000, "the lane was not stopped mid-stream"
    # Everything consumed was scored, written and committed before the exit; nothing beyond.
    assert report is not None
    assert report["events_in"] == report["events_out"] == done
    first = by_key(read_topic(kafka_bootstrap, topics.sink))
    assert set(first) == outputs_below(at_stop, ids)
    assert all(len(recs) == 1 for recs in first.values())

    lane = topics.lane(tmp_path / "restart.log", model_repo / "fraud", "--idle-exit", "2", "--json")
    code, report = lane.finish()
    assert code == 0, lane.tail()
    assert report is not None
    assert report["events_in"] == report["events_out"] == 20_000 - done
    outputs = by_key(read_topic(kafka_bootstrap, topics.sink))
    assert set(outputs) == expected_keys(events)
    assert all(len(recs) == 1 for recs in outputs.values())  # a clean stop re-delivers nothing


def test_a_sink_that_refuses_a_record_for_good_stops_the_lane_at_once_committing_nothing(
        kafka_bootstrap: str, topic_prefix: str, model_repo: Path, tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap, topic_prefix)
    # Outputs of events with 1200-character ids are over the sink producer's message.max.bytes: a
    # permanent error (core/retry.py), so the lane stops with it instead of retrying.
    produce_kafka(kafka_bootstrap, topics.source, fraud_events(100, prefix="x" * 1200))
    lane = Lane(tmp_path / "lane.log", model_repo / "fraud", topics.url(topics.source), topics.group,
                topics.url(topics.sink, {"message.max.bytes": 1000}), "--dlq", topics.url(topics.dlq), "--json")
    try:
        code, report = lane.finish()
    finally:
        lane.kill()
    assert code == 1, lane.tail()
    assert report is None
    assert "stream stopped: SinkError: Kafka" in lane.log(), lane.tail()
    assert "retry 1" not in lane.log()
    assert read_topic(kafka_bootstrap, topics.sink) == []
    # the unwritten batch stays uncommitted, to be delivered again
    assert committed_offsets(kafka_bootstrap, topics.source, topics.group) == dict.fromkeys(range(4), 0)


def lane_with_a_redis_sink_that_goes_away(topics: Topics, model_repo: Path, tmp_path: Path, started: str,
                                           *args: str) -> Lane:
    """A lane from the source topic to a Redis stream on a redis-server that is stopped once the lane
    logged ``started``: every write after that fails with a refused connection (transient)."""
    with redis_server(tmp_path) as sink_url:
        lane = Lane(tmp_path / "lane.log", model_repo / "fraud", topics.url(topics.source), topics.group,
                    f"{sink_url}/{topics.prefix}:scores", "--dlq", topics.url(topics.dlq), "--json", *args)
        try:
            wait_until(lambda: started in lane.log(), f"the lane logged {started!r}",
                       abort_if=[exited(lane.proc, lane.tail)])
        except BaseException:
            lane.kill()
            raise
    return lane


def test_sigterm_while_a_down_sink_is_retried_commits_nothing_and_waits_once(
        kafka_bootstrap: str, topic_prefix: str, model_repo: Path, tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap, topic_prefix)
    lane = lane_with_a_redis_sink_that_goes_away(topics, model_repo, tmp_path, "partitions assigned",
                                                 "--shutdown-timeout", "3")
    # The sink's Redis is gone (connection refused: transient): the lane retries the write until stopped.
    try:
        produce_kafka(kafka_bootstrap, topics.source, fraud_events(100))
        wait_until(lambda: "retry 2 (giving up" in lane.log(), "a retried write",
                   abort_if=[exited(lane.proc, lane.tail)])
        lane.signal(signal.SIGTERM)
        code, report = lane.finish()
    finally:
        lane.kill()
    assert code == 0, lane.tail()
    assert report is not None
    assert (report["events_in"], report["events_out"]) == (100, 0)
    assert "write to Redis 127.0.0.1:" in lane.log()
    assert committed_offsets(kafka_bootstrap, topics.source, topics.group) == dict.fromkeys(range(4), 0)
    # it got --shutdown-timeout once: leaving the group on the way out does not wait for it again
    assert lane.log().count("did not finish within 3 s") == 1, lane.tail()


def test_a_sink_down_past_the_retry_budget_stops_the_lane_with_the_error(
        kafka_bootstrap: str, topic_prefix: str, model_repo: Path, tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap, topic_prefix)
    produce_kafka(kafka_bootstrap, topics.source, fraud_events(50))
    lane = lane_with_a_redis_sink_that_goes_away(topics, model_repo, tmp_path, f"stream {topics.group}",
                                                 "--sink-retry-s", "2")
    try:
        code, report = lane.finish()
    finally:
        lane.kill()
    assert code == 1, lane.tail()
    assert report is None
    line = next(x for x in lane.log().splitlines() if x.startswith("stream stopped: "))
    # (redis-py's own reconnect attempts inside one write can use the whole 2 s: "failed 1 time")
    assert "RetriesExhausted: write to Redis 127.0.0.1:" in line and "; last error: SinkError" in line, line
    assert committed_offsets(kafka_bootstrap, topics.source, topics.group) == dict.fromkeys(range(4), 0)


# -- metrics and scale-out -----------------------------------------------------------------------

def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → {sorted labels: value} from the lane's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def series(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    want = tuple(sorted({"model": "fraud", "version": "1", "lane": "stream", **labels}.items()))
    assert want in metrics.get(name, {}), f"no {name}{labels}; have {sorted(metrics.get(name, {}))}"
    return metrics[name][want]


def test_metrics_while_running(kafka_bootstrap: str, topic_prefix: str, model_repo: Path, tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap, topic_prefix)
    events: list[Record | bytes] = [*fraud_events(1000), b"not json"]
    produce_kafka(kafka_bootstrap, topics.source, events)
    port = free_port()
    lane = topics.lane(tmp_path / "lane.log", model_repo / "fraud", "--metrics-port", str(port),
                       "--max-batch", "128")
    partitions = [f"{topics.source}/{p}" for p in range(4)]
    try:
        def caught_up() -> bool:
            try:
                m = scrape(port)
            except httpx.TransportError:  # not listening yet
                return False
            lag = m.get("inferlane_stream_consumer_lag", {})
            return (m.get("inferlane_stream_events_total", {}).get(
                        (("lane", "stream"), ("model", "fraud"), ("outcome", "out"), ("version", "1"))) == 1000
                    and len(lag) == 4 and not any(lag.values()))

        wait_until(caught_up, "the lane to score every event", abort_if=[exited(lane.proc, lane.tail)])
        m = scrape(port)
        assert series(m, "inferlane_stream_events_total", outcome="in") == 1001
        assert series(m, "inferlane_stream_events_total", outcome="out") == 1000
        assert series(m, "inferlane_stream_events_total", outcome="dead_lettered") == 1
        assert series(m, "inferlane_stream_sink_retries_total") == 0
        # every event was in one micro-batch of at most --max-batch events
        assert series(m, "inferlane_stream_batch_size_sum") == 1001
        batches = series(m, "inferlane_stream_batch_size_count")
        assert 1001 / 128 <= batches <= 1001
        assert series(m, "inferlane_stream_batch_size_bucket", le="128") == batches
        assert series(m, "inferlane_stream_batch_size_bucket", le="+Inf") == batches
        # per partition, nothing left to consume
        for part in partitions:
            assert series(m, "inferlane_stream_consumer_lag", partition=part) == 0
        # one latency observation per scored event, in cumulative buckets
        assert series(m, "inferlane_stream_e2e_latency_seconds_count") == 1000
        assert series(m, "inferlane_stream_e2e_latency_seconds_bucket", le="+Inf") == 1000
        assert series(m, "inferlane_stream_e2e_latency_seconds_sum") > 0
        buckets = sorted((float(dict(k)["le"]), v) for k, v in m["inferlane_stream_e2e_latency_seconds_bucket"].items())
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)
        assert series(m, "inferlane_stream_event_time_lag_seconds") >= 0
        assert series(m, "inferlane_stream_inflight_batches") == 0
        assert series(m, "inferlane_stream_paused") == 0
        lane.signal(signal.SIGTERM)
        code, _ = lane.finish()
    finally:
        lane.kill()
    assert code == 0, lane.tail()


def test_two_instances_share_the_partitions(kafka_bootstrap: str, topic_prefix: str, model_repo: Path,
                                            tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap, topic_prefix)
    lanes = [topics.lane(tmp_path / f"lane{i}.log", model_repo / "fraud", "--idle-exit", "4", "--json")
             for i in range(2)]
    try:
        # Events go in only once both instances hold partitions: produced before, the first instance
        # to join would score them all before the second one joined.
        everything = {f"{topics.source}/{p}" for p in range(4)}

        def shared() -> bool:
            a, b = (lane.assignment() for lane in lanes)
            return bool(a) and bool(b) and not a & b and a | b == everything

        wait_until(shared, "both instances to hold partitions", interval_s=0.02,
                   abort_if=[exited(lane.proc, lane.tail) for lane in lanes])
        events = fraud_events(4000)
        produce_kafka(kafka_bootstrap, topics.source, events)
        results = [lane.finish() for lane in lanes]
    finally:
        for lane in lanes:
            lane.kill()
    for (code, _), lane in zip(results, lanes, strict=True):
        assert code == 0, lane.tail()
    reports = [report for _, report in results]
    assert all(r is not None and r["events_out"] > 0 for r in reports), reports
    assert sum(r["events_out"] for r in reports if r is not None) == 4000
    outputs = by_key(read_topic(kafka_bootstrap, topics.sink, at_least=4000))
    assert set(outputs) == expected_keys(events)
    assert all(len(recs) == 1 for recs in outputs.values())
