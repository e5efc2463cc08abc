"""``/dashboard``, ``/dashboard/data`` and the page's files on a real server: the snapshot's shape and
numbers under traffic, lane reports from the state folder, and hostile requests."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferlane.store.lanes import LaneReporter, report_lane
from inferlane.testing.waiting import wait_until
from tests.conftest import Server
from tests.dashboard.conftest import infer

pytestmark = pytest.mark.e2e


def test_page_and_assets_are_served_with_a_strict_content_security_policy(dash_server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        page = client.get(f"{dash_server.url}/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "/dashboard/static/dashboard.js" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # no CDN, nothing remote
        js = client.get(f"{dash_server.url}/dashboard/static/dashboard.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "/dashboard/data" in js.text
        css = client.get(f"{dash_server.url}/dashboard/static/dashboard.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_data_shape_and_numbers_under_traffic(dash_server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        client.get(f"{dash_server.url}/dashboard/data")  # a first reading to rate against
        before = time.monotonic()
        for _ in range(40):
            assert infer(client, dash_server.url).status_code == 200
        assert infer(client, dash_server.url, **{"inferlane-timeout-ms": "0"}).status_code == 504
        wait_until(lambda: time.monotonic() - before >= 0.6, "the next reading is kept", timeout_s=5)
        doc = client.get(f"{dash_server.url}/dashboard/data").json()
    assert set(doc) >= {"time", "window_s", "versions", "jobs", "rollouts", "streams", "batches", "ready"}
    assert doc["ready"] is True and doc["window_s"] > 0
    (row,) = [v for v in doc["versions"] if v["model"] == "quick" and v["lane"] == "online"]
    assert row["version"] == "1"
    assert row["requests"]["200"] >= 40 and row["requests"]["504"] >= 1
    assert row["rps"] > 0
    assert row["errors_per_s"]["504"] > 0 and 0 < row["error_rate"] < 1
    p50, p95, p99 = (row["latency_ms"][p] for p in ("p50", "p95", "p99"))
    assert 1.0 <= p50 <= p95 <= p99 < 1000  # the model sleeps 2 ms per batch
    assert row["forward_ms"]["mean"] >= 1.5
    assert row["batch_size"]["mean"] >= 1 and sum(b["count"] for b in row["batch_size"]["buckets"]) >= 1
    assert row["queue_depth"] == 0
    assert [r for r in doc["rollouts"] if r["model"] == "quick"] == []  # never rolled out
    assert isinstance(doc["streams"], list) and isinstance(doc["batches"], list)


def test_lane_reports_in_the_state_folder_show_on_the_dashboard(dash_server: Server, dash_state: Path) -> None:
    progress = {"rows_done": 10}

    def stream() -> dict[str, object]:
        return {"model": "quick", "version": "1", "in": 99, "lag": {"0": 5, "1": 7}}

    def data() -> dict[str, Any]:
        doc: dict[str, Any] = httpx.get(f"{dash_server.url}/dashboard/data", timeout=10).json()
        return doc

    batch = LaneReporter("batch", "nightly-1", lambda: {"model": "quick", "version": "1", "rows_planned": 40,
                                                        **progress}, dash_state / "lanes.db", interval_s=0.1)
    with report_lane("stream", "scorers", stream, dash_state / "lanes.db"):
        batch.start()
        wait_until(lambda: [s["lag"] for s in named(data()["streams"], "scorers")] == [{"0": 5, "1": 7}],
                   "the stream lag shows", timeout_s=10)
        progress["rows_done"] = 30
        wait_until(lambda: [(b["rows_done"], b["state"]) for b in named(data()["batches"], "nightly-1")]
                   == [(30, "running")], "the batch progress moves", timeout_s=10)
        batch.close()
        (b,) = named(data()["batches"], "nightly-1")
        assert b["state"] == "ended" and b["rows_planned"] == 40
    (s,) = named(data()["streams"], "scorers")
    assert s["state"] == "ended" and s["in"] == 99 and s["model"] == "quick"


def named(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["name"] == name]


@pytest.mark.parametrize("path", [
    "/dashboard/static/nope.js",
    "/dashboard/static/",
    "/dashboard/static/../app.py",
    "/dashboard/static/%2e%2e/%2e%2e/server/app.py",
    "/dashboard/static/..%2f..%2fdashboard.py",
    "/dashboard/static//etc/passwd",
    "/dashboard/static/dashboard.js/../../../pyproject.toml",
    "/dashboard/static/__init__.py",
])
def test_unknown_and_traversal_asset_paths_are_404(dash_server: Server, path: str) -> None:
    # Sent as raw bytes: an HTTP client would normalise the dots before they reach the server.
    with socket.create_connection(("127.0.0.1", dash_server.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    assert status.split()[1] == b"404", (path, status)
    assert b"import " not in answer and b"root:" not in answer


def test_query_strings_head_and_wrong_methods(dash_server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        for query in ("?x=1", "?model=%00%ff", "?" + "a" * 4000, "?window=-1&window=1e309"):
            r = client.get(f"{dash_server.url}/dashboard/data{query}")
            assert r.status_code == 200 and "versions" in r.json()
            assert client.get(f"{dash_server.url}/dashboard{query}").status_code == 200
        head = client.head(f"{dash_server.url}/dashboard")
        assert head.status_code == 200 and head.content == b""
        assert client.head(f"{dash_server.url}/dashboard/static/dashboard.css").status_code == 200
        assert client.head(f"{dash_server.url}/dashboard/static/missing.css").status_code == 404
        assert client.post(f"{dash_server.url}/dashboard/data", content=b"{}").status_code == 405
        assert client.delete(f"{dash_server.url}/dashboard").status_code == 405
        wrong_host = client.get(f"{dash_server.url}/dashboard/data", headers={"host": "evil.example"})
        assert wrong_host.status_code in (400, 421)  # loopback server: only loopback Host names
