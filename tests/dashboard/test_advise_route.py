"""``GET /dashboard/advise``: the pattern advisor on the forward passes the server measured while serving."""

from __future__ import annotations

import httpx
import pytest

from inferlane.advise.live import profile_from_stats, workload_from_query
from inferlane.core.errors import ConfigError
from tests.conftest import Server
from tests.dashboard.conftest import infer

QUERY = {"model": "quick", "requests_per_day": "86400", "peak_rps": "5", "p99_ms": "200", "freshness": "0",
         "inputs_at_request_time": "yes", "price_per_hour": "3"}


def test_advice_from_the_served_traffic(dash_server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        for _ in range(20):
            assert infer(client, dash_server.url).status_code == 200
        r = client.get(f"{dash_server.url}/dashboard/advise", params=QUERY)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["pattern"] == "online"  # inputs exist only at request time and a caller waits
    assert {c["pattern"] for c in doc["costs"]} == {"batch", "hybrid", "async", "stream", "online"}
    assert doc["profile"]["model"] == "quick" and doc["profile"]["version"] == "1"
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("query,status,says", [
    ({}, 400, "model is required"),
    ({**QUERY, "model": "nope"}, 404, "nope"),
    ({**QUERY, "peak_rps": "-1"}, 400, "peak"),
    ({**QUERY, "peak_rps": "nan"}, 400, "finite"),
    ({**QUERY, "freshness": "soon"}, 400, "freshness"),
    ({**QUERY, "inputs_at_request_time": "maybe"}, 400, "inputs_at_request_time"),
    ({**QUERY, "price_per_hour": ""}, 400, "price_per_hour is required"),
    ({**QUERY, "evil": "<script>"}, 400, "unknown advisor fields"),
])
def test_bad_fields_are_400_naming_the_field(dash_server: Server, query: dict[str, str], status: int,
                                             says: str) -> None:
    r = httpx.get(f"{dash_server.url}/dashboard/advise", params=query, timeout=10)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]


def test_the_profile_is_the_mean_forward_time_per_batch_size() -> None:
    stats = {"batch_stats": [
        {"batch_size": 1, "compute_infer": {"count": 10, "ns": 10 * 2_000_000}},
        {"batch_size": 8, "compute_infer": {"count": 4, "ns": 4 * 4_000_000}},
        {"batch_size": 64, "compute_infer": {"count": 2, "ns": 2 * 9_000_000}},  # too few passes to trust
    ]}
    prof = profile_from_stats("m", "1", "onnx", stats)
    assert [(p.batch_size, p.p50_ms, p.rows_per_s) for p in prof.points] == [(1, 2.0, 500.0), (8, 4.0, 2000.0)]
    with pytest.raises(ConfigError, match="fewer than 3 forward passes"):
        profile_from_stats("m", "1", "onnx", {"batch_stats": []})


def test_the_workload_reads_the_form() -> None:
    w = workload_from_query({**QUERY, "freshness": "1h", "p99_ms": "", "spot_discount": "0.7"})
    assert w.freshness_s == 3600 and w.p99_ms is None and w.spot_discount == 0.7 and w.peak_rps == 5
