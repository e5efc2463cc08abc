"""Several server processes on one rollout store, end to end: the real ``inferlane serve`` as subprocesses.

- readiness waits for the stored routes: a restart mid-rollout whose store cannot be read yet stays
  not ready, and its first ready answer already routes every key as before the restart;
- with ``serve --workers 2``, ``models load`` and ``models unload`` reach both worker processes, and
  a rollout that both workers' controllers decide on steps and promotes with each event once.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from inferlane.cli.main import main
from inferlane.rollout.router import sticky_point
from inferlane.testing import (
    RestartableRedis,
    exited,
    free_port,
    serve,
    start_server,
    stop_process,
    wait_ready,
    wait_until,
)
from tests.rollout.test_admin import TOKEN, write_version, write_versioned_model
from tests.rollout.test_rollout_e2e import Load, _env, _one_row, admin, rollout_state

pytestmark = pytest.mark.e2e

KEYS = [f"user-{i}" for i in range(16)]


def versioned_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write_versioned_model(repo, {"1": {}, "2": {}})
    (repo / "m" / "model.yaml").write_text((repo / "m" / "model.yaml").read_text() + "default_version: '1'\n")
    return repo


def answered_by(url: str, key: str | None = None, version: str | None = None) -> tuple[int, str | None]:
    """One request on a new connection (worker processes sharing the port take turns): (status, version)."""
    path = f"/v2/models/m/versions/{version}/infer" if version else "/v2/models/m/infer"
    headers = {"Connection": "close", **({"inferlane-routing-key": key} if key else {})}
    r = httpx.post(url + path, json=_one_row(), headers=headers, timeout=10)
    return r.status_code, r.headers.get("inferlane-model-version")


def test_a_restart_is_ready_only_once_the_stored_routes_apply(tmp_path: Path) -> None:
    redis = RestartableRedis(tmp_path / "redis")
    redis.start()
    repo = versioned_repo(tmp_path)
    env = {**_env(tmp_path), "INFERLANE_ROLLOUT_STORE": redis.url + "/ready"}
    proc = None
    try:
        with serve(repo, log_path=tmp_path / "first.log", env=env) as first:
            admin(first, "POST", "/rollouts/m", json={"to": "2", "steps": [50, 100], "window_s": 3600,
                                                      "min_samples": 1000})
        expected = {k: "2" if sticky_point("m", k) < 0.5 else "1" for k in KEYS}
        assert set(expected.values()) == {"1", "2"}

        redis.stop()  # the store is down while the server restarts
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(repo, port, log_path=tmp_path / "second.log", env=env)
        log = tmp_path / "second.log"
        wait_until(lambda: _status(f"{url}/v2/models/m/versions/2/ready") == 200, "the versions loaded",
                   abort_if=[exited(proc, log)])
        # Every version is loaded and warm, but the routes are not known: not ready, and an unpinned
        # request is refused (it used to be answered by the default version, whatever its key).
        assert _status(f"{url}/v2/health/ready") == 503
        assert answered_by(url, KEYS[0]) == (503, None)
        assert answered_by(url, version="2") == (200, "2")  # a pinned request needs no route

        redis.start()
        wait_ready(port, proc, log=log)
        assert {k: answered_by(url, k) for k in KEYS} == {k: (200, v) for k, v in expected.items()}
    finally:
        if proc is not None:
            stop_process(proc)
        redis.stop()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_two_workers_both_follow_models_load_unload_and_decide_a_rollout_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = versioned_repo(tmp_path)
    log = tmp_path / "server.log"
    with serve(repo, log_path=log, env=_env(tmp_path), extra=["--workers", "2", "--log-level", "info"]) as server:
        args = ["--url", server.url, "--token", TOKEN]
        wait_until(lambda: log.read_text().count("Application startup complete") == 2, "both workers started")

        write_version(repo, "3")  # a folder that appeared after the start: loaded by nobody yet
        assert main(["models", "load", "m", "3", *args]) == 0
        assert "m version 3 loaded" in capsys.readouterr().out
        wait_until(lambda: "version 3 loaded, as ordered through another process" in log.read_text(),
                   "the other worker loads version 3")
        assert log.read_text().count("loaded m version 3 (warm-up") == 2  # each worker, once
        assert all(answered_by(server.url, version="3") == (200, "3") for _ in range(12))

        assert main(["models", "unload", "m", "3", "--drain-timeout", "5s", *args]) == 0
        capsys.readouterr()
        wait_until(lambda: "version 3 unloaded, as ordered through another process" in log.read_text(),
                   "the other worker unloads version 3")
        assert log.read_text().count("unloaded m version 3") == 2
        assert all(answered_by(server.url, version="3")[0] == 503 for _ in range(12))

        # Both controllers see the windows (each its share of the traffic) and decide at their ends.
        with Load(server.url, "m") as load:
            wait_until(lambda: load.count() > 100, "the load loop is answered")
            admin(server, "POST", "/rollouts/m", json={"to": "2", "steps": [50, 100], "window_s": 1,
                                                       "min_samples": 30, "max_p99_ratio": 10, "max_psi": 1})
            wait_until(lambda: rollout_state(server, "m").get("state") == "promoted", "version 2 is promoted",
                       timeout_s=30)
            # Past this, neither controller can decide anything more about the rollout.
            wait_until(lambda: log.read_text().count("m: route Route(stable='2', canary=None") == 2,
                       "both workers route everything to version 2")
        events = admin(server, "GET", "/rollouts/m/history")["events"]
        status = rollout_state(server, "m")
    assert [e["kind"] for e in events] == ["started", "step", "promoted"], events
    assert status["revision"] == 3
    failed = [a for a in load.answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(load.answers)} requests failed: {failed[:5]}"
