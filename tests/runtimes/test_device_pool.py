"""A device's memory budget shared by every loaded version, through the real ``inferlane serve``:
``--device-memory-budget cpu=...`` that holds one large ONNX version but not two refuses a second
one (a new version of the model, or a new model) over the admin API with the figures, while the
loaded versions keep serving; once the first unloads, the new version fits. And the flag's usage
errors: one line, exit code 2."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from inferlane.cli.main import EXIT_USAGE, main
from inferlane.core.runtimes.devices import BUDGET_ENV
from inferlane.demo.models import N_FEATURES, write_mlp_model
from inferlane.testing import ServerProcess, serve, serve_or_fail

TOKEN = "device-pool-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LARGE, SMALL = (256,), (4,)
"""Hidden layers of the two ONNX MLPs: about 34 KB and 0.7 KB of weights."""


@dataclass(frozen=True)
class Pooled:
    server: ServerProcess
    repo: Path
    large: int
    """Artifact bytes of a large version (what it reserves: ONNX Runtime reports no session memory)."""
    small: int
    budget: int


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pooled]:
    """Model ``m``: version 1 large, version 2 small. Version 2, the highest, takes the route; version 1
    stays loaded for pinned requests (a routed version cannot be unloaded, this one can). The budget
    holds both, plus half a large version: one large version, never two."""
    tmp = tmp_path_factory.mktemp("device-pool")
    repo = tmp / "models"
    write_mlp_model(repo, "m", LARGE, version="1")
    write_mlp_model(repo, "m", SMALL, version="2")
    large, small = ((repo / "m" / v / "model.onnx").stat().st_size for v in ("1", "2"))
    kib = math.ceil((large + small + large // 2) / 1024)
    budget = kib * 1024
    assert large + small <= budget < 2 * large + small
    env = {"INFERLANE_ADMIN_TOKEN": TOKEN, "INFERLANE_JOBS_WORKERS": "0",
           "INFERLANE_JOBS_STORE": f"sqlite:///{tmp / 'jobs.db'}",
           "INFERLANE_ROLLOUT_STORE": f"sqlite:///{tmp / 'rollouts.db'}"}
    served = serve(repo, log_path=tmp / "server.log", env=env, extra=["--device-memory-budget", f"cpu={kib}KiB"])
    for server in serve_or_fail(served):
        yield Pooled(server, repo, large, small, budget)


def infer(server: ServerProcess, path: str) -> httpx.Response:
    x = np.random.default_rng(3).standard_normal((2, N_FEATURES)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    return httpx.post(f"{server.url}/v2/models/{path}/infer", json=body, timeout=30)


def admin(server: ServerProcess, name: str, version: str, action: str) -> httpx.Response:
    query = "?drain_timeout_s=0" if action == "unload" else ""
    return httpx.post(f"{server.url}/v2/admin/models/{name}/versions/{version}/{action}{query}", headers=AUTH,
                      timeout=60)


def assert_serves(server: ServerProcess, *paths: str) -> None:
    """Each of ``paths`` (``m``, ``m/versions/1``) answers two rows of two probabilities."""
    for path in paths:
        r = infer(server, path)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["shape"] == [2, 2]


def held(size: int) -> str:
    """How a message writes ``size`` bytes."""
    return f"{size / 2**20:.2f} MiB ({size} bytes)"


@pytest.mark.e2e
def test_a_version_over_the_device_budget_is_refused_and_fits_once_the_first_unloads(pooled: Pooled) -> None:
    server, large, small = pooled.server, pooled.large, pooled.small
    assert_serves(server, "m", "m/versions/1")
    shutil.copytree(pooled.repo / "m" / "1", pooled.repo / "m" / "3")  # the next large version

    refused = admin(server, "m", "3", "load")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == (
        f"model m version 3 needs {held(large)} on cpu (artifact size; ONNX Runtime reports no session memory) "
        f"and {held(large + small)} is already reserved there (model m version 1: {held(large)}, model m version 2: "
        f"{held(small)}): over the cpu memory budget of {held(pooled.budget)} "
        f"(--device-memory-budget / {BUDGET_ENV}); the version is not loaded")
    assert_serves(server, "m", "m/versions/1")  # the loaded versions keep serving
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    pinned = infer(server, "m/versions/3")
    assert pinned.status_code == 503 and "version 3 is not ready (not loaded)" in pinned.json()["error"]

    write_mlp_model(pooled.repo, "other", LARGE)  # a second model counts on the same device
    other = admin(server, "other", "1", "load")
    assert other.status_code == 400 and "model other version 1 needs" in other.json()["error"], other.text

    assert admin(server, "m", "1", "unload").status_code == 200
    loaded = admin(server, "m", "3", "load")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["versions"] == ["2", "3"]
    assert_serves(server, "m/versions/3", "m")
    again = admin(server, "other", "1", "load")  # version 3 now holds what version 1 held
    assert again.status_code == 400 and "(model m version 2: " in again.json()["error"], again.text
    assert "model m version 3: " in again.json()["error"] and "model m version 1" not in again.json()["error"]


@pytest.mark.parametrize(("value", "message"), [
    ("cpu=lots", "argument --device-memory-budget: 'cpu=lots': 'lots' is not a size such as 20GiB"),
    ("gpu=1GiB", "argument --device-memory-budget: 'gpu=1GiB' is not DEVICE=SIZE with DEVICE cpu, cuda or cuda:N"),
    ("cpu", "argument --device-memory-budget: 'cpu' is not DEVICE=SIZE"),
    ("cuda:0=0", "argument --device-memory-budget: 'cuda:0=0': '0' is less than one byte"),
])
def test_a_bad_budget_flag_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str,
                                            message: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", str(tmp_path), "--device-memory-budget", value])
    assert stopped.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--device-memory-budget", "cpu=1GiB", "--device-memory-budget", "cpu=2GiB"], "",
     "--device-memory-budget: cpu is given twice"),
    ([], "cpu=1GiB,cuda:0=lots",
     f"{BUDGET_ENV}: 'cuda:0=lots': 'lots' is not a size such as 20GiB, 512MiB, 2GB or 1000000 (bytes)"),
])
def test_a_device_given_twice_or_a_bad_variable_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
        env: str, message: str) -> None:
    monkeypatch.setenv(BUDGET_ENV, env)
    assert main(["serve", str(tmp_path), *argv]) == EXIT_USAGE
    assert capsys.readouterr().err == message + "\n"


@pytest.mark.e2e
def test_the_real_command_exits_2_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "inferlane", "serve", str(tmp_path), "--device-memory-budget",
                           "cpu=20 gigs"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EXIT_USAGE
    assert done.stderr.splitlines()[-1] == ("inferlane serve: error: argument --device-memory-budget: "
                                            "'cpu=20 gigs': '20 gigs' is not a size such as 20GiB, 512MiB, 2GB "
                                            "or 1000000 (bytes)")
