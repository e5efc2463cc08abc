"""The hybrid lane end to end: precompute with the batch lane into SQLite (``store://``) and Redis,
then serve hits, misses, stale and other-version keys from a real ``inferlane serve`` over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml

from inferlane.demo.models import write_fraud_model
from inferlane.lanes.batch import BatchJob, run_batch
from inferlane.store.kv import encode_rows, open_kv
from inferlane.testing import serve, serve_or_fail
from tests.conftest import Server

pytestmark = pytest.mark.e2e

ROWS = 100_000
FEATURES = 30


def features_of(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)


def with_hybrid(repo: Path, name: str, hybrid: dict[str, object]) -> None:
    """A copy of the fraud model named ``name`` with a ``hybrid:`` section."""
    write_fraud_model(repo, rows=4000)
    (repo / "fraud").rename(repo / name)
    cfg = yaml.safe_load((repo / name / "model.yaml").read_text())
    cfg["name"] = name
    cfg["hybrid"] = hybrid
    cfg["batching"] = {"max_queue_delay_ms": 1}
    (repo / name / "model.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def hybrid(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server whose model ``scores`` serves from a store that the batch lane filled with ROWS keys
    (k0 .. k99999, the features of features_of(ROWS)); yields (server, store URL)."""
    tmp = tmp_path_factory.mktemp(f"hybrid-{request.param}")
    if request.param == "sqlite":
        url = f"store://scores-{int(time.time() * 1e6)}"
    else:
        base: str = request.getfixturevalue("redis_url")
        redis.Redis.from_url(base).flushdb()
        url = f"{base}?prefix=scores"
    repo = tmp / "repo"
    with_hybrid(repo, "scores", {"store": url, "max_age": "1h", "write_back": True})
    x = features_of(ROWS)
    table = pa.table({"id": [f"k{i}" for i in range(ROWS)],
                      **{f"f{j}": x[:, j] for j in range(FEATURES)}})
    pq.write_table(table, tmp / "in.parquet")
    report = run_batch(BatchJob(model=str(repo / "scores"), input=str(tmp / "in.parquet"), output=url,
                                key=["id"], job_id="precompute", progress=False))
    assert report["rows_written"] == ROWS, report
    yield from (( s, url) for s in serve_or_fail(serve(repo, log_path=tmp / "server.log")))


def post(client: httpx.Client, body: dict[str, object], path: str = "/v2/models/scores/infer") -> httpx.Response:
    return client.post(path, content=orjson.dumps(body))


def v2(x: np.ndarray | None = None, key: object = None, **params: object) -> dict[str, object]:
    body: dict[str, object] = {"parameters": {**({"key": key} if key is not None else {}), **params}}
    if x is not None:
        body["inputs"] = [{"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    return body


def outputs(r: httpx.Response) -> dict[str, np.ndarray]:
    """The binary outputs of an answer, bit for bit."""
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    head = orjson.loads(r.content[:length])
    out, pos = {}, length
    for t in head["outputs"]:
        size = t["parameters"]["binary_data_size"]
        dtype = {"FP32": np.float32, "INT64": np.int64}[t["datatype"]]
        out[t["name"]] = np.frombuffer(r.content[pos:pos + size], dtype).reshape(t["shape"])
        pos += size
    return out


def params_of(r: httpx.Response) -> dict[str, object]:
    length = int(r.headers.get("inference-header-content-length", len(r.content)))
    doc: dict[str, object] = orjson.loads(r.content[:length])["parameters"]
    return doc


def test_a_precomputed_answer_equals_the_live_one_bit_for_bit(hybrid: tuple[Server, str]) -> None:
    server, _ = hybrid
    x = features_of(ROWS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in (0, 4242, ROWS - 1):
            hit = post(client, v2(key=f"k{i}", binary_data_output=True))
            assert hit.headers["inferlane-source"] == "precomputed"
            assert 0 <= float(hit.headers["inferlane-age-s"]) < 3600
            p = params_of(hit)
            assert p["source"] == "precomputed" and p["model_version"] == "1", p
            live = post(client, v2(x[i:i + 1], binary_data_output=True))  # no key: scored live
            assert "inferlane-source" not in live.headers
            got, want = outputs(hit), outputs(live)
            assert got.keys() == want.keys()
            for name in want:
                assert got[name].tobytes() == want[name].tobytes(), name
        metrics = client.get("/metrics").text
        assert 'inferlane_requests_total{lane="hybrid",model="scores",status="200",version="1"}' in metrics
        assert 'inferlane_hybrid_lookups_total{lane="hybrid",model="scores",result="hit",version="1"}' in metrics


def test_misses_stale_and_other_versions_are_scored_live_or_refused_with_the_reason(
        hybrid: tuple[Server, str]) -> None:
    server, url = hybrid
    x = features_of(4, seed=99)
    store = open_kv(url)
    try:
        old = encode_rows("scores", "1", time.time() - 7200, {"label": np.zeros(1, np.int64),
                                                              "probabilities": np.zeros((1, 2), np.float32)})
        other = encode_rows("scores", "0", time.time(), {"label": np.zeros(1, np.int64),
                                                         "probabilities": np.zeros((1, 2), np.float32)})
        store.put_many([("stale-1", old[0]), ("stale-2", old[0]), ("v0-1", other[0])])
    finally:
        store.close()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for key, reason in (("never-stored", "missing"), ("stale-1", "stale"), ("v0-1", "other_version")):
            r = post(client, v2(key=key))
            assert r.status_code == 404, r.text
            assert r.json()["reason"] == reason, r.text
            live = post(client, v2(x[:1], key=key))
            assert live.status_code == 200 and live.headers["inferlane-source"] == "live", live.text
            assert params_of(live)["source"] == "live" and params_of(live)["age_s"] is None
        # Many keys at once: hits from the store, the rest live, in the order asked.
        keys = ["k1", "nope-a", "k2", "nope-b"]
        mixed = post(client, v2(x, key=keys, binary_data_output=True))
        p = params_of(mixed)
        assert p["source"] == "mixed" and p["sources"] == ["precomputed", "live", "precomputed", "live"], p
        live_all = outputs(post(client, v2(x, binary_data_output=True)))
        got = outputs(mixed)
        assert got["probabilities"][1].tobytes() == live_all["probabilities"][1].tobytes()
        assert got["probabilities"][3].tobytes() == live_all["probabilities"][3].tobytes()
        assert got["probabilities"][0].tobytes() == outputs(post(client, v2(key="k1", binary_data_output=True)))[
            "probabilities"][0].tobytes()
        # Key-only with several keys: 404 lists every key that is not a hit.
        r = post(client, v2(key=["k1", "nope-c", "stale-2"]))
        assert r.status_code == 404 and r.json()["reasons"] == {"nope-c": "missing", "stale-2": "stale"}, r.text


def test_a_live_answer_is_written_back_and_then_served_from_the_store(hybrid: tuple[Server, str]) -> None:
    server, _ = hybrid
    x = features_of(1, seed=5)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        key = f"fresh-{time.time_ns()}"
        first = post(client, v2(x, key=key, binary_data_output=True))
        assert first.headers["inferlane-source"] == "live"
        deadline = time.monotonic() + 10
        while True:
            again = post(client, v2(key=key, binary_data_output=True))
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert again.headers["inferlane-source"] == "precomputed", again.text
        assert outputs(again)["probabilities"].tobytes() == outputs(first)["probabilities"].tobytes()
        metrics = client.get("/metrics").text
        assert 'inferlane_hybrid_write_backs_total{lane="hybrid",model="scores",outcome="written",version="1"}' \
            in metrics, metrics[-2000:]


def test_v1_takes_the_key_beside_the_instances(hybrid: tuple[Server, str]) -> None:
    server, _ = hybrid
    x = features_of(ROWS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v1/models/scores:predict", content=orjson.dumps({"key": "k3"}))
        assert r.status_code == 200, r.text
        assert r.json()["parameters"]["source"] == "precomputed"
        live = client.post("/v1/models/scores:predict", content=orjson.dumps({"instances": x[3:4].tolist()}))
        assert r.json()["predictions"] == live.json()["predictions"]
        both = client.post("/v1/models/scores:predict",
                           content=orjson.dumps({"key": "nope-v1", "instances": x[3:4].tolist()}))
        assert both.status_code == 200 and both.headers["inferlane-source"] == "live", both.text


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"parameters": {"key": ""}}, 400, "parameters.key"),
    ({"parameters": {"key": "x" * 5000}}, 400, "parameters.key"),
    ({"parameters": {"key": "a\x00b"}}, 400, "parameters.key"),
    ({"parameters": {"key": 17}}, 400, "parameters.key"),
    ({"parameters": {"key": []}}, 400, "parameters.key"),
    ({"parameters": {"key": {"a": 1}}}, 400, "parameters.key"),
    ({"parameters": {"key": ["a", "a"]}}, 400, "twice"),
    ({"parameters": {"key": [f"k{i}" for i in range(1001)]}}, 413, "at most 1000"),
    ({"parameters": {"key": ["k1", "k2"]}, "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30],
                                                        "data": [0.0] * 30}]}, 400, "one row per key"),
    ({"parameters": {}}, 400, "inputs"),
])
def test_hostile_keys_are_refused_with_a_clear_error(hybrid: tuple[Server, str], body: dict[str, object],
                                                      status: int, needle: str) -> None:
    server, _ = hybrid
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = post(client, body)
        assert r.status_code == status, r.text
        assert needle in r.json()["error"], r.text
        assert client.get("/v2/health/ready").status_code == 200
