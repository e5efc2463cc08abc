"""Kafka through a Tansu broker: topics, a backlog producer, a paced producer, read-back."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.stream.events import Events, Outputs, outputs_of
from inferlane.testing import LOOPBACK, create_topics, tansu_process


class Kafka:
    name = "kafka"

    def __init__(self, folder: Path, partitions: int) -> None:
        self.folder = folder
        self.partitions = partitions
        self.pid = 0
        self.bootstrap = ""

    @contextlib.contextmanager
    def running(self) -> Iterator[Kafka]:
        with tansu_process(self.folder) as broker:
            self.pid, self.bootstrap = broker.proc.pid, f"{LOOPBACK}:{broker.port}"
            yield self

    def url(self, name: str) -> str:
        return f"kafka://{self.bootstrap}/{name}"

    def create(self, names: list[str]) -> None:
        create_topics(self.bootstrap, names, self.partitions)

    def delete(self, names: list[str]) -> None:
        """Nothing: Tansu lists a deleted topic and keeps its memory (about 250 MB per million events)."""

    def _producer(self, linger_ms: int) -> Any:
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": linger_ms, "enable.idempotence": True,
                         "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
                         "log.connection.close": False})

    def produce(self, name: str, events: Events, start: int, stop_at: int, producer: Any = None) -> None:
        p = producer or self._producer(20)
        produce, payload = p.produce, events.payload
        for i in range(start, stop_at):
            while True:
                try:
                    produce(name, payload(i), b"%d" % i)
                    break
                except BufferError:
                    p.poll(0.05)
        p.poll(0)
        if producer is None:
            self._flush(p)

    @staticmethod
    def _flush(p: Any) -> None:
        left = p.flush(120)
        if left:
            raise RuntimeError(f"{left} events not delivered to the broker")

    @contextlib.contextmanager
    def paced_sender(self, name: str, events: Events) -> Iterator[Callable[[int, int], None]]:
        p = self._producer(1)  # the event's produce time is stamped at produce(): linger counts as latency
        yield lambda a, b: self.produce(name, events, a, b, p)
        self._flush(p)

    def read(self, name: str, expect: int) -> Outputs:
        """Every record of a topic. Tansu's high watermarks lag behind what a fetch returns, so
        this reads until ``expect`` records arrived and then 1 s passed with nothing new."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "stream-bench-reader",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 100, "log.connection.close": False})
        try:
            c.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in range(self.partitions)])
            values: list[bytes] = []
            last, deadline = time.monotonic(), time.monotonic() + 300
            while time.monotonic() < deadline:
                got = [v for m in c.consume(10_000, 0.2) if m.error() is None and (v := m.value()) is not None]
                if got:
                    values += got
                    last = time.monotonic()
                elif time.monotonic() - last > (1.0 if len(values) >= expect else 5.0):
                    break
            return outputs_of(values)
        finally:
            c.close()
