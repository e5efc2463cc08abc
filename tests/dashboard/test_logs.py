"""``serve --log-format json`` on a real server: every line it writes is one JSON object, and each
model request has its line with the request id, model, version, lane, status and durations."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from inferlane.testing.waiting import wait_until
from tests.conftest import Server
from tests.dashboard.conftest import infer

pytestmark = pytest.mark.e2e


def _lines(server: Server) -> list[dict[str, Any]]:
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    docs = []
    for line in lines:
        try:
            docs.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line in the server's output: {line[:300]!r}")
    return docs


def _request_line(server: Server, request_id: str) -> dict[str, Any] | None:
    return next((d for d in _lines(server) if d.get("request_id") == request_id), None)


def test_every_line_is_json_and_each_request_line_carries_its_fields(dash_server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        ok = infer(client, dash_server.url, **{"x-request-id": "req-ok-1"})
        late = infer(client, dash_server.url, **{"x-request-id": "req-late-1", "inferlane-timeout-ms": "0"})
        fresh = infer(client, dash_server.url)
        client.get(f"{dash_server.url}/dashboard/data", headers={"x-request-id": "poll-1"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "req-ok-1"
    assert late.status_code == 504
    generated = fresh.headers["x-request-id"]
    assert len(generated) == 16
    wait_until(lambda: _request_line(dash_server, generated) is not None, "the request lines are written",
               timeout_s=10)

    line = _request_line(dash_server, "req-ok-1")
    assert line is not None
    assert line["logger"] == "inferlane.request" and line["level"] == "info"
    assert (line["model"], line["version"], line["lane"], line["status"]) == ("quick", "1", "online", 200)
    assert line["method"] == "POST" and line["path"] == "/v2/models/quick/infer"
    assert line["duration_ms"] >= line["forward_ms"] >= 1.5  # the model sleeps 2 ms
    assert line["queue_ms"] >= 0
    late_line = _request_line(dash_server, "req-late-1")
    assert late_line is not None and late_line["status"] == 504 and late_line["version"] == "1"
    assert _request_line(dash_server, "poll-1") is None  # the dashboard's polling is debug, not info

    docs = _lines(dash_server)  # start-up lines too: uvicorn's and the server's own
    assert {"uvicorn.error", "inferlane.rollout.registry"} <= {d["logger"] for d in docs}
    assert all({"ts", "level", "logger", "msg"} <= set(d) for d in docs)


def test_a_hostile_request_id_is_replaced(dash_server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        r = infer(client, dash_server.url, **{"x-request-id": "a\" b" + "x" * 100})
    assert r.status_code == 200
    assert r.headers["x-request-id"] != "a\" b" + "x" * 100 and len(r.headers["x-request-id"]) == 16
