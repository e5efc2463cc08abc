"""Prometheus series (docs/architecture.md, "Metrics"), labelled by model, version and lane.

Each process (or app) owns one :class:`Metrics` with its own CollectorRegistry, so tests and
several apps in one process never collide. It holds the series every lane shares (requests,
latency, queue wait, forward time, batch sizes, queue depth) and is the one helper through which
a lane declares its own: ``metrics.counter(name, doc, ("outcome",))`` gets the ``model``,
``version`` and ``lane`` labels first, always. prometheus_client's metrics are thread-safe;
custom collectors registered with :meth:`Metrics.register` must take their own lock.

    metrics = Metrics()
    rows = metrics.counter("inferlane_batch_rows_total", "Rows by outcome", ("outcome",))
    rows.labels("fraud", "1", "batch", "written").inc(4096)
    metrics.serve(9100)                                    # or metrics.push("http://gateway:9091", "job")
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from inferlane.core.errors import ConfigError

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
_LABELS = ("model", "version", "lane")
LABELS = _LABELS
"""The labels every series starts with."""


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._declared: dict[str, Any] = {}
        self._lock = threading.Lock()
        r = self.registry
        self.requests = Counter("inferlane_requests_total", "Inference requests by outcome",
                                (*_LABELS, "status"), registry=r)
        self.request_latency = Histogram("inferlane_request_duration_seconds",
                                         "End-to-end request latency inside the server",
                                         _LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("inferlane_queue_wait_seconds",
                                    "Time a request waited in the batcher queue",
                                    _LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.forward = Histogram("inferlane_forward_seconds", "Forward pass time per batch",
                                 _LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("inferlane_batch_size", "Rows per executed batch",
                                    _LABELS, buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("inferlane_batch_requests", "Requests per executed batch",
                                        _LABELS, buckets=_BATCH_BUCKETS, registry=r)
        self._queues: list[Callable[[], Iterable[QueueState]]] = []
        r.register(_QueueCollector(self._queues))

    def batch_observer(self, model: str, version: str, lane: str = "online") -> BatchMetrics:
        return BatchMetrics(self, model, version, lane)

    def watch_queues(self, states: Callable[[], Iterable[QueueState]]) -> None:
        """Report ``inferlane_queue_depth`` and ``inferlane_inflight_batches`` from ``states()`` at
        each scrape: read when asked, they cost the hot path nothing."""
        self._queues.append(states)

    # -- the one helper lanes declare their series with ------------------------------------------

    def _declare(self, kind: type[Any], name: str, doc: str, labels: Sequence[str], **kwargs: Any) -> Any:
        """The series ``name``, declared once: asking again returns the same one (a lane may start
        several times in one process, e.g. scheduled batch runs)."""
        with self._lock:
            found = self._declared.get(name)
            if found is None:
                found = kind(name, doc, (*_LABELS, *labels), registry=self.registry, **kwargs)
                self._declared[name] = found
            elif not isinstance(found, kind):
                raise ValueError(f"metric {name} is already declared as a {type(found).__name__}")
            return found

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        c: Counter = self._declare(Counter, name, doc, labels)
        return c

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        g: Gauge = self._declare(Gauge, name, doc, labels)
        return g

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = _LATENCY_BUCKETS) -> Histogram:
        h: Histogram = self._declare(Histogram, name, doc, labels, buckets=tuple(buckets))
        return h

    def register(self, collector: Any) -> None:
        """A custom collector (it must label every series with model, version and lane)."""
        self.registry.register(collector)

    def serve(self, port: int, host: str = "127.0.0.1", flag: str = "--metrics-port") -> Callable[[], None]:
        """Serve ``/metrics`` on ``host:port`` from a background thread; returns the function that
        stops it. ConfigError (a usage error) when the port cannot be bound."""
        from prometheus_client import start_http_server

        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except (OSError, OverflowError) as e:  # taken, out of range, or not an address of this host
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ConfigError(f"{flag} {port} on {host}: {reason}") from None

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        return stop

    def push(self, gateway: str, job: str, grouping: dict[str, str] | None = None) -> None:
        """Push every series to a Prometheus Pushgateway (for jobs that end before a scrape)."""
        from prometheus_client import push_to_gateway

        push_to_gateway(gateway, job=job, registry=self.registry, grouping_key=grouping or {}, timeout=10)


class BatchMetrics:
    """Labelled children bound once per model version (the hot path does no label lookups)."""

    def __init__(self, m: Metrics, model: str, version: str, lane: str) -> None:
        labels = (model, version, lane)
        self._batch_size = m.batch_size.labels(*labels)
        self._batch_requests = m.batch_requests.labels(*labels)
        self._forward = m.forward.labels(*labels)
        self._queue_wait = m.queue_wait.labels(*labels)

    def on_batch(self, rows: int, requests: int, forward_s: float, queue_waits: list[float]) -> None:
        self._batch_size.observe(rows)
        self._batch_requests.observe(requests)
        self._forward.observe(forward_s)
        for w in queue_waits:
            self._queue_wait.observe(w)


@dataclass(frozen=True, slots=True)
class QueueState:
    """One model version's batcher, as a scrape sees it."""

    model: str
    version: str
    lane: str
    depth: int
    """Requests waiting (the autoscaling signal)."""
    inflight: int
    """Batches running a forward pass."""


class _QueueCollector:
    def __init__(self, sources: list[Callable[[], Iterable[QueueState]]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("inferlane_queue_depth", "Requests waiting in the batcher queue", labels=_LABELS)
        inflight = GaugeMetricFamily("inferlane_inflight_batches", "Batches running a forward pass", labels=_LABELS)
        for source in self._sources:
            for q in source():
                depth.add_metric([q.model, q.version, q.lane], q.depth)
                inflight.add_metric([q.model, q.version, q.lane], q.inflight)
        yield depth
        yield inflight
