"""Drift monitoring (rollout/drift.py): the window logic on known values, then the real parts.

- a Track's ring keeps exactly the newest ``window_size`` predictions and counts them exactly;
- through ``create_app``'s app (ASGITransport, a real registry and versions written here): identical
  traffic measures a PSI near 0; shifted inputs (so shifted outputs) measure a PSI over 0.2, set
  ``inferlane_drift_psi`` and show as ``shifted`` in ``GET /v2/admin/models/{name}/drift``;
- a promoted version starts a fresh reference; an unloaded one is forgotten, its gauge removed;
- a reference written by the real batch lane (``run_batch``) is read, and JSONL in the batch format too;
- a bad ``drift:`` block or reference file is one line naming the field or the file;
- ``inferlane models drift`` against the real ``inferlane serve``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from inferlane.cli.main import main
from inferlane.core.errors import ConfigError
from inferlane.core.metrics import Metrics
from inferlane.core.repository import scan_repository
from inferlane.lanes.batch import BatchJob, run_batch
from inferlane.rollout.drift import FOLD_EVERY, DriftMonitor, Reference, Track, read_reference
from inferlane.rollout.registry import ModelRegistry
from inferlane.rollout.router import Outcome
from inferlane.rollout.stats import bin_index
from inferlane.server.app import create_app
from inferlane.server.settings import ServerSettings
from inferlane.testing import ServerProcess, serve, serve_or_fail, wait_until_async
from tests.rollout.test_admin import AUTH, TOKEN, admin_client, write_versioned_model

SIZE = 200
"""reference_size and window_size of the test models (in predictions)."""
ROWS = 8
"""Rows per request: 25 requests fill a reference or a window."""


def add_drift(model_dir: Path, **drift: Any) -> None:
    cfg = yaml.safe_load((model_dir / "model.yaml").read_text())
    cfg["drift"] = {"reference_size": SIZE, "window_size": SIZE, **drift}
    (model_dir / "model.yaml").write_text(yaml.safe_dump(cfg))


def rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return (rng.random((n, 4)) + shift).astype(np.float32)


def body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


async def send(c: httpx.AsyncClient, rng: np.random.Generator, requests: int, shift: float = 0.0) -> None:
    for _ in range(requests):
        r = await c.post("/v2/models/m/infer", json=body(rows(rng, ROWS, shift)))
        assert r.status_code == 200, r.text


def gauge(text: str, version: str, lane: str = "online", output: str = "y") -> float | None:
    """``inferlane_drift_psi`` of model m as a scrape of /metrics shows it (None when absent)."""
    want = {"model": "m", "version": version, "lane": lane, "output": output}
    for labels, value in re.findall(r"^inferlane_drift_psi\{([^}]*)\} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', labels)) == want:
            return float(value)
    return None


# --- the window -----------------------------------------------------------------------------------------------

def test_the_ring_keeps_exactly_the_newest_predictions_and_counts_them() -> None:
    rng = np.random.default_rng(0)
    track = Track(width=2, reference_size=100, window_size=50)
    reference = rng.normal(size=200)
    track.add(reference[:150])
    assert track.reference is None and track.psi() is None  # 75 of 100 predictions
    track.add(reference[150:])
    assert track.reference is not None and track.reference.values == 200
    assert track.window_values == 0
    added: list[np.ndarray] = []
    for n in (1, 7, 33, 99, 100, 250, 3, 64, 13):  # across the wrap, a chunk larger than the ring too
        chunk = rng.normal(size=n)
        track.add(chunk)
        added.append(chunk)
        newest = np.concatenate(added)[-100:]
        counts = np.bincount(bin_index(newest, track.reference.edges), minlength=len(track.reference.edges) + 1)
        assert track.window_values == len(newest)
        assert track._counts.tolist() == counts.tolist(), n
    assert track.describe()["window_predictions"] == 50 and track.describe()["reference_predictions"] == 100


def test_one_distribution_is_near_0_and_a_shift_is_over_0_2() -> None:
    rng = np.random.default_rng(1)
    same = Track(width=1, reference_size=1000, window_size=1000)
    same.add(rng.normal(size=3000))
    t = same.psi()
    assert t is not None and t.value < 0.05 and t.noise == pytest.approx(9 * (1 / 1000 + 1 / 1000))
    moved = Track(width=1, reference_size=1000, window_size=1000)
    moved.add(rng.normal(size=1000))
    moved.add(rng.normal(loc=1.0, size=1000))
    t = moved.psi()
    assert t is not None and t.value > 0.2
    assert moved.describe()["verdict"] == "shifted" and same.describe()["verdict"] == "stable"


def test_a_reference_given_up_front_measures_from_the_first_predictions() -> None:
    rng = np.random.default_rng(2)
    track = Track(1, 1000, 400, Reference.of(rng.normal(size=5000), 400, "file ref.parquet"))
    track.add(rng.normal(size=100))
    assert track.describe()["state"] == "filling window"  # 100 values in 10 bins: too sparse yet
    track.add(rng.normal(size=300))
    t = track.psi()
    assert t is not None and t.value < 0.05 and track.describe()["reference"] == "file ref.parquet"


def test_the_listener_holds_at_most_one_fold_of_outcomes(tmp_path: Path) -> None:
    write_versioned_model(tmp_path / "models", {"1": {}})
    registry = ModelRegistry.from_repository(tmp_path / "models")
    monitor = DriftMonitor(registry, Metrics())
    y = np.ones((1, 4), dtype=np.float32)
    for _ in range(10 * FOLD_EVERY + 3):
        registry.router.report(Outcome("m", "1", True, 0.001, {"y": y}))
        assert len(monitor._pending) < FOLD_EVERY
    track = monitor._tracks[("m", "1", "online")][("outputs", "y")]
    assert track.seen == 4 * 10 * FOLD_EVERY  # the last 3 are pending
    assert track.window_values <= 4 * 1000  # the default window_size, whatever the traffic


def test_with_drift_off_nothing_is_kept(tmp_path: Path) -> None:
    add_drift(write_versioned_model(tmp_path / "models", {"1": {}}), enabled=False)
    registry = ModelRegistry.from_repository(tmp_path / "models")
    monitor = DriftMonitor(registry, Metrics())
    registry.router.report(Outcome("m", "1", True, 0.001, {"y": np.ones((1, 4), dtype=np.float32)}))
    assert not monitor._pending and monitor.report("m") == {"model": "m", "enabled": False, "versions": []}


# --- through the server ---------------------------------------------------------------------------------------

@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """``m``: versions 1 and 2 (y = 2x, version 2 served), 3 (y = 3x); reference and window of 200."""
    model = write_versioned_model(tmp_path / "models", {"1": {}, "2": {}, "3": {"scale": 3}})
    (model / "model.yaml").write_text((model / "model.yaml").read_text() + "default_version: '2'\n")
    add_drift(model, inputs=True)
    return tmp_path / "models"


@pytest.mark.anyio
async def test_identical_traffic_is_near_0_and_shifted_inputs_are_over_0_2(repo: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    async with admin_client(repo, tmp_path) as (c, _):
        await send(c, rng, 10)
        doc = (await c.get("/v2/admin/models/m/drift", headers=AUTH)).json()
        y = doc["versions"][0]["outputs"]["y"]
        assert (doc["versions"][0]["version"], doc["versions"][0]["lane"], doc["versions"][0]["stable"]) == \
            ("2", "online", True)
        assert (y["state"], y["reference_predictions"], y["reference_size"]) == ("collecting reference", 80, SIZE)

        await send(c, rng, 50)  # the reference (25 requests), then a full window of the same traffic
        y = (await c.get("/v2/admin/models/m/drift", headers=AUTH)).json()["versions"][0]["outputs"]["y"]
        assert y["state"] == "measuring" and y["window_predictions"] == SIZE, y
        assert y["psi"] < 0.05 and y["verdict"] == "stable", y
        assert y["reference"] == f"first {SIZE} predictions"
        x = (await c.get("/v2/admin/models/m/drift", headers=AUTH)).json()["versions"][0]["inputs"]["x"]
        assert x["psi"] < 0.05 and x["verdict"] == "stable", x
        same = gauge((await c.get("/metrics")).text, "2")
        assert same is not None and same < 0.05

        await send(c, rng, 25, shift=0.5)  # x + 0.5, so y = 2x + 1: a whole window of shifted outputs
        y = (await c.get("/v2/admin/models/m/drift", headers=AUTH)).json()["versions"][0]["outputs"]["y"]
        assert y["psi"] > 0.2 and y["verdict"] == "shifted", y
        x = (await c.get("/v2/admin/models/m/drift", headers=AUTH)).json()["versions"][0]["inputs"]["x"]
        assert x["psi"] > 0.2 and x["verdict"] == "shifted", x  # the inputs moved too (inputs: true)
        assert re.search(r'^inferlane_drift_input_psi\{[^}]*input="x"[^}]*\} ', (await c.get("/metrics")).text, re.M)
        shifted = gauge((await c.get("/metrics")).text, "2")
        assert shifted is not None and shifted == pytest.approx(y["psi"], abs=1e-6)

        assert (await c.get("/v2/admin/models/m/drift")).status_code == 401
        assert (await c.get("/v2/admin/models/nope/drift", headers=AUTH)).status_code == 404


@pytest.mark.anyio
async def test_a_promoted_version_starts_a_fresh_reference_and_an_unloaded_one_is_forgotten(
        repo: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    async with admin_client(repo, tmp_path) as (c, registry):
        await send(c, rng, 60)
        # Version 1 answers as 2 does: no check could roll it back, and none runs before 100000 samples.
        r = await c.post("/v2/admin/rollouts/m", headers=AUTH, json={"to": "1", "canary": 50, "window_s": 600,
                                                                     "min_samples": 100_000, "drain_s": 0})
        assert r.status_code == 201, r.text
        await send(c, rng, 20)
        canary = {v["version"]: v for v in (await c.get("/v2/admin/models/m/drift", headers=AUTH)).json()["versions"]}
        assert canary["1"]["outputs"]["y"]["reference_predictions"] > 0 and not canary["1"]["stable"]

        assert (await c.post("/v2/admin/rollouts/m/promote", headers=AUTH)).status_code == 200
        await wait_until_async(lambda: registry.versions("m") == ["1", "3"], "version 2 is unloaded after the drain")
        await send(c, rng, 5)
        drift = app_drift(c)
        drift.refresh()
        doc = (await c.get("/v2/admin/models/m/drift", headers=AUTH)).json()
        versions = {v["version"]: v for v in doc["versions"]}
        assert set(versions) == {"1"}, versions  # version 2 is gone, and so is its gauge
        assert versions["1"]["stable"] and versions["1"]["outputs"]["y"]["reference_predictions"] == 5 * ROWS
        assert gauge((await c.get("/metrics")).text, "2") is None


def app_drift(c: httpx.AsyncClient) -> DriftMonitor:
    transport = c._transport
    assert isinstance(transport, httpx.ASGITransport)
    monitor: DriftMonitor = transport.app.state.drift  # type: ignore[attr-defined]
    return monitor


@pytest.mark.anyio
async def test_a_reference_from_the_batch_lane(repo: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = tmp_path / "data.parquet"
    x = rows(rng, 2000)
    pq.write_table(pa.table({"id": np.arange(len(x)), "x": pa.FixedSizeListArray.from_arrays(
        pa.array(x.ravel()), 4)}), data)
    out = tmp_path / "scores"
    report = run_batch(BatchJob(model=str(repo / "m"), input=str(data), output=str(out), key=["id"],
                                job_id="reference", version="2", progress=False))
    assert report["status"] == "succeeded", report
    add_drift(repo / "m", reference_file=str(out))
    async with admin_client(repo, tmp_path) as (c, _):
        await send(c, rng, 25)  # no reference to collect: the first window measures
        y = (await c.get("/v2/admin/models/m/drift", headers=AUTH)).json()["versions"][0]["outputs"]["y"]
        assert y["state"] == "measuring" and y["reference"] == f"file {out} (2000 predictions)", y
        assert y["psi"] < 0.05, y
        await send(c, rng, 25, shift=0.5)
        y = (await c.get("/v2/admin/models/m/drift", headers=AUTH)).json()["versions"][0]["outputs"]["y"]
        assert y["psi"] > 0.2, y


def test_a_jsonl_reference_in_the_batch_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    y = rng.random((100, 4))
    lines = [orjson.dumps({"id": i, "y": row.tolist(), "model_name": "m", "model_version": "2",
                           "scored_at": "2026-01-01T00:00:00+00:00"}) for i, row in enumerate(y)]
    (tmp_path / "ref.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    values = read_reference(tmp_path / "ref.jsonl", ["y"])
    assert values["y"].tolist() == y.ravel().tolist()


# --- bad configuration: one line ------------------------------------------------------------------------------

@pytest.mark.parametrize(("drift", "message"), [
    ({"window_size": 5}, "drift.window_size: Input should be greater than or equal to 100"),
    ({"reference_size": "many"}, "drift.reference_size: Input should be a valid integer"),
    ({"refrence_file": "ref.parquet"}, "unknown field drift.refrence_file: did you mean reference_file?"),
    ({"reference_file": "ref.csv"}, "drift.reference_file: 'ref.csv' must be a .parquet or .jsonl file"),
])
def test_a_bad_drift_block_is_one_line_naming_the_field(repo: Path, drift: dict[str, Any], message: str) -> None:
    add_drift(repo / "m", **drift)
    with pytest.raises(ConfigError) as info:
        scan_repository(repo)
    problems = info.value.message.splitlines()[1:]
    assert len(problems) == 1 and message in problems[0], info.value.message


@pytest.mark.parametrize(("write", "message"), [
    (None, "ref.parquet: no such file or folder"),
    (lambda p: pq.write_table(pa.table({"z": [1.0] * 100}), p), "no column 'y'"),
    (lambda p: p.write_bytes(b"not parquet"), "not a readable Parquet file"),
])
def test_a_bad_reference_file_stops_the_start_in_one_line(repo: Path, tmp_path: Path, write: Any,
                                                         message: str) -> None:
    add_drift(repo / "m", reference_file="ref.parquet")
    if write is not None:
        write(repo / "m" / "ref.parquet")
    settings = ServerSettings(model_repository=repo, jobs_workers=0, jobs_store=f"sqlite:///{tmp_path / 'j.db'}",
                              rollout_store=f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(ConfigError) as info:
        create_app(settings)
    assert info.value.message.startswith("model m: drift.reference_file: ") and "\n" not in info.value.message
    assert message in info.value.message


# --- the CLI --------------------------------------------------------------------------------------------------

@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"INFERLANE_ADMIN_TOKEN": TOKEN, "INFERLANE_JOBS_WORKERS": "0",
           "INFERLANE_JOBS_STORE": f"sqlite:///{tmp_path / 'jobs.db'}",
           "INFERLANE_ROLLOUT_STORE": f"sqlite:///{tmp_path / 'rollouts.db'}"}
    yield from serve_or_fail(serve(repo, log_path=tmp_path / "server.log", env=env))


@pytest.mark.e2e
def test_cli_models_drift(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--url", server.url, "--token", TOKEN]
    assert main(["models", "drift", "m", *url]) == 0
    assert capsys.readouterr().out.strip() == "m: no predictions yet (drift counts unpinned online requests)"
    rng = np.random.default_rng(7)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for shift in [0.0] * 50 + [0.5] * 25:
            assert client.post("/v2/models/m/infer", json=body(rows(rng, ROWS, shift))).status_code == 200
    assert main(["models", "drift", "m", *url]) == 0
    line, inputs = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"m version 2 \(online, stable\) y: psi \d+\.\d{3} shifted "
                        rf"\(window {SIZE}/{SIZE}, reference: first {SIZE} predictions\)", line), line
    assert re.fullmatch(r"m version 2 \(online, stable\) input x: psi \d+\.\d{3} shifted .*", inputs), inputs
    assert main(["models", "drift", "m", "--json", *url]) == 0
    assert orjson.loads(capsys.readouterr().out)["versions"][0]["outputs"]["y"]["verdict"] == "shifted"
    assert main(["models", "drift", "nope", *url]) == 2
    assert capsys.readouterr().err.startswith("HTTP 404: ")
