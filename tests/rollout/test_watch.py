"""``serve --watch``: new version folders are hot-loaded without traffic; a broken one is logged once
and tried again only when its files change; a version unloaded on purpose stays unloaded.

The watcher's ``scan`` is driven by hand over a real registry (no timer); the last test runs the real
``inferlane serve --watch`` and waits for a version copied into its repository to answer.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import pytest

from inferlane.rollout.registry import ModelRegistry
from inferlane.server.watch import RepositoryWatcher
from inferlane.testing import serve, wait_until
from tests.rollout.test_admin import write_version, write_versioned_model

pytestmark = pytest.mark.anyio


async def test_new_version_folders_load_without_traffic_and_broken_ones_are_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "models"
    write_versioned_model(repo, {"1": {}})
    registry = ModelRegistry.from_repository(repo)
    watcher = RepositoryWatcher(registry)
    await registry.load_all()
    try:
        assert await watcher.scan() == []

        write_version(repo, "2", scale=3)
        assert await watcher.scan() == [("m", "2")]
        assert registry.versions("m") == ["1", "2"] and registry.is_ready("m", "2")
        assert registry.router.route("m").versions() == ("1",)  # loaded, no traffic
        assert await watcher.scan() == []

        broken = repo / "m" / "3"
        broken.mkdir()  # a folder still being copied: no model.py yet
        caplog.set_level(logging.INFO, logger="inferlane.server.watch")
        assert await watcher.scan() == []
        assert await watcher.scan() == []
        failures = [r for r in caplog.records if "cannot load m version 3" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in caplog.records]
        assert "3" not in registry.versions("m")

        write_version(repo, "3", scale=4)  # its files change: tried again, loads
        assert await watcher.scan() == [("m", "3")]
        assert registry.versions("m") == ["1", "2", "3"]
        assert any("loaded m version 3" in r.getMessage() for r in caplog.records)

        await registry.unload_version("m", "2")  # unloaded on purpose: not loaded back
        assert await watcher.scan() == [] and registry.versions("m") == ["1", "3"]

        shutil.rmtree(repo / "m" / "2")  # removed and created again: new, loaded
        assert await watcher.scan() == []
        write_version(repo, "2", scale=5)
        assert await watcher.scan() == [("m", "2")]
    finally:
        await registry.close()


@pytest.mark.e2e
def test_serve_watch_hot_loads_a_copied_version(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_versioned_model(repo, {"1": {}})
    env = {"INFERLANE_JOBS_STORE": f"sqlite:///{tmp_path / 'jobs.db'}", "INFERLANE_WATCH_INTERVAL_S": "0.2",
           "INFERLANE_ROLLOUT_STORE": f"sqlite:///{tmp_path / 'rollouts.db'}", "INFERLANE_JOBS_WORKERS": "0"}
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}
    with serve(repo, log_path=tmp_path / "server.log", extra=["--watch"], env=env) as server:
        staging = write_version(tmp_path / "staging", "2", scale=7)
        shutil.copytree(staging, repo / "m" / "2")

        def answers() -> bool:
            r = httpx.post(f"{server.url}/v2/models/m/versions/2/infer", json=body)
            return r.status_code == 200 and r.json()["outputs"][0]["data"] == [7.0] * 4

        wait_until(answers, "version 2 is hot-loaded and answers", timeout_s=30)
        unpinned = httpx.post(f"{server.url}/v2/models/m/infer", json=body)
        assert unpinned.headers["inferlane-model-version"] == "1"  # no traffic without a route
