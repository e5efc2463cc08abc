"""OpenTelemetry traces end to end: a real ``inferlane serve --otlp-endpoint`` exports its spans over
OTLP/HTTP (protobuf) to a real HTTP receiver; a request's spans sit under the trace the caller's W3C
``traceparent`` names, and a job's submit, run and callback do too (the callback carries it on)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from inferlane.testing import serve, serve_or_fail, wait_until
from inferlane.testing.receiver import HttpReceiver
from inferlane.testing.server import ServerProcess
from tests.conftest import write_fraud_model

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
ROW = [0.1] * 30


@pytest.fixture(scope="module")
def collector() -> Iterator[HttpReceiver]:
    with HttpReceiver(answer={}) as r:
        yield r


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, collector: HttpReceiver) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("traces")
    write_fraud_model(root / "repo", rows=2000)
    env = {"OTEL_BSP_SCHEDULE_DELAY": "100", "INFERLANE_JOBS_CALLBACK_ALLOW_PRIVATE": "true",
           "INFERLANE_JOBS_STORE": f"sqlite:///{root / 'jobs.db'}"}
    yield from serve_or_fail(serve(root / "repo", log_path=root / "server.log", env=env,
                                   extra=["--otlp-endpoint", f"{collector.url}/v1/traces"]))


def spans(collector: HttpReceiver) -> list[dict[str, object]]:
    """Every span exported so far: name, ids (hex), parent id, attributes, status code."""
    found = []
    for request in list(collector.requests):
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert request.path == "/v1/traces" and headers["content-type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(request.body)
        for resource in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            for scope in resource.scope_spans:
                for s in scope.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes}
                    found.append({"name": s.name, "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                                  "parent": s.parent_span_id.hex(), "attrs": attrs, "status": s.status.code,
                                  "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                                  "service": service})
    return found


def in_trace(collector: HttpReceiver, trace: str, names: set[str]) -> dict[str, dict[str, object]]:
    wait_until(lambda: names <= {s["name"] for s in spans(collector) if s["trace"] == trace},
               f"spans {sorted(names)} of trace {trace}", 20)
    return {str(s["name"]): s for s in spans(collector) if s["trace"] == trace}


def test_a_request_shows_its_queue_and_forward_under_the_callers_trace(
        server: ServerProcess, collector: HttpReceiver) -> None:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": ROW}]}
    r = httpx.post(f"{server.url}/v2/models/fraud/infer", content=orjson.dumps(body), timeout=10,
                   headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert r.status_code == 200, r.text
    got = in_trace(collector, TRACE_ID, {"POST /v2/models/{model}/infer", "queue", "forward"})
    request = got["POST /v2/models/{model}/infer"]
    assert request["parent"] == PARENT_ID and request["service"] == "inferlane"
    assert request["attrs"] == {"http.request.method": "POST", "url.path": "/v2/models/fraud/infer",
                                "http.response.status_code": 200, "inferlane.model": "fraud",
                                "inferlane.lane": "online", "inferlane.version": "1", "inferlane.batch_rows": 1}
    for phase in ("queue", "forward"):
        assert got[phase]["parent"] == request["id"]
        assert request["start"] <= got[phase]["start"] <= got[phase]["end"] <= request["end"]  # type: ignore[operator]
    assert got["queue"]["end"] <= got["forward"]["start"]  # type: ignore[operator]


def test_a_failed_request_is_an_error_span_and_a_bad_traceparent_starts_a_new_trace(
        server: ServerProcess, collector: HttpReceiver) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    bad = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 29], "data": ROW[:29]}]}
    r = httpx.post(f"{server.url}/v2/models/fraud/infer", content=orjson.dumps(bad), timeout=10,
                   headers={"traceparent": f"00-{trace}-b7ad6b7169203331-01"})
    assert r.status_code == 400
    span = in_trace(collector, trace, {"POST /v2/models/{model}/infer"})["POST /v2/models/{model}/infer"]
    assert span["attrs"]["http.response.status_code"] == 400  # type: ignore[index]
    before = {s["trace"] for s in spans(collector)}
    for header in ("garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "x" * 5000):
        ok = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": ROW}]}
        r = httpx.post(f"{server.url}/v2/models/fraud/infer", content=orjson.dumps(ok), timeout=10,
                       headers={"traceparent": header})
        assert r.status_code == 200, (header[:20], r.text)
    wait_until(lambda: len({s["trace"] for s in spans(collector)} - before) >= 3, "three new traces", 20)
    new = [s for s in spans(collector) if s["trace"] not in before and s["name"].startswith("POST")]  # type: ignore[union-attr]
    assert all(s["parent"] == "" for s in new)  # each a root span of its own trace


def test_a_job_is_traced_from_submit_to_callback_and_the_callback_carries_the_trace(
        server: ServerProcess, collector: HttpReceiver) -> None:
    trace = "11112222333344445555666677778888"
    with HttpReceiver() as hook:
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": ROW}],
                "callback_url": f"{hook.url}/done"}
        r = httpx.post(f"{server.url}/v2/models/fraud/jobs", content=orjson.dumps(body), timeout=10,
                       headers={"traceparent": f"00-{trace}-{PARENT_ID}-01"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        got = in_trace(collector, trace, {"submit job fraud", "job fraud", "job queue", "queue", "forward",
                                          "callback of job fraud"})
        assert len(hook.requests) == 1
        carried = hook.requests[0].headers["traceparent"]
    submit, run, callback = got["submit job fraud"], got["job fraud"], got["callback of job fraud"]
    assert submit["parent"] == PARENT_ID
    assert run["parent"] == submit["id"] and callback["parent"] == submit["id"]
    assert run["attrs"]["inferlane.job_id"] == job_id and run["attrs"]["inferlane.version"] == "1"  # type: ignore[index]
    for phase in ("job queue", "queue", "forward"):
        assert got[phase]["parent"] == run["id"]
    assert carried == f"00-{trace}-{callback['id']}-01"  # the receiver can continue the trace


def test_traces_are_off_without_an_endpoint_and_a_bad_one_is_a_usage_error(tmp_path: Path) -> None:
    write_fraud_model(tmp_path / "repo", rows=500)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    for bad in ("ftp://collector/v1/traces", "collector:4318"):
        out = subprocess.run([sys.executable, "-m", "inferlane", "serve", str(tmp_path / "repo"),
                              "--otlp-endpoint", bad], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 2, out.stderr
        assert "OTLP endpoint must be an http(s) URL" in out.stderr and "Traceback" not in out.stderr


def test_a_stream_micro_batch_links_the_trace_of_each_event(collector: HttpReceiver, redis_url: str,
                                                            tmp_path: Path) -> None:
    import redis

    from tests.stream.support import encode, finish, fraud_events, start_lane, stream_url

    src, out = f"traced-{os.getpid()}:events", f"traced-{os.getpid()}:scores"
    write_fraud_model(tmp_path / "repo", rows=500)
    traces = [f"{i:032x}" for i in range(1, 6)]
    client = redis.Redis.from_url(redis_url)
    for i, event in enumerate(fraud_events(8)):
        fields = {"data": encode(event)}
        if i < len(traces):  # three events without a trace: the batch links only those that carry one
            fields["traceparent"] = f"00-{traces[i]}-{PARENT_ID}-01".encode()
        client.xadd(src, fields)  # type: ignore[arg-type]
    client.close()
    proc = start_lane(tmp_path / "repo" / "fraud", stream_url(redis_url, src), "traced", stream_url(redis_url, out),
                      "--idle-exit", "2", "--max-batch", "64", "--otlp-endpoint", f"{collector.url}/v1/traces")
    code, _, stderr = finish(proc)
    assert code == 0, stderr[-3000:]
    batches = [s for s in spans(collector) if s["name"] == "stream batch fraud"]  # flushed at the lane's exit
    assert batches and sum(int(b["attrs"]["inferlane.events"]) for b in batches) == 8  # type: ignore[index]
    assert all(b["parent"] == "" and b["attrs"]["inferlane.lane"] == "stream" for b in batches)  # type: ignore[index]
    linked = set()
    for request in collector.requests:
        for rs in ExportTraceServiceRequest.FromString(request.body).resource_spans:
            for ss in rs.scope_spans:
                linked |= {link.trace_id.hex() for s in ss.spans if s.name == "stream batch fraud" for link in s.links}
    assert linked == set(traces)
