"""Online features end to end: ``inferlane features materialize`` (the real CLI, as a subprocess)
fills a SQLite and a Redis store, and a real ``inferlane serve`` merges the stored fields with the
request's own in the declared order, before a model whose output is its input."""

from __future__ import annotations

import subprocess
import sys
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

from inferlane.lanes.batch.features import MODEL
from inferlane.store.kv import encode_rows, open_kv
from inferlane.testing import serve, serve_or_fail
from tests.conftest import Server

pytestmark = pytest.mark.e2e

ECHO = '''
class Model:
    def load(self, version_dir):
        pass

    def predict(self, batch):
        return {"y": batch["x"]}
'''
FIELDS = [{"name": "amount"}, {"name": "avg_7d", "source": "store"}, {"name": "hour"},
          {"name": "count_24h", "source": "store", "default": 7}]


def write_echo(repo: Path, name: str, features: dict[str, object]) -> None:
    """A Python model returning its input x [-1, 4] as y, with a ``features:`` section."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(ECHO)
    (repo / name / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_queue_delay_ms": 1},
        "features": {"input": "x", "fields": FIELDS, **features},
    }))


def materialize(source: Path, store: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "inferlane", "features", "materialize", str(source),
                           "--key", "user_id", "--store", store, *extra], capture_output=True, text=True, timeout=120)


def user_table(path: Path, avg: list[float | None], count: list[int | None]) -> Path:
    pq.write_table(pa.table({"user_id": ["u1", "u2", "u3"], "avg_7d": pa.array(avg, pa.float64()),
                             "count_24h": pa.array(count, pa.int64()), "segment": ["a", "b", "c"]}), path)
    return path


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Server, dict[str, str], Path]]:
    """A server with ``echo`` (SQLite store, missing: default) and ``strict`` (Redis store, missing:
    reject), both materialized from one Parquet table; yields (server, model → store URL, work folder)."""
    tmp = tmp_path_factory.mktemp("features")
    stores = {"echo": f"store://echo-{time.time_ns()}", "strict": f"{redis_url}?prefix=strict"}
    redis.Redis.from_url(redis_url).delete(*[f"strict:u{i}" for i in range(1, 4)])
    repo = tmp / "repo"
    write_echo(repo, "echo", {"store": stores["echo"]})
    write_echo(repo, "strict", {"store": stores["strict"], "missing": "reject"})
    source = user_table(tmp / "users.parquet", [10.5, None, 30.25], [3, 4, None])
    for url in stores.values():
        done = materialize(source, url)
        assert done.returncode == 0, done.stderr
        assert "keys_written   3" in done.stdout and "skipped column 'segment'" in done.stderr, done
    for s in serve_or_fail(serve(repo, log_path=tmp / "server.log")):
        yield s, stores, tmp


def infer(client: httpx.Client, model: str, key: object, amount: list[float], hour: list[float],
          shape: list[int] | None = None) -> httpx.Response:
    inputs = [{"name": "amount", "datatype": "FP32", "shape": shape or [len(amount)], "data": amount},
              {"name": "hour", "datatype": "FP32", "shape": [len(hour), 1], "data": hour}]
    return client.post(f"/v2/models/{model}/infer", content=orjson.dumps({"parameters": {"key": key},
                                                                          "inputs": inputs}))


def rows(r: httpx.Response) -> list[list[float]]:
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]).tolist()


def test_stored_and_request_fields_merge_in_the_declared_order(echo: tuple[Server, dict[str, str], Path]) -> None:
    server, _, _ = echo
    with httpx.Client(base_url=server.url, timeout=30) as client:
        one = infer(client, "echo", "u1", [129.5], [23])
        assert rows(one) == [[129.5, 10.5, 23, 3]]
        assert "features;dur=" in one.headers["server-timing"], one.headers
        # Many keys: one row per key, in the order asked; u2's avg_7d and u3's count_24h were null.
        many = infer(client, "echo", ["u3", "u1", "u2"], [1, 2, 3], [4, 5, 6])
        assert rows(many) == [[1, 30.25, 4, 7], [2, 10.5, 5, 3], [3, 0, 6, 4]]
        assert rows(infer(client, "strict", "u1", [129.5], [23])) == [[129.5, 10.5, 23, 3]]  # from Redis


def test_a_key_without_stored_features_takes_the_defaults_or_is_refused(
        echo: tuple[Server, dict[str, str], Path]) -> None:
    server, _, _ = echo
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert rows(infer(client, "echo", "never-stored", [5], [6])) == [[5, 0, 6, 7]]
        refused = infer(client, "strict", "never-stored", [5], [6])
        assert refused.status_code == 400 and "no stored features" in refused.json()["error"], refused.text
        lacking = infer(client, "strict", "u2", [5], [6])  # stored, but avg_7d was null
        assert lacking.status_code == 400 and "avg_7d" in lacking.json()["error"], lacking.text


@pytest.mark.parametrize(("body", "needle"), [
    ({"parameters": {"key": "u1"}, "inputs": [
        {"name": "amount", "datatype": "FP32", "shape": [1], "data": [1]}]}, "missing ['hour']"),
    ({"parameters": {"key": "u1"}, "inputs": [
        {"name": "amount", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
        {"name": "hour", "datatype": "FP32", "shape": [1], "data": [1]}]}, "'amount' must have shape"),
    ({"parameters": {"key": ["u1", "u2"]}, "inputs": [
        {"name": "amount", "datatype": "FP32", "shape": [1], "data": [1]},
        {"name": "hour", "datatype": "FP32", "shape": [1], "data": [1]}]}, "one row per key"),
    ({"parameters": {"key": "u1"}, "inputs": [
        {"name": "amount", "datatype": "BYTES", "shape": [1], "data": ["1"]},
        {"name": "hour", "datatype": "FP32", "shape": [1], "data": [1]}]}, "numeric"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}, "parameters.key"),
])
def test_wrong_shapes_and_missing_request_fields_are_400(echo: tuple[Server, dict[str, str], Path],
                                                          body: dict[str, object], needle: str) -> None:
    server, _, _ = echo
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v2/models/echo/infer", content=orjson.dumps(body))
        assert r.status_code == 400, r.text
        assert needle in r.json()["error"], r.text


def test_a_newer_materialization_wins_and_an_older_write_never_does(
        echo: tuple[Server, dict[str, str], Path]) -> None:
    server, stores, tmp = echo
    newer = user_table(tmp / "users-newer.parquet", [11.0, 22.0, 33.0], [1, 2, 3])
    for url in stores.values():
        done = materialize(newer, url, "--columns", "avg_7d,count_24h")
        assert done.returncode == 0, done.stderr
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for model in stores:
            assert rows(infer(client, model, ["u1", "u2"], [0, 0], [0, 0])) == [[0, 11, 0, 1], [0, 22, 0, 2]]
        # A late writer with an older computed_at (an earlier run finishing last) changes nothing.
        for model, url in stores.items():
            store = open_kv(url)
            try:
                old = encode_rows(MODEL, "old", time.time() - 3600, {"avg_7d": np.array([-1.0]),
                                                                     "count_24h": np.array([-1])})
                assert store.put_many([("u1", old[0])]) == 0
            finally:
                store.close()
            assert rows(infer(client, model, "u1", [0], [0])) == [[0, 11, 0, 1]]
