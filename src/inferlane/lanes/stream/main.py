"""The stream lane's entry point: open everything a stream job names, run it, close it all.

    report = run_stream(StreamJob(model="models/fraud", source="kafka://b:9092/tx", group="scorer",
                                  sink="kafka://b:9092/scores", key="id"), stop=threading.Event())

``inferlane stream run`` parses its flags into a StreamJob and calls this; so can any program.

Without a ``version`` the lane follows the model's route in the server's rollout store
(rollout/follow.py): each event is scored on the version the server would choose for its key, and
a promotion or a rollback reaches the lane within about a second. A ``version`` pins it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferlane.core.errors import ConfigError
from inferlane.core.inputs import RecordDecoder
from inferlane.core.metrics import Metrics
from inferlane.core.model import ModelVersion
from inferlane.core.process import tune_gc
from inferlane.core.repository import ModelEntry, locate_version, scan_model
from inferlane.lanes.stream.metrics import StreamMetrics
from inferlane.lanes.stream.runner import StreamRunner, StreamSettings, Versions
from inferlane.lanes.stream.sinks import open_dead_letters, open_stream_sink
from inferlane.lanes.stream.sources import open_source
from inferlane.rollout.follow import RouteFollower, rollout_store_opener
from inferlane.rollout.router import Route
from inferlane.store.lanes import LaneReporter


@dataclass(frozen=True)
class StreamJob:
    model: str
    """Model folder (``<repo>/<name>``)."""
    source: str
    group: str
    sink: str
    key: str
    """Event field that identifies an event (outputs are keyed ``<key>@<model version>``)."""
    dlq: str | None = None
    version: str | None = None
    columns: dict[str, list[str]] = field(default_factory=dict)
    table: str | None = None
    ttl_s: float | None = None
    """Expiry of the values a key-value store sink writes (None: kept until overwritten)."""
    settings: StreamSettings = field(default_factory=StreamSettings)
    start: str = "earliest"
    consumer: str | None = None
    claim_idle_ms: int = 30_000
    threads: int = 0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    state_dir: str | None = None
    """The lane's local state (Kafka delivery counts, the default dead-letter file); default
    ``.inferlane/stream/<group>``."""
    rollout_store: str | None = None
    """Where the server keeps its routes, followed when no ``version`` is pinned; default
    ``$INFERLANE_ROLLOUT_STORE``, else ``rollouts.db`` in the state folder (the server's default)."""


def run_stream(job: StreamJob, stop: threading.Event, *, on_start: Callable[[str], None] | None = None,
               metrics: Metrics | None = None) -> dict[str, Any]:
    """Run until ``stop`` is set (or ``settings.idle_exit_s``); returns the report. ConfigError for
    bad usage; a failed stage's error is raised after what was written before it is committed."""
    job.settings.check()
    # Everything that can be wrong with the job is found before the model loads (a big model takes
    # a while): the version, the columns, and every source, sink and port the job names.
    entry, version = locate_version(job.model, job.version)
    decoder = RecordDecoder.create(entry.config, job.key, job.columns)
    routes = rollout_store_opener(job.rollout_store) if job.version is None else None
    opened: list[Any] = []
    model: ModelVersion | None = None
    try:
        sink = open_stream_sink(job.sink, key_field=job.key, table=job.table, ttl_s=job.ttl_s)
        opened.append(sink)
        state_dir = Path(job.state_dir) if job.state_dir is not None else None
        dlq = open_dead_letters(job.dlq, group=job.group, model=entry.name, version=version, key_field=job.key,
                                state_dir=state_dir)
        opened.append(dlq)
        source = open_source(job.source, job.group, start=job.start, max_wait_ms=int(job.settings.max_wait_ms),
                             consumer=job.consumer, claim_idle_ms=job.claim_idle_ms, state_dir=state_dir)
        opened.append(source)
        metrics = metrics or Metrics()
        stream_metrics = StreamMetrics(entry.name, version, metrics)
        opened.append(LaneReporter("stream", job.group, lambda: {  # for the server's /dashboard (store/lanes.py)
            **stream_metrics.snapshot(), "model": entry.name, "version": version,
            "lag": dict(stream_metrics.lag)}).start())
        if job.metrics_port is not None:
            metrics.serve(job.metrics_port, job.metrics_host)
        versions: ModelVersion | Versions
        if routes is None:
            model = versions = _load(entry, version, job.threads)
            scoring = f"model {model.name} version {model.version}"
        else:
            opener, where = routes
            follower = RouteFollower(entry, opener, lambda v: _load(entry, v, job.threads),
                                     on_route=lambda r: stream_metrics.set_weights(_weights(r)))
            opened.append(follower)
            follower.start()
            versions = follower
            scoring = f"model {entry.name} following its route in {where} ({_describe(follower.route)})"
        runner = StreamRunner(versions, decoder, source, sink, dlq, job.settings, stream_metrics)
        tune_gc()
        if on_start is not None:
            on_start(f"stream {job.group}: {scoring}; {source.description} -> "
                     f"{sink.description}; dead letters -> {dlq.description}")
        return runner.run(stop)
    finally:
        for part in reversed(opened):
            with contextlib.suppress(Exception):
                part.close()
        if model is not None:
            model.close()


def _load(entry: ModelEntry, version: str, threads: int) -> ModelVersion:
    """Load and warm one version; a folder added since the start is found by reading the model again."""
    if version not in entry.versions:
        entry = scan_model(entry.path)
        if version not in entry.versions:
            raise ConfigError(f"model {entry.name} has no version folder {entry.path / version} on this host")
    model = ModelVersion.load(entry.config, entry.path, version, role="batch", threads=threads)
    try:
        model.warmup()
    except BaseException:
        model.close()
        raise
    return model


def _weights(route: Route) -> dict[str, float]:
    weights = {route.stable: 1.0 - route.canary_weight}
    if route.canary is not None:
        weights[route.canary] = route.canary_weight
    return weights


def _describe(route: Route) -> str:
    if route.canary is None:
        return f"version {route.stable}"
    return f"version {route.stable}, and {route.canary} for {route.canary_weight:.0%} of the keys"
