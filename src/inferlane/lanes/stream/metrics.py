"""Prometheus series of the stream lane, labelled by model, version and lane="stream" like every
series (core/metrics.py), registered through ``Metrics.register``.

At 100k events/s, observing each event's latency through a prometheus_client Histogram would cost
more than scoring it, so this collector keeps its own counts in numpy and observes a whole batch
with one ``np.histogram``; Prometheus sees ordinary counters, gauges and histograms:

- ``inferlane_stream_events_total{outcome="in|out|dead_lettered"}``
- ``inferlane_stream_batch_size`` (histogram of events per micro-batch)
- ``inferlane_stream_consumer_lag{partition}`` (events not yet consumed, per partition or stream)
- ``inferlane_stream_event_time_lag_seconds`` (now minus the oldest event time of the last batch)
- ``inferlane_stream_e2e_latency_seconds`` (histogram: event time → output acknowledged)
- ``inferlane_stream_inflight_batches``, ``inferlane_stream_paused`` (backpressure)
- ``inferlane_stream_sink_retries_total``
- ``inferlane_stream_scored_events_total`` (labelled by the version that scored them: with a route
  followed, stable and canary)
- ``inferlane_traffic_weight`` (the share of events each version of the followed route gets, as the
  server's series of that name; lane="stream")

The other series keep the version the lane started with in their ``version`` label.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from inferlane.core.metrics import LABELS, Metrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class _Hist:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # last: above the top bound
        self.total = 0.0

    def observe(self, values: np.ndarray) -> None:
        idx = np.searchsorted(self.bounds, values, side="left")  # le semantics: v <= bound
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.total += float(values.sum())

    def family(self, name: str, doc: str, labels: list[str], values: list[str]) -> HistogramMetricFamily:
        f = HistogramMetricFamily(name, doc, labels=labels)
        cum = np.cumsum(self.counts)
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
        buckets.append(("+Inf", float(cum[-1])))
        f.add_metric(values, buckets, self.total)
        return f


def _le(b: float) -> str:
    return str(int(b)) if float(b).is_integer() and b >= 1 else repr(float(b))


class StreamMetrics:
    """Every update and every read holds the one lock: the consumer, scorer and writer threads and
    the Prometheus scrape thread all touch it."""

    def __init__(self, model: str, version: str, metrics: Metrics | None = None) -> None:
        self.labels = [model, version, "stream"]
        self._lock = threading.Lock()
        self.events = {"in": 0, "out": 0, "dead_lettered": 0}
        self.sink_retries = 0
        self.batch_size = _Hist(BATCH_BUCKETS)
        self.latency = _Hist(LATENCY_BUCKETS)
        self.lag: dict[str, int] = {}
        self.event_time_lag_s = 0.0
        self.inflight = 0
        self.paused = False
        self.scored: dict[str, int] = {}
        """Events written, by the version that scored them."""
        self.weights: dict[str, float] = {}
        """Each version's share of the events, by the route followed (empty when pinned)."""
        if metrics is not None:
            metrics.register(self)

    # Updates (collector and writer threads) --------------------------------------------------------
    def on_consumed(self, n: int) -> None:
        with self._lock:
            self.events["in"] += n

    def on_batch(self, size: int, oldest_event_ms: int, now_s: float) -> None:
        with self._lock:
            self.batch_size.observe(np.asarray([size], dtype=np.float64))
            self.event_time_lag_s = max(0.0, now_s - oldest_event_ms / 1000)

    def on_written(self, event_ms: np.ndarray, acked_s: float, dead: int,
                   by_version: dict[str, int] | None = None) -> None:
        with self._lock:
            self.events["out"] += len(event_ms)
            self.events["dead_lettered"] += dead
            if len(event_ms):
                self.latency.observe(np.maximum(acked_s - event_ms / 1000.0, 0.0))
            for version, n in (by_version or {}).items():
                self.scored[version] = self.scored.get(version, 0) + n

    def set_weights(self, weights: dict[str, float]) -> None:
        """The route followed now: each version's share of the events (versions that left it go to 0)."""
        with self._lock:
            self.weights = {**dict.fromkeys(self.weights, 0.0), **weights}

    def by_version(self) -> dict[str, int]:
        with self._lock:
            return {v: n for v, n in sorted(self.scored.items(), key=lambda item: int(item[0])) if n}

    def set_inflight(self, n: int) -> None:
        with self._lock:
            self.inflight = n

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self.paused = paused

    def on_sink_retry(self) -> None:
        with self._lock:
            self.sink_retries += 1

    def set_lag(self, lag: dict[str, int]) -> None:
        with self._lock:
            self.lag = dict(lag)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {**self.events, "lag": sum(self.lag.values()), "inflight": self.inflight,
                    "paused": self.paused, "event_time_lag_s": round(self.event_time_lag_s, 3)}

    # Prometheus --------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        labels = list(LABELS)
        with self._lock:
            ev = CounterMetricFamily("inferlane_stream_events", "Events by outcome",
                                     labels=[*labels, "outcome"])
            for outcome, n in self.events.items():
                ev.add_metric([*self.labels, outcome], n)
            yield ev
            scored = CounterMetricFamily("inferlane_stream_scored_events",
                                         "Events scored and written, by the version that scored them", labels=labels)
            for version, n in self.scored.items():
                scored.add_metric([self.labels[0], version, self.labels[2]], n)
            yield scored
            if self.weights:
                weight = GaugeMetricFamily("inferlane_traffic_weight", "Share of events routed to a version",
                                           labels=labels)
                for version, w in self.weights.items():
                    weight.add_metric([self.labels[0], version, self.labels[2]], w)
                yield weight
            retries = CounterMetricFamily("inferlane_stream_sink_retries", "Sink writes retried", labels=labels)
            retries.add_metric(self.labels, self.sink_retries)
            yield retries
            yield self.batch_size.family("inferlane_stream_batch_size", "Events per micro-batch", labels,
                                         self.labels)
            yield self.latency.family("inferlane_stream_e2e_latency_seconds",
                                      "Event time to output acknowledged by the sink", labels, self.labels)
            lag = GaugeMetricFamily("inferlane_stream_consumer_lag", "Events not yet consumed",
                                    labels=[*labels, "partition"])
            for part, n in sorted(self.lag.items()):
                lag.add_metric([*self.labels, part], n)
            yield lag
            for name, doc, value in (
                    ("inferlane_stream_event_time_lag_seconds", "Now minus the oldest event time of the last batch",
                     self.event_time_lag_s),
                    ("inferlane_stream_inflight_batches", "Micro-batches between consumer and sink", self.inflight),
                    ("inferlane_stream_paused", "1 while consumption is paused by backpressure", float(self.paused))):
                g = GaugeMetricFamily(name, doc, labels=labels)
                g.add_metric(self.labels, value)
                yield g
