"""HTTP routes and error mapping, in process: the ASGI app over httpx's ASGITransport, no server
subprocess and no socket. Each test builds the app the way the server does (registry, online lane,
``build_http_app``) and loads the registry itself, since ASGITransport does not run the lifespan; the
last test runs ``create_app``'s own lifespan.

Every row of the error table in DESIGN.md ("Error semantics") has a test here: 400 malformed, 404
unknown model or version, 413 too large, 503 + Retry-After when the queue is full, 503 not ready, 504
deadline, plus 405 for a wrong method and 404 for an unknown route.

The ``echo`` model holds each batch at ``GATE`` while a test closes it, so a test decides when a
forward pass ends: the queue fills and deadlines pass behind it as events, not as sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml

from inferlane.core.metrics import Metrics
from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model
from inferlane.demo.models import synthetic_transactions
from inferlane.lanes.online import OnlineLane
from inferlane.rollout.registry import ModelRegistry
from inferlane.server.app import create_app
from inferlane.server.settings import ServerSettings
from inferlane.testing import wait_until_async
from inferlane.testing.gate import Gate
from inferlane.transport.http.app import build_http_app
from tests.conftest import X4, write_python_model

pytestmark = pytest.mark.anyio

MAX_QUEUE = 2
ECHO_LIMITS = {"max_request_bytes": 4096, "max_elements_per_input": 64}


GATE = Gate()

ECHO_MODEL = '''
from tests.test_http_routes import GATE


class Model:
    def predict(self, batch):
        GATE.hold()
        return {"y": batch["x"] * 2.0}
'''


@pytest.fixture(scope="module")
def echo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``echo``: y = 2x on FP32 [-1, 4]; one request per batch, a queue of MAX_QUEUE, small limits."""
    repo = tmp_path_factory.mktemp("echo-models")
    write_python_model(repo, "echo", ECHO_MODEL, {
        **X4,
        "batching": {"max_batch_size": 1, "max_queue_size": MAX_QUEUE, "max_queue_delay_ms": 0,
                     "max_inflight_batches": 1},
        "limits": ECHO_LIMITS,
        "timeout_ms": 30_000,
        "warmup": {"batch_sizes": []},
    })
    return repo


@pytest.fixture
def gate() -> Iterator[Gate]:
    """The echo model's gate, open again after the test (a held batch would stall the registry's close)."""
    yield GATE
    GATE.open()


@contextlib.asynccontextmanager
async def serving(repo: Path, *, load: bool = True) -> AsyncIterator[tuple[httpx.AsyncClient, ModelRegistry]]:
    """A client of the HTTP app over ``repo``'s models (loaded and warmed up unless ``load`` is
    False), and the app's registry."""
    metrics = Metrics()
    registry = ModelRegistry.from_repository(repo, observer_factory=metrics.batch_observer)
    if load:
        await registry.load_all()
    app = build_http_app(OnlineLane(registry, metrics))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inferlane") as c:
            yield c, registry
    finally:
        await registry.close()


@contextlib.asynccontextmanager
async def app_client(repo: Path, *, load: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(repo, load=load) as (client, _):
        yield client


def v2(x: np.ndarray, name: str = "x", **extra: Any) -> bytes:
    return orjson.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape),
                                     "data": x.ravel().tolist()}], **extra})


def fraud_forward(model_repo: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    entry = scan_model(model_repo / "fraud")
    return ModelVersion.load(entry.config, entry.path, "1").forward({"features": x})


ONE = np.ones((1, 4), np.float32)


# --- health, metadata, inference --------------------------------------------------------------------

async def test_health_metadata_and_readiness_once_loaded(model_repo: Path) -> None:
    async with app_client(model_repo) as c:
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        assert (await c.get("/v2/health/ready")).json() == {"ready": True}
        server = (await c.get("/v2")).json()
        assert server["name"] == "inferlane" and "binary_tensor_data" in server["extensions"]
        meta = (await c.get("/v2/models/fraud")).json()
        assert meta["name"] == "fraud" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}]
        assert (await c.get("/v2/models/fraud/versions/1")).json()["versions"] == ["1"]
        for path in ("/v2/models/fraud/ready", "/v2/models/fraud/versions/1/ready"):
            r = await c.get(path)
            assert (r.status_code, r.json()) == (200, {"name": "fraud", "ready": True})
        assert "/v2/models/{name}/infer" in (await c.get("/openapi.json")).json()["paths"]


async def test_v2_infer_gives_the_model_outputs(model_repo: Path) -> None:
    x, _ = synthetic_transactions(3, seed=51)
    async with app_client(model_repo) as c:
        r = await c.post("/v2/models/fraud/versions/1/infer", content=v2(x, name="features", id="req-7"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("fraud", "1", "req-7")
    outputs = {o["name"]: o for o in doc["outputs"]}
    want = fraud_forward(model_repo, x)
    assert np.array_equal(np.asarray(outputs["probabilities"]["data"], np.float32).reshape(3, 2),
                          want["probabilities"])
    assert outputs["label"]["data"] == want["label"].tolist()
    assert r.headers["server-timing"].startswith("queue;dur=")


async def test_v1_predict(model_repo: Path) -> None:
    x, _ = synthetic_transactions(2, seed=52)
    want = fraud_forward(model_repo, x)
    async with app_client(model_repo) as c:
        r = await c.post("/v1/models/fraud:predict", content=orjson.dumps({"instances": x.tolist()}))
        one = await c.post("/v1/models/fraud/versions/1:predict",
                           content=orjson.dumps({"instances": [{"features": x[0].tolist()}]}))
        bad = await c.post("/v1/models/fraud:predict", content=b'{"instances": "x"}')
        unknown = await c.post("/v1/models/nope:predict", content=orjson.dumps({"instances": x.tolist()}))
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["label"] for p in predictions] == want["label"].tolist()
    assert np.array_equal(np.asarray([p["probabilities"] for p in predictions], np.float32), want["probabilities"])
    assert one.status_code == 200 and one.json()["predictions"][0]["label"] == int(want["label"][0])
    assert bad.status_code == 400 and "error" in bad.json()
    assert unknown.status_code == 404


# --- the error table ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", "JSON"),
    (orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [0.0] * 4}]}),
     "datatype must be FP32"),
    (v2(np.ones((1, 3), np.float32)), "shape [1, 3] does not match [-1, 4]"),
    (v2(ONE, name="z"), "unexpected ['z']"),
])
async def test_malformed_requests_are_400_naming_the_problem(echo_repo: Path, body: bytes, words: str) -> None:
    async with app_client(echo_repo) as c:
        r = await c.post("/v2/models/echo/infer", content=body)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


async def test_a_bad_timeout_header_is_400(echo_repo: Path) -> None:
    async with app_client(echo_repo) as c:
        r = await c.post("/v2/models/echo/infer", content=v2(ONE), headers={"inferlane-timeout-ms": "soon"})
    assert r.status_code == 400 and "inferlane-timeout-ms" in r.json()["error"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/models/nope/infer"),
    ("POST", "/v2/models/echo/versions/9/infer"),
    ("GET", "/v2/models/nope"),
    ("GET", "/v2/models/echo/versions/9"),
    ("GET", "/v2/models/nope/ready"),
    ("POST", "/v1/models/echo/versions/9:predict"),
])
async def test_unknown_model_or_version_is_404(echo_repo: Path, method: str, path: str) -> None:
    async with app_client(echo_repo) as c:
        r = await c.request(method, path, content=v2(ONE) if method == "POST" else None)
    assert r.status_code == 404, r.text
    assert "nope" in r.json()["error"] or "no version '9'" in r.json()["error"]


async def test_too_large_is_413(echo_repo: Path) -> None:
    async with app_client(echo_repo) as c:
        body = await c.post("/v2/models/echo/infer", content=b"{" + b" " * ECHO_LIMITS["max_request_bytes"] + b"}")
        tensor = await c.post("/v2/models/echo/infer", content=v2(np.ones((17, 4), np.float32)))  # 68 > 64
    assert body.status_code == 413 and "exceeds the model's limit" in body.json()["error"]
    assert tensor.status_code == 413 and "the limit is 64 per input" in tensor.json()["error"]


async def test_a_full_queue_is_503_with_retry_after(echo_repo: Path, gate: Gate) -> None:
    async with serving(echo_repo) as (c, registry):
        batcher = registry.get("echo").batcher
        assert batcher is not None
        gate.close()
        held = [asyncio.ensure_future(c.post("/v2/models/echo/infer", content=v2(ONE)))]
        assert await asyncio.to_thread(gate.entered.wait, 10), "no batch reached the model"
        held += [asyncio.ensure_future(c.post("/v2/models/echo/infer", content=v2(ONE))) for _ in range(MAX_QUEUE)]
        await wait_until_async(lambda: batcher.queue_depth == MAX_QUEUE, "the queue is full")
        # One request in the model (held at the gate), MAX_QUEUE in the queue: the next ones are refused.
        refused = [await c.post("/v2/models/echo/infer", content=v2(ONE)) for _ in range(3)]
        gate.open()
        served = await asyncio.gather(*held)
    for r in refused:
        assert r.status_code == 503, r.text
        assert "max_queue_size" in r.json()["error"]
        assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
    assert [r.status_code for r in served] == [200] * (1 + MAX_QUEUE)


async def test_not_loaded_is_503(echo_repo: Path) -> None:
    async with app_client(echo_repo, load=False) as c:
        ready = await c.get("/v2/health/ready")
        model_ready = await c.get("/v2/models/echo/ready")
        infer = await c.post("/v2/models/echo/infer", content=v2(ONE))
        v1 = await c.post("/v1/models/echo:predict", content=orjson.dumps({"instances": [[1, 2, 3, 4]]}))
        live = await c.get("/v2/health/live")
    assert (ready.status_code, ready.json()) == (503, {"ready": False})
    assert (model_ready.status_code, model_ready.json()) == (503, {"name": "echo", "ready": False})
    assert infer.status_code == v1.status_code == 503
    assert "not ready" in infer.json()["error"]
    assert "retry-after" not in infer.headers
    assert live.status_code == 200


async def test_a_passed_deadline_is_504(echo_repo: Path, gate: Gate) -> None:
    async with app_client(echo_repo) as c:
        before = await c.post("/v2/models/echo/infer", content=v2(ONE), headers={"inferlane-timeout-ms": "0"})
        gate.close()
        running = asyncio.ensure_future(c.post("/v2/models/echo/infer", content=v2(ONE)))
        assert await asyncio.to_thread(gate.entered.wait, 10), "no batch reached the model"
        # Queued behind the held batch, this request's 50 ms deadline passes while it waits.
        queued = await c.post("/v2/models/echo/infer", content=v2(ONE), headers={"inferlane-timeout-ms": "50"})
        gate.open()
        first = await running
    assert before.status_code == 504 and "deadline" in before.json()["error"]
    assert queued.status_code == 504 and "deadline" in queued.json()["error"]
    assert first.status_code == 200


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/v2/models/echo/infer", "POST"),
    ("DELETE", "/v2/health/live", "GET"),
    ("PUT", "/v1/models/echo:predict", "POST"),
])
async def test_a_wrong_method_is_405_with_allow(echo_repo: Path, method: str, path: str, allowed: str) -> None:
    async with app_client(echo_repo) as c:
        r = await c.request(method, path)
    assert r.status_code == 405, r.text
    assert allowed in r.headers["allow"]
    assert f"method {method} is not allowed" in r.json()["error"]


@pytest.mark.parametrize("path", ["/", "/v3/models/echo/infer", "/v2/models/echo/infer/more", "/v2/models//infer"])
async def test_an_unknown_route_is_404(echo_repo: Path, path: str) -> None:
    async with app_client(echo_repo) as c:
        r = await c.post(path, content=v2(ONE))
    assert r.status_code == 404, r.text
    assert "no route" in r.json()["error"]


# --- the composition root -------------------------------------------------------------------------------

async def test_create_app_serves_once_its_lifespan_has_loaded_the_models(echo_repo: Path, tmp_path: Path) -> None:
    settings = ServerSettings(model_repository=echo_repo, jobs_store=f"sqlite:///{tmp_path / 'jobs.db'}",
                              jobs_workers=0)
    app = create_app(settings)
    starlette = app.app
    async with starlette.router.lifespan_context(starlette), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:  # listening on loopback
        assert (await c.get("/v2/health/live")).status_code == 200
        # The lifespan loads the models in the background; readiness is what says it is done.
        deadline = time.monotonic() + 30
        while (await c.get("/v2/health/ready")).status_code != 200:
            assert time.monotonic() < deadline, "not ready after 30 s"
            await asyncio.sleep(0.01)
        r = await c.post("/v2/models/echo/infer", content=v2(ONE))
        job = await c.post("/v2/models/echo/jobs", content=v2(ONE))
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0] * 4
    assert job.status_code == 202 and job.json()["status"] == "queued"


# --- what a failing model tells clients ---------------------------------------------------------------

LEAKY_MODEL = '''
class Model:
    def load(self, version_dir):
        self.secret = version_dir / "weights.bin"
        if (version_dir / "fail-load").exists():
            raise RuntimeError(f"cannot open {self.secret}")

    def predict(self, batch):
        if batch["x"].sum() > 1e6:
            raise ValueError(f"overflow reading {self.secret}")
        return {"y": batch["x"]}
'''


def write_leaky_model(repo: Path, *, fail_load: bool) -> Path:
    d = repo / "leaky"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.py").write_text(LEAKY_MODEL)
    if fail_load:
        (d / "1" / "fail-load").write_text("")
    (d / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "warmup": {"batch_sizes": [1]},
    }))
    return d


def request_id(message: str) -> str:
    found = re.search(r"\(request id ([0-9a-f]{16}); the server log has the details\)", message)
    assert found, message
    return found.group(1)


async def test_a_model_failure_reaches_the_client_as_a_request_id(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    d = write_leaky_model(tmp_path, fail_load=False)
    async with app_client(tmp_path) as c:
        r = await c.post("/v2/models/leaky/infer", content=v2(np.full((1, 4), 1e7, np.float32)))
    assert r.status_code == 500
    assert str(d) not in r.text and "overflow" not in r.text
    rid = request_id(r.json()["error"])
    assert r.json()["error"].startswith("the model failed on this request")
    logged = [rec.getMessage() for rec in caplog.records if rid in rec.getMessage()]
    assert logged and str(d / "1" / "weights.bin") in logged[0]


async def test_a_load_failure_reaches_the_client_as_a_request_id(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    d = write_leaky_model(tmp_path, fail_load=True)
    async with serving(tmp_path, load=False) as (c, registry):
        with pytest.raises(Exception, match="cannot open"):
            await registry.load_all()
        r = await c.get("/v2/health/ready")
        again = await c.get("/v2/health/ready")
    assert r.status_code == 503
    assert str(d) not in r.text and "cannot open" not in r.text
    assert again.json() == r.json()  # one id per failure, logged once
    rid = request_id(r.json()["error"])
    assert r.json()["error"].startswith("model loading failed")
    assert any(rid in rec.getMessage() and str(d) in rec.getMessage() for rec in caplog.records)
