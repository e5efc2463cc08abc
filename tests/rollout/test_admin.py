"""The admin API (/v2/admin), in process: the app ``create_app`` builds, with its own lifespan (models
loaded in the background, stored rollouts resumed, the controller running), over httpx's ASGITransport.

Covers the token (401 without, 403 wrong, works right, 404 everywhere when none is configured), the
refusals (400 naming the field, 404 unknown model or version, 409 a second rollout or unloading a
routed version) and each route doing its work on a real registry and rollout controller.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from inferlane.core.errors import InvalidInput
from inferlane.rollout.registry import ModelRegistry
from inferlane.server.app import create_app
from inferlane.server.settings import ServerSettings
from inferlane.testing import wait_until_async
from inferlane.transport.http.admin import rollout_spec

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

VERSION_MODEL = '''
import time


class Model:
    """y = scale * x; ``behaviour.txt`` may make it slow, or fail on inputs whose first value is small."""

    def load(self, version_dir):
        spec = dict(item.split("=") for item in (version_dir / "behaviour.txt").read_text().split())
        self.scale = float(spec.get("scale", "2"))
        self.fail_below = float(spec.get("fail_below", "0"))
        self.delay = float(spec.get("delay", "0"))

    def predict(self, batch):
        x = batch["x"]
        if self.delay:
            time.sleep(self.delay)
        if (x[:, 0] < self.fail_below).any():
            raise ValueError(f"this version fails on inputs whose first value is below {self.fail_below}")
        return {"y": x * self.scale}
'''


def write_version(repo: Path, version: str, name: str = "m", **behaviour: float) -> Path:
    """``<repo>/<name>/<version>/``: the model class and its behaviour (scale, fail_below, delay)."""
    d = repo / name / version
    d.mkdir(parents=True, exist_ok=True)
    (d / "behaviour.txt").write_text(" ".join(f"{k}={v}" for k, v in behaviour.items()) or "scale=2")
    (d / "model.py").write_text(VERSION_MODEL)
    return d


def write_versioned_model(repo: Path, versions: dict[str, dict[str, float]], name: str = "m",
                          max_batch_size: int = 32) -> Path:
    """A Python-class model on FP32 x[-1, 4] -> y[-1, 4] with the given versions and behaviours."""
    (repo / name).mkdir(parents=True, exist_ok=True)
    (repo / name / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_batch_size": max_batch_size, "max_queue_size": 4096, "max_queue_delay_ms": 0},
        "timeout_ms": 10_000,
        "warmup": {"inputs": [{"x": [[0.5, 0.5, 0.5, 0.5]]}]},
    }))
    for version, behaviour in versions.items():
        write_version(repo, version, name, **behaviour)
    return repo / name


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """``m`` with versions 1 and 2 (the same function: a rollout between them passes every check)."""
    write_versioned_model(tmp_path / "models", {"1": {}, "2": {}})
    return tmp_path / "models"


@contextlib.asynccontextmanager
async def admin_client(repo: Path, tmp_path: Path, token: str | None = TOKEN
                       ) -> AsyncIterator[tuple[httpx.AsyncClient, ModelRegistry]]:
    """A client of ``create_app``'s app, its lifespan running and its models loaded."""
    settings = ServerSettings(model_repository=repo, admin_token=token, jobs_workers=0,
                              jobs_store=f"sqlite:///{tmp_path / 'jobs.db'}",
                              rollout_store=f"sqlite:///{tmp_path / 'rollouts.db'}")
    app = create_app(settings)
    registry: ModelRegistry = app.state.registry
    async with app.app.router.lifespan_context(app.app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        await wait_until_async(lambda: registry.ready, "the models are loaded")
        yield c, registry


ADMIN_CALLS = [
    ("POST", "/v2/admin/models/m/versions/2/load"),
    ("POST", "/v2/admin/models/m/versions/2/unload"),
    ("GET", "/v2/admin/routes"),
    ("POST", "/v2/admin/rollouts/m"),
    ("GET", "/v2/admin/rollouts"),
    ("GET", "/v2/admin/rollouts/m"),
    ("POST", "/v2/admin/rollouts/m/promote"),
    ("POST", "/v2/admin/rollouts/m/abort"),
    ("GET", "/v2/admin/rollouts/m/history"),
]


# --- the token ---------------------------------------------------------------------------------------------

async def test_without_a_configured_token_every_admin_path_is_absent(repo: Path, tmp_path: Path) -> None:
    async with admin_client(repo, tmp_path, token=None) as (c, registry):
        for method, path in ADMIN_CALLS:
            r = await c.request(method, path, headers=AUTH, json={"to": "2"})
            assert r.status_code == 404, (path, r.text)
            assert r.json() == {"error": f"no route {path!r} (see /openapi.json)"}  # as for any unknown path
        assert registry.versions("m") == ["1", "2"]  # nothing was unloaded


async def test_no_token_is_401_a_wrong_one_403_the_right_one_works(repo: Path, tmp_path: Path) -> None:
    async with admin_client(repo, tmp_path) as (c, registry):
        for method, path in ADMIN_CALLS:
            missing = await c.request(method, path)
            assert missing.status_code == 401, (path, missing.text)
            assert "INFERLANE_ADMIN_TOKEN" in missing.json()["error"]
            basic = await c.request(method, path, headers={"Authorization": f"Basic {TOKEN}"})
            assert basic.status_code == 401, (path, basic.text)
            wrong = await c.request(method, path, headers={"Authorization": f"Bearer {TOKEN}x"})
            assert wrong.status_code == 403, (path, wrong.text)
            assert TOKEN not in wrong.text
        assert registry.versions("m") == ["1", "2"]  # refused calls did nothing
        r = await c.get("/v2/admin/routes", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json() == {"routes": {"m": {"stable": "2", "canary": None, "canary_weight": 0.0,
                                             "shadow": None, "shadow_fraction": 0.0}}}


def test_a_short_admin_token_is_refused_naming_the_variable(repo: Path) -> None:
    from inferlane.core.errors import ConfigError

    with pytest.raises(ConfigError, match="INFERLANE_ADMIN_TOKEN must be at least 16 characters"):
        ServerSettings.from_env(model_repository=repo, admin_token="short")


# --- versions ----------------------------------------------------------------------------------------------

async def test_hot_load_and_unload_a_version(repo: Path, tmp_path: Path) -> None:
    async with admin_client(repo, tmp_path) as (c, registry):
        write_version(repo, "3", scale=3)
        r = await c.post("/v2/admin/models/m/versions/3/load", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json() == {"model": "m", "version": "3", "loaded": True, "versions": ["1", "2", "3"]}
        # Loaded and ready, but no traffic: the route still names version 2 only.
        assert registry.router.route("m").versions() == ("2",)
        pinned = await c.post("/v2/models/m/versions/3/infer", json=_infer([1, 1, 1, 1]))
        assert pinned.status_code == 200 and pinned.json()["outputs"][0]["data"] == [3.0] * 4

        routed = await c.post("/v2/admin/models/m/versions/2/unload", headers=AUTH)
        assert routed.status_code == 409 and "route" in routed.json()["error"]
        r = await c.post("/v2/admin/models/m/versions/1/unload", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["versions"] == ["2", "3"] and registry.versions("m") == ["2", "3"]
        gone = await c.post("/v2/models/m/versions/1/infer", json=_infer([1, 1, 1, 1]))
        assert gone.status_code == 503

        assert (await c.post("/v2/admin/models/m/versions/9/load", headers=AUTH)).status_code == 404
        assert (await c.post("/v2/admin/models/nope/versions/1/load", headers=AUTH)).status_code == 404
        assert (await c.post("/v2/admin/models/m/versions/9/unload", headers=AUTH)).status_code == 404
        bad = await c.post("/v2/admin/models/m/versions/3/unload?drain_timeout_s=soon", headers=AUTH)
        assert bad.status_code == 400 and "drain_timeout_s" in bad.json()["error"]


def _infer(row: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": row}]}


# --- rollouts ----------------------------------------------------------------------------------------------

BAD_BODIES = [
    ({"canary": 5}, "to"),
    ({"to": "two"}, "to"),
    ({"to": "2", "steps": [5, 25, 50]}, "steps must end at 100"),
    ({"to": "2", "steps": [5, 50, 25, 100]}, "steps must increase"),
    ({"to": "2", "steps": [0, 100]}, "steps[0]"),
    ({"to": "2", "steps": "5,25,100"}, "steps"),
    ({"to": "2", "canary": 150}, "canary"),
    ({"to": "2", "canary": 0}, "canary"),
    ({"to": "2", "shadow": -1}, "shadow"),
    ({"to": "2", "max_error_rate": 2}, "max_error_rate"),
    ({"to": "2", "window_s": "60s"}, "window_s"),
    ({"to": "2", "min_samples": 2.5}, "min_samples"),
    ({"to": "2", "min_samples": True}, "min_samples"),
    ({"to": "2", "max_psi": None, "colour": "blue"}, "unknown field 'colour'"),
    ([1, 2], "JSON object"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES, ids=[f for _, f in BAD_BODIES])
def test_a_malformed_rollout_is_refused_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidInput, match=field.replace("[", r"\[").replace("]", r"\]")):
        rollout_spec("m", body)


def test_a_rollout_body_becomes_the_spec_it_asks_for() -> None:
    spec = rollout_spec("m", {"to": 3, "steps": [10, 50, 100], "window_s": 2, "min_samples": 50,
                              "max_error_rate": 0.05, "max_p99_ratio": 2, "max_psi": 0.3, "shadow": 0})
    assert (spec.model, spec.to_version, spec.canary_pct, spec.steps) == ("m", "3", 10.0, (10.0, 50.0, 100.0))
    assert (spec.window_s, spec.min_samples, spec.max_error_rate, spec.max_p99_ratio, spec.max_psi) == \
        (2.0, 50, 0.05, 2.0, 0.3)
    assert rollout_spec("m", {"to": "3", "canary": 1}).percents == (1.0, 5.0, 25.0, 50.0, 100.0)


async def test_start_status_conflict_abort_and_history(repo: Path, tmp_path: Path) -> None:
    async with admin_client(repo, tmp_path) as (c, registry):
        # Version 2 is the default; roll "back" to 1 as the new version (any loaded-or-loadable version works).
        bad = await c.post("/v2/admin/rollouts/m", headers=AUTH, json={"to": "1", "steps": [5, 50]})
        assert bad.status_code == 400 and "steps must end at 100" in bad.json()["error"]
        unknown = await c.post("/v2/admin/rollouts/nope", headers=AUTH, json={"to": "1"})
        assert unknown.status_code == 404
        missing = await c.post("/v2/admin/rollouts/m", headers=AUTH, json={"to": "7"})
        assert missing.status_code == 404, missing.text
        assert (await c.get("/v2/admin/rollouts/m", headers=AUTH)).status_code == 404  # none yet

        r = await c.post("/v2/admin/rollouts/m", headers=AUTH,
                         json={"to": "1", "canary": 10, "window_s": 60, "min_samples": 1000})
        assert r.status_code == 201, r.text
        started = r.json()
        assert (started["stable"], started["canary"], started["state"]) == ("2", "1", "running")
        assert started["weight"] == pytest.approx(0.1) and started["spec"]["canary_pct"] == 10
        route = (await c.get("/v2/admin/routes", headers=AUTH)).json()["routes"]["m"]
        assert (route["stable"], route["canary"], route["canary_weight"]) == ("2", "1", pytest.approx(0.1))

        again = await c.post("/v2/admin/rollouts/m", headers=AUTH, json={"to": "1"})
        assert again.status_code == 409, again.text
        assert (await c.get("/v2/admin/rollouts/m", headers=AUTH)).json()["state"] == "running"
        listed = (await c.get("/v2/admin/rollouts", headers=AUTH)).json()["rollouts"]
        assert [(s["model"], s["state"]) for s in listed] == [("m", "running")]

        bad_abort = await c.post("/v2/admin/rollouts/m/abort", headers=AUTH, json={"why": "x"})
        assert bad_abort.status_code == 400
        r = await c.post("/v2/admin/rollouts/m/abort", headers=AUTH, json={"reason": "wrong version"})
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["stable"]) == ("aborted", "2")
        assert registry.router.route("m").versions() == ("2",)

        history = (await c.get("/v2/admin/rollouts/m/history", headers=AUTH)).json()
        kinds = [e["kind"] for e in history["events"]]
        assert kinds[0] == "started" and kinds[-1] == "aborted", kinds
        assert "wrong version" in str(history["events"][-1]["detail"])
        one = (await c.get("/v2/admin/rollouts/m/history?limit=1", headers=AUTH)).json()["events"]
        assert [e["kind"] for e in one] == ["aborted"]
        assert (await c.get("/v2/admin/rollouts/m/history?limit=0", headers=AUTH)).status_code == 400


async def test_promote_sends_everything_to_the_new_version(repo: Path, tmp_path: Path) -> None:
    async with admin_client(repo, tmp_path) as (c, registry):
        assert (await c.post("/v2/admin/rollouts/m/promote", headers=AUTH)).status_code in (404, 409)
        r = await c.post("/v2/admin/rollouts/m", headers=AUTH, json={"to": "1", "window_s": 60, "drain_s": 0})
        assert r.status_code == 201, r.text
        r = await c.post("/v2/admin/rollouts/m/promote", headers=AUTH)
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["stable"]) == ("promoted", "1")
        assert registry.router.route("m").versions() == ("1",)
        answer = await c.post("/v2/models/m/infer", json=_infer([1, 1, 1, 1]))
        assert answer.status_code == 200 and answer.headers["inferlane-model-version"] == "1"
        await wait_until_async(lambda: registry.versions("m") == ["1"], "the old version is unloaded after the drain")
