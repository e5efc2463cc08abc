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
    metrics.stats_doc("fraud", "1")                        # the statistics extension's counters, every process
    generate_latest(metrics.scrape())                      # /metrics: every process, and the desired replicas

Several server processes (``serve --workers N``, ``serve --replicas MIN..MAX``) share their series
through prometheus_client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set before
prometheus_client is imported, every value lives in a memory-mapped file there and
:meth:`Metrics.scrape` merges the files of every process, so any process answers for the whole
server. Custom collectors cannot cross processes, so there the queue gauges are written by each
process (:meth:`Metrics.publish_queues`) instead of read at scrape time. One process alone keeps
today's in-memory values: the hot path pays for the files only when there are several processes.
docs/scaling.md defines the autoscaling signal, ``inferlane_desired_replicas``.
"""

from __future__ import annotations

import asyncio
import glob
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from inferlane.core.errors import ConfigError

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
_LABELS = ("model", "version", "lane")
LABELS = _LABELS
"""The labels every series starts with."""
DEFAULT_TARGET_QUEUE = 20
"""Pending requests one replica should carry (the seeds' example threshold)."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The folder the processes of one server share their series in; None: one process, in memory."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None,
                 target_queue: int = DEFAULT_TARGET_QUEUE) -> None:
        self.registry = registry or CollectorRegistry()
        self.target_queue = target_queue
        """Load (waiting requests plus running batches) one replica should carry: the divisor of
        ``inferlane_desired_replicas``."""
        self.multiprocess = multiprocess_dir()
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
        # One process: read at scrape time. Several: each writes its own (livesum) at an interval.
        self._live_queues: tuple[Gauge, Gauge] | None = None
        self._published_queues: set[tuple[str, str, str]] = set()
        if self.multiprocess is None:
            r.register(_QueueCollector(self._queues))
        else:
            self._live_queues = (
                Gauge(_DEPTH, _DEPTH_DOC, _LABELS, registry=r, multiprocess_mode="livesum"),
                Gauge(_INFLIGHT, _INFLIGHT_DOC, _LABELS, registry=r, multiprocess_mode="livesum"))
        self.replicas = Gauge("inferlane_replicas", "Server processes serving behind this port (warmed up, "
                              "listening)", registry=r, multiprocess_mode="livesum")
        self._stats: dict[tuple[str, str], ModelStats] = {}

    def batch_observer(self, model: str, version: str, lane: str = "online") -> BatchMetrics:
        return BatchMetrics(self, model, version, lane)

    def model_stats(self, model: str, version: str) -> ModelStats:
        """The statistics extension's counters of one model version (every lane's requests and
        batches), created at first use and kept, like the Prometheus series, across reloads."""
        with self._lock:
            stats = self._stats.get((model, version))
            if stats is None:
                stats = self._stats[(model, version)] = ModelStats()
            return stats

    def watch_queues(self, states: Callable[[], Iterable[QueueState]]) -> None:
        """Report ``inferlane_queue_depth`` and ``inferlane_inflight_batches`` from ``states()`` at
        each scrape: read when asked, they cost the hot path nothing (several processes: written
        by :meth:`publish_queues`)."""
        self._queues.append(states)

    def publish_queues_once(self) -> None:
        """Write this process's queue states into the shared (livesum) gauges, and its statistics
        extension counters into its file there; a queue gone since the last call goes to zero.
        Nothing to do in one process."""
        if self._live_queues is None:
            return
        self._publish_stats()
        depth, inflight = self._live_queues
        seen: set[tuple[str, str, str]] = set()
        for source in self._queues:
            for q in source():
                labels = (q.model, q.version, q.lane)
                seen.add(labels)
                depth.labels(*labels).set(q.depth)
                inflight.labels(*labels).set(q.inflight)
        for labels in self._published_queues - seen:
            depth.labels(*labels).set(0)
            inflight.labels(*labels).set(0)
        self._published_queues = seen

    async def publish_queues(self, interval_s: float = 0.25) -> None:
        """Several processes only: :meth:`publish_queues_once` every ``interval_s`` until cancelled.
        NOTE: sampled on purpose; writing the shared file on every enqueue would put it on the hot
        path, and a scaler reading every few seconds needs no fresher value."""
        if self._live_queues is None:
            return
        while True:
            self.publish_queues_once()
            await asyncio.sleep(interval_s)

    def scrape(self) -> _Scrape:
        """What ``/metrics`` answers: this process's series (every process's, merged, in multiprocess
        mode) and ``inferlane_desired_replicas`` computed from them."""
        if self.multiprocess is None:
            return _Scrape(self.registry, self.target_queue)
        self.publish_queues_once()  # this process's part is exact; the others' as of their last write
        reap_dead_processes(self.multiprocess)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, self.multiprocess)  # type: ignore[no-untyped-call]
        return _Scrape(merged, self.target_queue)

    def stats_doc(self, model: str, version: str) -> dict[str, object]:
        """The statistics extension's counters of one version (``ModelStats.doc``) for the whole
        server: several processes add up, each as of its last publication (this one: now)."""
        if self.multiprocess is None:
            return self.model_stats(model, version).doc()
        self._publish_stats()
        name = _stats_name(model, version)
        docs = []
        for path in glob.glob(os.path.join(self.multiprocess, "stats_*.json")):
            try:
                with open(path, "rb") as f:
                    found = orjson.loads(f.read()).get(name)
            except (OSError, orjson.JSONDecodeError, AttributeError):
                continue  # a process's file being replaced, or not ours: skip it this time
            if isinstance(found, dict):
                docs.append(found)
        return merge_stats_docs(docs)

    def _publish_stats(self) -> None:
        """This process's statistics counters into ``stats_<pid>.json`` in the shared folder (written
        whole, then renamed: readers never see half a file). The files of exited processes stay:
        their work still counts, as their Prometheus counters do."""
        assert self.multiprocess is not None
        with self._lock:
            stats = list(self._stats.items())
        doc = {_stats_name(m, v): s.doc() for (m, v), s in stats}
        path = os.path.join(self.multiprocess, f"stats_{os.getpid()}.json")
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(orjson.dumps(doc))
            os.replace(tmp, path)
        except OSError:  # a full or vanished folder costs the statistics, never a request
            pass

    def close(self) -> None:
        """At process exit: publish this process's statistics one last time and drop its live
        gauges from the shared files."""
        if self.multiprocess is not None:
            self._publish_stats()
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess)  # type: ignore[no-untyped-call]

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
        """Several processes: the most recently written live process's value is the server's (the
        lanes' gauges report shared state: a store's backlog, a route's weight)."""
        g: Gauge = self._declare(Gauge, name, doc, labels, multiprocess_mode="livemostrecent")
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
        self._stats = m.model_stats(model, version)
        self._metrics, self._labels = m, labels

    def on_bucket(self, length: int, rows: int) -> None:
        """A text model's forward pass at padded length ``length`` (core/text/stage.py)."""
        m = self._metrics
        m.counter("inferlane_text_batches_total", "Forward passes of a text model by padded-length bucket",
                  ("bucket",)).labels(*self._labels, str(length)).inc()
        m.counter("inferlane_text_rows_total", "Texts run by a text model by padded-length bucket",
                  ("bucket",)).labels(*self._labels, str(length)).inc(rows)

    def on_batch(self, rows: int, requests: int, forward_s: float, queue_waits: list[float]) -> None:
        self._batch_size.observe(rows)
        self._batch_requests.observe(requests)
        self._forward.observe(forward_s)
        for w in queue_waits:
            self._queue_wait.observe(w)
        self._stats.on_batch(rows, requests, forward_s, queue_waits)


_NS = 1_000_000_000


class Duration:
    """A cumulative count and its total time in nanoseconds (Triton's ``StatisticDuration``)."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, count: int, seconds: float) -> None:
        self.count += count
        self.ns += int(seconds * _NS)

    def doc(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """The statistics extension's counters of one model version, in Triton's shape.

        stats = metrics.model_stats("fraud", "1")
        stats.doc()   # {"inference_count": ..., "execution_count": ..., "inference_stats": {...}, "batch_stats": [...]}

    Fed from the two places that see the work: the batcher's observer (:class:`BatchMetrics`: forward
    passes, queue waits) and the lanes' outcome of each request (:meth:`on_request`). ``queue`` and
    ``compute_infer`` count requests: a batch of 8 requests adds 8 and its forward time 8 times, as
    Triton counts. Input and output copies are part of the forward pass here, so ``compute_input`` and
    ``compute_output`` stay zero, and so do the cache counters (no response cache). Only the event
    loop updates them (the batcher answers on it), so they need no lock.
    """

    def __init__(self) -> None:
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_infer = Duration()
        self.inference_count = 0
        """Rows answered: a request of 64 rows counts 64."""
        self.execution_count = 0
        """Forward passes run."""
        self.last_inference_ms = 0
        """Wall-clock milliseconds of the last answered request (0: none yet)."""
        self._batches: dict[int, Duration] = {}
        """Forward passes and their time, by rows in the batch."""

    def on_batch(self, rows: int, requests: int, forward_s: float, queue_waits: list[float]) -> None:
        self.execution_count += 1
        self.queue.add(len(queue_waits), sum(queue_waits))
        self.compute_infer.add(requests, forward_s * requests)
        per_size = self._batches.get(rows)
        if per_size is None:
            per_size = self._batches[rows] = Duration()
        per_size.add(1, forward_s)

    def on_request(self, ok: bool, seconds: float, rows: int) -> None:
        """One request's outcome: answered (``rows`` rows, in ``seconds`` inside the server) or failed."""
        if ok:
            self.success.add(1, seconds)
            self.inference_count += rows
            self.last_inference_ms = int(time.time() * 1000)
        else:
            self.fail.add(1, seconds)

    def doc(self) -> dict[str, object]:
        """Triton's ``ModelStatistics`` fields (without name and version), as JSON numbers."""
        zero = {"count": 0, "ns": 0}
        return {
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.doc(), "fail": self.fail.doc(), "queue": self.queue.doc(),
                "compute_input": zero, "compute_infer": self.compute_infer.doc(), "compute_output": zero,
                "cache_hit": zero, "cache_miss": zero,
            },
            "batch_stats": [{"batch_size": rows, "compute_input": zero, "compute_infer": d.doc(),
                             "compute_output": zero} for rows, d in sorted(self._batches.items())],
        }


def _stats_name(model: str, version: str) -> str:
    return f"{model}\x00{version}"


def merge_stats_docs(docs: Sequence[dict[str, Any]]) -> dict[str, object]:
    """Several processes' ``ModelStats.doc()`` of one version as one: counts and times add up, the
    last inference is the latest, batch statistics add up by batch size."""
    merged: dict[str, Any] = ModelStats().doc()
    batches: dict[int, dict[str, int]] = {}
    for doc in docs:
        merged["last_inference"] = max(merged["last_inference"], int(doc.get("last_inference", 0)))
        for field_name in ("inference_count", "execution_count"):
            merged[field_name] += int(doc.get(field_name, 0))
        for kind, duration in (doc.get("inference_stats") or {}).items():
            into = merged["inference_stats"].get(kind)
            if into is not None and isinstance(duration, dict):
                merged["inference_stats"][kind] = {"count": into["count"] + int(duration.get("count", 0)),
                                                   "ns": into["ns"] + int(duration.get("ns", 0))}
        for entry in doc.get("batch_stats") or []:
            infer = entry.get("compute_infer") or {}
            total = batches.setdefault(int(entry["batch_size"]), {"count": 0, "ns": 0})
            total["count"] += int(infer.get("count", 0))
            total["ns"] += int(infer.get("ns", 0))
    zero = {"count": 0, "ns": 0}
    merged["batch_stats"] = [{"batch_size": rows, "compute_input": zero, "compute_infer": d, "compute_output": zero}
                             for rows, d in sorted(batches.items())]
    return merged


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


_DEPTH, _DEPTH_DOC = "inferlane_queue_depth", "Requests waiting in the batcher queue"
_INFLIGHT, _INFLIGHT_DOC = "inferlane_inflight_batches", "Batches running a forward pass"
_DEAD_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def reap_dead_processes(path: str) -> list[int]:
    """Drop the live gauges of processes that died without saying so (SIGKILL, OOM): a killed
    replica's queue depth must not count forever. Returns their pids."""
    dead: set[int] = set()
    for f in glob.glob(os.path.join(path, "gauge_live*.db")):
        m = _DEAD_FILE.search(f)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid in dead or _alive(pid):
            continue
        dead.add(pid)
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_by_model(families: Iterable[Metric]) -> dict[str, float]:
    """The autoscaling load of each model: requests waiting plus batches running, over every version,
    lane and process the families cover (docs/scaling.md)."""
    load: dict[str, float] = {}
    for family in families:
        if family.name in (_DEPTH, _INFLIGHT):
            for sample in family.samples:
                model = sample.labels.get("model", "")
                load[model] = load.get(model, 0.0) + sample.value
    return load


def desired_replicas(load: float, target: int) -> int:
    """ceil(load / target), at least 1: a served model keeps one warm replica."""
    return max(1, math.ceil(load / target))


class _Scrape(CollectorRegistry):
    """A registry's series plus ``inferlane_desired_replicas{model}`` derived from them."""

    def __init__(self, source: CollectorRegistry, target: int) -> None:
        super().__init__()
        self._source = source
        self._target = target

    def collect(self) -> Iterator[Metric]:
        families = list(self._source.collect())
        yield from families
        desired = GaugeMetricFamily(
            "inferlane_desired_replicas",
            f"ceil((requests waiting + batches running) / target {self._target}), at least 1, per model",
            labels=("model",))
        for model, load in sorted(load_by_model(families).items()):
            desired.add_metric([model], desired_replicas(load, self._target))
        yield desired


class _QueueCollector:
    def __init__(self, sources: list[Callable[[], Iterable[QueueState]]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(_DEPTH, _DEPTH_DOC, labels=_LABELS)
        inflight = GaugeMetricFamily(_INFLIGHT, _INFLIGHT_DOC, labels=_LABELS)
        for source in self._sources:
            for q in source():
                depth.add_metric([q.model, q.version, q.lane], q.depth)
                inflight.add_metric([q.model, q.version, q.lane], q.inflight)
        yield depth
        yield inflight
