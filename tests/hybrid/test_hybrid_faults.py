"""The hybrid lane when its Redis store fails: requests with inputs are scored live, requests without
get 503 with the reason, readiness says so, and everything recovers when Redis is back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model
from inferlane.store.kv import encode_rows, open_kv
from inferlane.testing import RestartableRedis, exited, log_tail, serve, wait_until
from tests.hybrid.test_hybrid_serve import features_of, post, v2, with_hybrid

pytestmark = pytest.mark.e2e
KEYS = 200


def precompute(repo: Path, url: str) -> np.ndarray:
    """Store the model's answers for keys k0 .. k199 (the rows of features_of(KEYS))."""
    entry = scan_model(repo / "scores")
    mv = ModelVersion.load(entry.config, entry.path, "1")
    x = features_of(KEYS)
    values = encode_rows("scores", "1", time.time(), mv.forward({"features": x}))
    store = open_kv(url)
    try:
        assert store.put_many([(f"k{i}", v) for i, v in enumerate(values)]) == KEYS
    finally:
        store.close()
    return x


class Load(threading.Thread):
    """Requests with inputs (half of them hits) or, with ``inputs=False``, key-only requests."""

    def __init__(self, url: str, x: np.ndarray, *, inputs: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.x, self.inputs = url, x, inputs
        self.stopping = threading.Event()
        self.codes: dict[int, int] = {}
        self.sources: dict[str, int] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stopping.is_set():
                i += 1
                row = i % KEYS
                key = f"k{row}" if i % 2 else f"miss-{i}"
                body = v2(self.x[row:row + 1], key=key) if self.inputs else v2(key=f"k{row}")
                r = post(client, body)
                self.codes[r.status_code] = self.codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    src = r.headers["inferlane-source"]
                    self.sources[src] = self.sources.get(src, 0) + 1
                else:
                    self.errors.append(r.json()["error"])


def test_redis_killed_and_restarted_under_load(restartable_redis: RestartableRedis, tmp_path: Path) -> None:
    url = f"{restartable_redis.url}?prefix=scores"
    repo = tmp_path / "repo"
    with_hybrid(repo, "scores", {"store": url, "max_age": "1h"})
    x = precompute(repo, url)
    with serve(repo, log_path=tmp_path / "server.log") as server:
        alive = [exited(server.proc, server.log)]
        with_inputs = [Load(server.url, x, inputs=True) for _ in range(2)]
        key_only = Load(server.url, x, inputs=False)
        loads = [*with_inputs, key_only]
        for t in loads:
            t.start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                wait_until(lambda: key_only.codes.get(200, 0) >= 50, "key-only requests are answered", 30,
                           abort_if=alive)
                restartable_redis.kill()
                wait_until(lambda: key_only.codes.get(503, 0) >= 10, "key-only requests get 503", 30, abort_if=alive)
                ready = client.get("/v2/health/ready")
                assert ready.status_code == 200, ready.text  # live scoring still works
                (store,) = ready.json()["stores"].values()
                assert store["up"] is False and store["error"], ready.text
                served_live = sum(t.sources.get("live", 0) for t in with_inputs)
                wait_until(lambda: sum(t.sources.get("live", 0) for t in with_inputs) >= served_live + 100,
                           "requests with inputs are scored live while Redis is down", 30, abort_if=alive)
                restartable_redis.start()
                during = key_only.codes.get(200, 0)
                wait_until(lambda: key_only.codes.get(200, 0) >= during + 50, "key-only requests recover", 30,
                           abort_if=alive)
                (store,) = client.get("/v2/health/ready").json()["stores"].values()
                assert store == {"up": True}
                metrics = client.get("/metrics").text
                assert 'inferlane_store_up{' in metrics and 'op="read"' in metrics
        finally:
            for t in loads:
                t.stopping.set()
            for t in loads:
                t.join(30)
    for t in with_inputs:
        assert set(t.codes) == {200}, (t.codes, t.errors[:5], log_tail(server.log))
        assert t.sources.get("precomputed", 0) > 0 and t.sources.get("live", 0) > 0
    assert set(key_only.codes) <= {200, 503}, key_only.codes
    assert all("cannot be read" in e for e in key_only.errors), key_only.errors[:5]


def test_many_keys_are_looked_up_in_one_round_trip(restartable_redis: RestartableRedis, tmp_path: Path) -> None:
    import redis

    url = f"{restartable_redis.url}?prefix=scores"
    repo = tmp_path / "repo"
    with_hybrid(repo, "scores", {"store": url, "max_age": "1h"})
    precompute(repo, url)
    counter = redis.Redis.from_url(restartable_redis.url)

    def reads() -> int:
        stats = counter.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info" and k != "cmdstat_ping")

    with serve(repo, log_path=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        body = orjson.dumps(v2(key=[f"k{i}" for i in range(KEYS)]))
        assert client.post("/v2/models/scores/infer", content=body).status_code == 200  # connects first
        before = reads()
        r = client.post("/v2/models/scores/infer", content=body)
        assert r.status_code == 200 and r.headers["inferlane-source"] == "precomputed", r.text
        assert reads() - before == 1
    counter.close()


def test_concurrent_requests_share_reads_and_each_gets_its_own_answer(restartable_redis: RestartableRedis,
                                                                       tmp_path: Path) -> None:
    """Keys of requests waiting at once go to Redis in one MGET; the answers are split back by request."""
    import asyncio

    import redis

    url = f"{restartable_redis.url}?prefix=scores"
    repo = tmp_path / "repo"
    with_hybrid(repo, "scores", {"store": url, "max_age": "1h"})
    x = precompute(repo, url)
    entry = scan_model(repo / "scores")
    want = ModelVersion.load(entry.config, entry.path, "1").forward({"features": x})["probabilities"]
    counter = redis.Redis.from_url(restartable_redis.url)

    def mgets() -> int:
        return int(counter.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))

    async def burst(base: str) -> list[tuple[int, list[float]]]:
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as client:
            async def one(i: int) -> tuple[int, list[float]]:
                r = await client.post("/v2/models/scores/infer", content=orjson.dumps(v2(key=f"k{i}")))
                assert r.status_code == 200 and r.headers["inferlane-source"] == "precomputed", r.text
                (probs,) = [o for o in r.json()["outputs"] if o["name"] == "probabilities"]
                return i, probs["data"]
            return await asyncio.gather(*(one(i) for i in range(KEYS)))

    with serve(repo, log_path=tmp_path / "server.log") as server:
        asyncio.run(burst(server.url))  # connections opened
        before = mgets()
        answers = asyncio.run(burst(server.url))
        reads = mgets() - before
    counter.close()
    for i, probs in answers:
        assert np.asarray(probs, np.float32).tobytes() == want[i].tobytes(), i
    assert reads < KEYS, f"{reads} MGETs for {KEYS} concurrent requests: reads were not shared"
