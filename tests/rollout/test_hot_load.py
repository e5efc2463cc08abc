"""Versions while serving: hot load and unload, routes, sticky keys, pinned versions, shadow copies.

In process: the real registry, the online lane and the ASGI app over httpx's ASGITransport (as in
tests/test_http_routes.py), on a repository of ``m`` versions written by each test. Version ``v``
answers ``y = x * factor`` (its factor in ``factor.txt``), so every answer says which version
computed it, independently of the ``inferlane-model-version`` header. A version folder holding
``fails`` raises on every input but its warm-up (zeros); one holding ``gated`` waits at ``GATE``
in every forward pass while a test holds it closed, so requests stay in flight as long as a test
needs, without sleeps (its warm-up is slow on purpose, so that its forward passes run in a worker
thread rather than on the event loop the test runs on). The last test runs the real server over a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml

from inferlane.core.errors import ConfigError, Conflict, InvalidInput, ModelNotFound
from inferlane.core.metrics import Metrics
from inferlane.lanes.online import OnlineLane
from inferlane.rollout.registry import ModelRegistry
from inferlane.rollout.router import Outcome, Route, sticky_point
from inferlane.testing import wait_until_async
from inferlane.testing.gate import Gate
from inferlane.transport.http.app import build_http_app
from tests.conftest import Server

pytestmark = pytest.mark.anyio


GATE = Gate()

MODEL = '''
import time

import numpy as np

from tests.rollout.test_hot_load import GATE


class Model:
    def load(self, version_dir):
        self.factor = float((version_dir / "factor.txt").read_text())
        self.fails = (version_dir / "fails").exists()
        self.gated = (version_dir / "gated").exists()

    def predict(self, batch):
        x = batch["x"]
        if self.gated:
            GATE.hold()
            if not np.abs(x).sum():
                time.sleep(0.03)  # a slow warm-up: the batcher runs this version off the event loop
        if self.fails and np.abs(x).sum() > 0:
            raise RuntimeError("this version fails on every real input")
        return {"y": x * self.factor}
'''


def write_version(repo: Path, version: int, factor: float, *, fails: bool = False, gated: bool = False) -> Path:
    d = repo / "m" / str(version)
    d.mkdir(parents=True)
    (d / "model.py").write_text(MODEL)
    (d / "factor.txt").write_text(str(factor))
    if fails:
        (d / "fails").touch()
    if gated:
        (d / "gated").touch()
    return d


def write_repo(repo: Path, versions: dict[int, float], **config: Any) -> Path:
    """Model ``m``, FP32 x [-1, 4] -> y; default version 1 unless ``config`` says otherwise."""
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python",
        "default_version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_batch_size": 1, "max_queue_size": 64, "max_queue_delay_ms": 0},
        "timeout_ms": 30_000,
        "warmup": {"inputs": [{"x": [[0.0, 0.0, 0.0, 0.0]]}]},
        **config,
    }))
    for v, factor in versions.items():
        write_version(repo, v, factor)
    return repo


@pytest.fixture
def gate() -> Iterator[Gate]:
    yield GATE
    GATE.open()


@contextlib.asynccontextmanager
async def serving(repo: Path, **registry_args: Any) -> AsyncIterator[
        tuple[httpx.AsyncClient, ModelRegistry, OnlineLane]]:
    metrics = Metrics()
    registry = ModelRegistry.from_repository(repo, observer_factory=metrics.batch_observer, **registry_args)
    await registry.load_all()
    lane = OnlineLane(registry, metrics)
    app = build_http_app(lane)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inferlane") as c:
            yield c, registry, lane
    finally:
        await lane.drain_shadows()
        await registry.close()


X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


def v2(x: np.ndarray = X, **extra: Any) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                     "data": x.ravel().tolist()}], **extra})


def answered_by(r: httpx.Response) -> str:
    """The version that computed an answer, from its numbers (y = x * factor, factor = version),
    after checking that the header says the same."""
    assert r.status_code == 200, r.text
    doc = r.json()
    y = doc["outputs"][0]["data"] if "outputs" in doc else np.ravel(doc["predictions"]).tolist()
    version = str(round(y[0] / float(X[0, 0])))
    assert r.headers["inferlane-model-version"] == version, (r.headers, y)
    if "model_version" in doc:
        assert doc["model_version"] == version
    return version


# --- routes -----------------------------------------------------------------------------------------

async def test_weights_route_their_share_and_the_header_names_the_version(tmp_path: Path) -> None:
    async with serving(write_repo(tmp_path, {1: 1.0, 2: 2.0})) as (c, registry, _):
        assert registry.versions("m") == ["1", "2"]
        assert {answered_by(await c.post("/v2/models/m/infer", content=v2())) for _ in range(20)} == {"1"}
        registry.router.set_route("m", Route("1", canary="2", canary_weight=0.25))
        answers = [answered_by(await c.post("/v2/models/m/infer", content=v2())) for _ in range(400)]
        v1 = await c.post("/v1/models/m:predict", content=orjson.dumps({"instances": X.tolist()}))
    share = answers.count("2") / len(answers)
    assert abs(share - 0.25) < 0.08, share  # binomial sd at 400 requests: 0.022
    assert answered_by(v1) in {"1", "2"}


async def test_a_routing_key_keeps_one_version_in_every_form(tmp_path: Path) -> None:
    """The header, V2 ``parameters.routing_key`` and V1 ``routing_key`` route one key the same way,
    every time, and where the router says; the key is not echoed back."""
    async with serving(write_repo(tmp_path, {1: 1.0, 2: 2.0})) as (c, registry, _):
        registry.router.set_route("m", Route("1", canary="2", canary_weight=0.5))
        seen: dict[str, set[str]] = {}
        for i in range(24):
            key = f"user-{i}"
            for _ in range(2):
                header = await c.post("/v2/models/m/infer", content=v2(), headers={"inferlane-routing-key": key})
                param = await c.post("/v2/models/m/infer", content=v2(parameters={"routing_key": key, "tag": 7}))
                v1 = await c.post("/v1/models/m:predict",
                                  content=orjson.dumps({"instances": X.tolist(), "routing_key": key}))
                seen.setdefault(key, set()).update({answered_by(header), answered_by(param), answered_by(v1)})
                assert param.json()["parameters"] == {"tag": 7}
        bad = await c.post("/v2/models/m/infer", content=v2(parameters={"routing_key": 5}))
        long = await c.post("/v2/models/m/infer", content=v2(), headers={"inferlane-routing-key": "k" * 1025})
    for key, versions in seen.items():
        assert versions == {"2" if sticky_point("m", key) < 0.5 else "1"}, key
    assert {v for vs in seen.values() for v in vs} == {"1", "2"}
    assert bad.status_code == 400 and "parameters.routing_key" in bad.json()["error"]
    assert long.status_code == 400 and "inferlane-routing-key" in long.json()["error"]


async def test_pinned_requests_always_reach_their_version(tmp_path: Path) -> None:
    async with serving(write_repo(tmp_path, {1: 1.0, 2: 2.0})) as (c, registry, _):
        registry.router.set_route("m", Route("1", canary="2", canary_weight=1.0))
        unpinned = {answered_by(await c.post("/v2/models/m/infer", content=v2())) for _ in range(10)}
        pinned = {answered_by(await c.post("/v2/models/m/versions/1/infer", content=v2(),
                                           headers={"inferlane-routing-key": "k"})) for _ in range(10)}
        v1 = answered_by(await c.post("/v1/models/m/versions/1:predict",
                                      content=orjson.dumps({"instances": X.tolist(), "routing_key": "k"})))
    assert unpinned == {"2"} and pinned == {"1"} and v1 == "1"


async def test_outcomes_are_reported_for_unpinned_requests_only(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, {1: 1.0})
    write_version(repo, 2, 2.0, fails=True)
    async with serving(repo) as (c, registry, _):
        outcomes: list[Outcome] = []
        registry.router.subscribe(outcomes.append)
        registry.router.set_route("m", Route("1", canary="2", canary_weight=1.0))
        failed = await c.post("/v2/models/m/infer", content=v2())
        registry.router.set_route("m", Route("1"))
        ok = await c.post("/v2/models/m/infer", content=v2())
        await c.post("/v2/models/m/versions/1/infer", content=v2())  # pinned: not reported
        await c.post("/v2/models/m/infer", content=v2(np.ones((1, 3), np.float32)))  # 400: not reported
    assert failed.status_code == 500 and failed.headers["inferlane-model-version"] == "2"
    assert answered_by(ok) == "1"
    assert [(o.version, o.ok, o.shadow) for o in outcomes] == [("2", False, False), ("1", True, False)]
    assert outcomes[0].outputs is None and outcomes[1].latency_s > 0
    assert outcomes[1].outputs is not None and np.array_equal(outcomes[1].outputs["y"], X)


# --- hot load -----------------------------------------------------------------------------------------

async def test_a_version_loads_while_serving_and_gets_traffic_only_once_routed(tmp_path: Path, gate: Gate) -> None:
    repo = write_repo(tmp_path, {1: 1.0})
    async with serving(repo) as (c, registry, _):
        assert (await c.post("/v2/models/m/versions/2/infer", content=v2())).status_code == 404
        write_version(repo, 2, 2.0, gated=True)
        gate.close()
        load = asyncio.ensure_future(registry.load_version("m", "2"))
        assert await asyncio.to_thread(gate.entered.wait, 10), "the warm-up never ran"
        # Warming up: not ready, not routable, and live traffic goes on.
        during = await c.post("/v2/models/m/versions/2/infer", content=v2())
        assert during.status_code == 503 and "loading or warming up" in during.json()["error"]
        assert not registry.is_ready("m", "2")
        with pytest.raises(InvalidInput, match="not loaded and ready"):
            registry.router.set_route("m", Route("1", canary="2", canary_weight=0.5))
        assert {answered_by(await c.post("/v2/models/m/infer", content=v2())) for _ in range(5)} == {"1"}
        gate.open()
        mv = await load
        assert mv.ready and registry.versions("m") == ["1", "2"]
        assert await registry.load_version("m", "2") is mv  # loading a loaded version returns it
        assert {answered_by(await c.post("/v2/models/m/infer", content=v2())) for _ in range(5)} == {"1"}
        assert answered_by(await c.post("/v2/models/m/versions/2/infer", content=v2())) == "2"
        registry.router.set_route("m", Route("2"))
        assert {answered_by(await c.post("/v2/models/m/infer", content=v2())) for _ in range(5)} == {"2"}
        meta = (await c.get("/v2/models/m")).json()
    assert meta["versions"] == ["1", "2"]


async def test_load_version_refusals(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, {1: 1.0})
    need = 2 * sum(p.stat().st_size for p in (repo / "m" / "1").iterdir())
    async with serving(repo, memory_budget_bytes=need + need // 2) as (_, registry, _lane):
        broken = write_version(repo, 3, 3.0)
        (broken / "model.py").write_text("class Other:\n    pass\n")
        with pytest.raises(ModelNotFound, match="no version folder"):
            await registry.load_version("m", "7")
        with pytest.raises(ModelNotFound, match="unknown model 'nope'"):
            await registry.load_version("nope", "1")
        with pytest.raises(InvalidInput, match="no class 'Model'"):
            await registry.load_version("m", "3")
        write_version(repo, 2, 2.0)
        with pytest.raises(InvalidInput, match=rf"needs about {need} bytes and the loaded versions take {need}: "
                                               rf"over the memory budget of {need + need // 2} bytes "
                                               r"\(INFERLANE_MEMORY_BUDGET_BYTES\)"):
            await registry.load_version("m", "2")
        assert registry.versions("m") == ["1"]
        registry.memory_budget_bytes = 2 * need
        assert (await registry.load_version("m", "2")).ready
        with pytest.raises(ModelNotFound):
            registry.router.set_route("nope", Route("1"))


def test_a_wrong_memory_budget_variable_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLANE_MEMORY_BUDGET_BYTES", "lots")
    with pytest.raises(ConfigError, match="INFERLANE_MEMORY_BUDGET_BYTES must be a positive number of bytes"):
        ModelRegistry.from_repository(write_repo(tmp_path, {1: 1.0}))
    monkeypatch.setenv("INFERLANE_MEMORY_BUDGET_BYTES", "123456")
    assert ModelRegistry.from_repository(tmp_path).memory_budget_bytes == 123456


# --- unload --------------------------------------------------------------------------------------------

async def test_unload_lets_requests_in_flight_finish(tmp_path: Path, gate: Gate) -> None:
    repo = write_repo(tmp_path, {1: 1.0})
    write_version(repo, 2, 2.0, gated=True)
    async with serving(repo) as (c, registry, _):
        with pytest.raises(Conflict, match="is in its route"):
            await registry.unload_version("m", "1")
        mv = registry.get("m", "2")
        assert mv.batcher is not None
        gate.close()
        inflight = [asyncio.ensure_future(c.post("/v2/models/m/versions/2/infer", content=v2())) for _ in range(6)]
        assert await asyncio.to_thread(gate.entered.wait, 10), "no batch reached the model"
        batcher = mv.batcher
        await wait_until_async(lambda: batcher.queue_depth == 5, "five requests queue behind the running one")
        unload = asyncio.ensure_future(registry.unload_version("m", "2"))
        await wait_until_async(lambda: not mv.ready, "the version stops taking requests")
        refused = await c.post("/v2/models/m/versions/2/infer", content=v2())
        assert refused.status_code == 503 and "unloading" in refused.json()["error"]
        assert not unload.done()
        assert {answered_by(await c.post("/v2/models/m/infer", content=v2())) for _ in range(3)} == {"1"}
        gate.open()
        answers = await asyncio.gather(*inflight)
        await unload
        assert registry.versions("m") == ["1"]
        after = await c.post("/v2/models/m/versions/2/infer", content=v2())
        with pytest.raises(ModelNotFound, match="not loaded"):
            await registry.unload_version("m", "2")
    assert [answered_by(r) for r in answers] == ["2"] * 6
    assert after.status_code == 503 and "not loaded" in after.json()["error"]


async def test_an_unpinned_request_read_while_its_version_unloads_goes_to_the_new_route(tmp_path: Path) -> None:
    async with serving(write_repo(tmp_path, {1: 1.0, 2: 2.0})) as (_, registry, lane):
        registry.router.set_route("m", Route("2"))
        mv = registry.get("m")  # as the infer route does before reading the body
        registry.router.set_route("m", Route("1"))
        await registry.unload_version("m", "2")
        result = await lane.infer_on(mv, {"x": X}, routed=True)
    assert result.model.version == "1"


# --- shadow ---------------------------------------------------------------------------------------------

async def test_a_failing_shadow_never_changes_a_live_answer(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, {1: 1.0, 2: 2.0})
    write_version(repo, 3, 3.0, fails=True)
    async with serving(repo) as (c, registry, lane):
        outcomes: list[Outcome] = []
        registry.router.subscribe(outcomes.append)
        registry.router.set_route("m", Route("1", shadow="3", shadow_fraction=1.0))
        bad_shadow = [await c.post("/v2/models/m/infer", content=v2()) for _ in range(10)]
        await lane.drain_shadows()
        registry.router.set_route("m", Route("1", shadow="2", shadow_fraction=1.0))
        good_shadow = [await c.post("/v2/models/m/infer", content=v2()) for _ in range(10)]
        await lane.drain_shadows()
    assert [answered_by(r) for r in bad_shadow + good_shadow] == ["1"] * 20
    assert all(r.json()["outputs"][0]["data"] == X.ravel().tolist() for r in bad_shadow + good_shadow)
    live = [o for o in outcomes if not o.shadow]
    shadows = [o for o in outcomes if o.shadow]
    assert [o.version for o in live] == ["1"] * 20 and all(o.ok for o in live)
    assert [(o.version, o.ok) for o in shadows] == [("3", False)] * 10 + [("2", True)] * 10
    for o in shadows:
        assert o.live_outputs is not None and np.array_equal(o.live_outputs["y"], X)
    for o in shadows[10:]:
        assert o.outputs is not None and np.array_equal(o.outputs["y"], X * 2)


async def test_shadow_copies_are_bounded_and_never_awaited(tmp_path: Path, gate: Gate) -> None:
    repo = write_repo(tmp_path, {1: 1.0})
    write_version(repo, 2, 2.0, gated=True)
    async with serving(repo) as (c, registry, lane):
        lane.shadow_limit = 2
        registry.router.set_route("m", Route("1", shadow="2", shadow_fraction=1.0))
        gate.close()
        # The shadow copies are held at the gate: the live answers come back all the same.
        answers = [await c.post("/v2/models/m/infer", content=v2()) for _ in range(5)]
        assert await asyncio.to_thread(gate.entered.wait, 10), "no shadow copy reached the model"
        assert [answered_by(r) for r in answers] == ["1"] * 5
        dropped = lane.metrics.registry.get_sample_value(
            "inferlane_shadow_dropped_total", {"model": "m", "version": "2", "lane": "shadow"})
        gate.open()
        await lane.drain_shadows()
        served = lane.metrics.registry.get_sample_value(
            "inferlane_requests_total", {"model": "m", "version": "2", "lane": "shadow", "status": "200"})
    assert dropped == 3 and served == 2


# --- the real server ---------------------------------------------------------------------------------

def test_the_real_server_names_the_answering_version(server: Server) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
                         "parameters": {"routing_key": "user-1"}})
    r = httpx.post(f"{server.url}/v2/models/slow/infer", content=body,
                   headers={"inferlane-routing-key": "user-1"}, timeout=30)
    v1 = httpx.post(f"{server.url}/v1/models/slow:predict",
                    content=orjson.dumps({"instances": [[1, 2, 3, 4]], "routing_key": "user-1"}), timeout=30)
    assert r.status_code == 200 and r.headers["inferlane-model-version"] == "1"
    assert "parameters" not in r.json()
    assert v1.status_code == 200 and v1.headers["inferlane-model-version"] == "1"
