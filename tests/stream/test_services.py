"""The stream-lane test services work: a Kafka round trip with committed offsets on Tansu, a Redis
Streams round trip, and idempotent topic creation."""

from __future__ import annotations

import time

import redis
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from inferlane.testing import create_topics


def test_kafka_produce_consume_commit(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}-events"
    create_topics(kafka_bootstrap, [topic], partitions=4)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(100):
        producer.produce(topic, key=str(i).encode(), value=f"message {i}".encode())
    assert producer.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{topic_prefix}-group",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "fetch.wait.max.ms": 50})
    try:
        consumer.subscribe([topic])
        values: set[bytes] = set()
        deadline = time.monotonic() + 60
        while len(values) < 100 and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=100, timeout=0.5):
                error = msg.error()
                assert error is None or error.code() == KafkaError._PARTITION_EOF, error
                if error is None:
                    value = msg.value()
                    assert value is not None
                    values.add(value)
        assert values == {f"message {i}".encode() for i in range(100)}
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
        assert all(tp.error is None for tp in committed)
        assert sum(tp.offset for tp in committed if tp.offset >= 0) == 100
    finally:
        consumer.close()


def test_redis_stream_round_trip(stream_redis_url: str, topic_prefix: str) -> None:
    stream, group = f"{topic_prefix}:requests", f"{topic_prefix}-workers"
    client = redis.Redis.from_url(stream_redis_url)
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
        ids = [client.xadd(stream, {"n": str(i)}) for i in range(3)]
        reply = client.xreadgroup(group, "worker-1", {stream: ">"}, count=10, block=1000)
        [(name, entries)] = reply
        assert name == stream.encode()
        assert [entry_id for entry_id, _ in entries] == ids
        assert [fields[b"n"] for _, fields in entries] == [b"0", b"1", b"2"]
        assert client.xack(stream, group, *ids) == 3
        assert client.xpending(stream, group)["pending"] == 0
    finally:
        client.close()


def test_create_topics_is_idempotent(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}-twice"
    create_topics(kafka_bootstrap, [topic], partitions=4)
    create_topics(kafka_bootstrap, [topic], partitions=4)
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(topic=topic, timeout=10)
    assert len(metadata.topics[topic].partitions) == 4
