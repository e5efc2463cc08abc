"""deploy/grafana/inferlane.json: valid JSON, and every PromQL expression names only series the
server or a lane really exports: those a real server's ``/metrics`` answers, those the stream, batch
and jobs lanes' collectors give (they export from their own processes, or only once a job runs), and
those declared through the metrics helper in the source (rollout, drift, hybrid)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferlane.core.metrics import Metrics
from inferlane.lanes.batch.metrics import BatchMetrics
from inferlane.lanes.jobs.metrics import JobsMetrics
from inferlane.lanes.stream.metrics import StreamMetrics
from tests.conftest import Server
from tests.dashboard.conftest import infer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "inferlane.json"
SERIES = re.compile(r"\binferlane_[a-z0-9_]+")
DECLARED = re.compile(r"(?:\.(counter|gauge|histogram)|(Counter|Gauge|Histogram)MetricFamily|\.(family))"
                      r"\(\s*\"(inferlane_[a-z0-9_]+)\"")
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _expressions(doc: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    found += [v["query"]["query"] for v in doc["templating"]["list"] if isinstance(v.get("query"), dict)]
    return found


def declared_samples() -> set[str]:
    """Sample names of every series declared through the metrics helper or a custom collector in src/."""
    names: set[str] = set()
    for path in (ROOT / "src" / "inferlane").rglob("*.py"):
        for m in DECLARED.finditer(path.read_text()):
            kind = (m.group(1) or m.group(2) or "histogram").lower()
            base = m.group(4).removesuffix("_total") if kind == "counter" else m.group(4)
            names.update(base + s for s in SUFFIXES[kind])
    return names


def lane_samples() -> set[str]:
    """Sample names of the stream, batch and jobs lanes' series, from their real collectors."""
    metrics = Metrics()
    StreamMetrics("m", "1", metrics)
    BatchMetrics(metrics, "m", "1")
    JobsMetrics(metrics)
    names: set[str] = set()
    for family in metrics.registry.collect():
        kind = family.type if family.type in SUFFIXES else "gauge"
        names.update(family.name + s for s in SUFFIXES[kind])
    return names


def scraped_samples(server: Server) -> set[str]:
    with httpx.Client(timeout=10) as client:
        assert infer(client, server.url).status_code == 200
        text = client.get(f"{server.url}/metrics").text
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("inferlane_")}


def test_the_dashboard_is_valid_grafana_json() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "inferlane" and doc["title"]
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    for p in panels:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            e = t["expr"]
            assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "model", "version"}


def test_every_expression_names_only_exported_series(dash_server: Server) -> None:
    scraped, declared = scraped_samples(dash_server), declared_samples() | lane_samples()
    assert {"inferlane_requests_total", "inferlane_request_duration_seconds_bucket",
            "inferlane_queue_depth", "inferlane_desired_replicas"} <= scraped
    assert {"inferlane_stream_consumer_lag", "inferlane_batch_shards_planned", "inferlane_jobs_backlog",
            "inferlane_stream_events_total", "inferlane_stream_e2e_latency_seconds_bucket"} <= declared
    exported = scraped | declared
    used: set[str] = set()
    for expr in _expressions(json.loads(DASHBOARD.read_text())):
        names = set(SERIES.findall(expr))
        assert names, expr
        assert names <= exported, f"{sorted(names - exported)} in {expr!r} is not exported"
        used |= names
    # the dashboard covers what /dashboard shows
    assert {"inferlane_requests_total", "inferlane_request_duration_seconds_bucket", "inferlane_queue_depth",
            "inferlane_batch_size_bucket", "inferlane_forward_seconds_bucket", "inferlane_traffic_weight",
            "inferlane_rollout_step", "inferlane_jobs_backlog", "inferlane_jobs_oldest_queued_age_seconds",
            "inferlane_stream_consumer_lag", "inferlane_batch_shards_planned"} <= used
