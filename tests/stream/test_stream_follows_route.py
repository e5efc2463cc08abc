"""The stream lane follows the server's route: a real redis-server for the events, the outputs and
the rollout store, the real lane as a subprocess, and rollout statuses written through the store API
(as the server's controller writes them).

- a running canary splits the events by key exactly as the server's router splits requests; after a
  promotion every event is scored on the new version;
- the follower (in process, a real SQLite store): a rollback goes back to stable, and a version no
  longer routed is closed once the micro-batch holding it is done;
- ``--version`` pins: no following.
"""

from __future__ import annotations

import shutil
import signal
import threading
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from inferlane.core.errors import ConfigError
from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model
from inferlane.lanes.stream import StreamJob, StreamSettings, run_stream
from inferlane.rollout.follow import RouteFollower, rollout_store_opener
from inferlane.rollout.router import Route, sticky_point
from inferlane.store.rollout import (
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    RolloutStore,
    open_rollout_store,
)
from inferlane.testing import wait_until
from tests.stream.support import (
    Record,
    finish,
    fraud_events,
    output_records,
    read_redis_stream,
    start_lane,
    stream_url,
    xadd_events,
)


@pytest.fixture(scope="module")
def versioned_fraud(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fraud model with versions 1, 2 and 3 (the same artifact: outputs differ only in their version)."""
    root = tmp_path_factory.mktemp("versioned") / "fraud"
    shutil.copytree(model_repo / "fraud", root)
    for v in ("2", "3"):
        shutil.copytree(root / "1", root / v)
    (root / "model.yaml").write_text((root / "model.yaml").read_text() + "\ndefault_version: '1'\n")
    return root


def running(stable: str, canary: str, weight: float, revision: int) -> RolloutStatus:
    spec = RolloutSpec("fraud", canary, canary_pct=weight * 100, steps=(weight * 100, 100.0), window_s=60)
    return RolloutStatus("fraud", stable, canary, RolloutState.RUNNING, 0, weight, 0.0, spec, revision=revision)


def finished(s: RolloutStatus, state: RolloutState) -> RolloutStatus:
    assert s.canary is not None
    stable = s.canary if state is RolloutState.PROMOTED else s.stable
    return replace(s, stable=stable, canary=None, state=state, weight=0.0, revision=s.revision + 1)


def expected_version(key: str, weight: float, stable: str = "1", canary: str = "2") -> str:
    """What the server's router answers for this routing key."""
    return Route(stable, canary, weight).side(sticky_point("fraud", key))


def outputs(redis_url: str, stream: str) -> dict[str, Record]:
    return {r["id"]: r for r in output_records([f[b"data"] for f in read_redis_stream(redis_url, stream)])}


@pytest.mark.e2e
def test_the_lane_splits_events_as_the_router_and_moves_to_a_promoted_version(
        versioned_fraud: Path, stream_redis_url: str, topic_prefix: str, tmp_path: Path) -> None:
    src, out = f"{topic_prefix}:events", f"{topic_prefix}:scores"
    store_url = f"{stream_redis_url}/{topic_prefix}-rollouts"
    store = open_rollout_store(store_url)
    try:
        rollout = running("1", "2", 0.5, revision=1)
        assert store.save(rollout)
        proc = start_lane(versioned_fraud, stream_url(stream_redis_url, src), f"{topic_prefix}-g",
                          stream_url(stream_redis_url, out), "--rollout-store", store_url, "--max-wait-ms", "10",
                          "--json", cwd=tmp_path)
        try:
            first = fraud_events(200)
            xadd_events(stream_redis_url, src, first)
            wait_until(lambda: len(outputs(stream_redis_url, out)) >= 200, "the first events are scored",
                       abort_if=[lambda: None if proc.poll() is None else "the lane exited"])
            scored = outputs(stream_redis_url, out)
            assert {k: r["model_version"] for k, r in scored.items()} == \
                {e["id"]: expected_version(e["id"], 0.5) for e in first}
            assert {r["model_version"] for r in scored.values()} == {"1", "2"}

            assert store.save(finished(rollout, RolloutState.PROMOTED))
            # Keys that the route sent to version 1: once one of them comes back from version 2, the
            # lane has moved (it never moves back), so every event after it must too.
            probes = iter(e for e in fraud_events(400, start=1000, prefix="p") if expected_version(e["id"], 0.5) == "1")

            def moved() -> bool:
                probe = next(probes)
                xadd_events(stream_redis_url, src, [probe])
                wait_until(lambda: probe["id"] in outputs(stream_redis_url, out), "the probe is scored")
                return bool(outputs(stream_redis_url, out)[probe["id"]]["model_version"] == "2")

            wait_until(moved, "the lane scores with the promoted version", timeout_s=20, interval_s=0.1)
            after = fraud_events(200, start=2000, prefix="a")
            xadd_events(stream_redis_url, src, after)
            wait_until(lambda: all(e["id"] in outputs(stream_redis_url, out) for e in after),
                       "the events after the promotion are scored")
            scored = outputs(stream_redis_url, out)
            assert {scored[e["id"]]["model_version"] for e in after} == {"2"}
        finally:
            proc.send_signal(signal.SIGTERM)
            code, stdout, stderr = finish(proc)
    finally:
        store.close()
    assert code == 0, stderr[-3000:]
    assert "following its route in --rollout-store" in stderr
    report = orjson.loads(stdout)
    assert report["model_version"] == "2" and set(report["versions"]) == {"1", "2"}
    assert sum(report["versions"].values()) == report["events_out"]


def test_the_follower_rolls_back_and_closes_a_version_no_longer_routed(versioned_fraud: Path,
                                                                      tmp_path: Path) -> None:
    entry = scan_model(versioned_fraud)
    loads: list[str] = []

    def load(version: str) -> ModelVersion:
        loads.append(version)
        mv = ModelVersion.load(entry.config, entry.path, version, role="batch", threads=1)
        mv.warmup()
        return mv

    path = tmp_path / "state" / "rollouts.db"
    opener, where = rollout_store_opener(f"sqlite:///{path}")
    assert where == f"--rollout-store sqlite:///{path}"
    store: RolloutStore = open_rollout_store(f"sqlite:///{path}")
    follower = RouteFollower(entry, opener, load, every_s=3600)  # refreshed by hand below
    keys = [f"user-{i}" for i in range(64)]
    try:
        follower.start()
        assert (follower.route, follower.loaded()) == (Route("1"), ["1"])  # nothing stored: the default

        rollout = running("1", "3", 0.3, revision=1)
        assert store.save(rollout)
        follower.refresh()
        assert follower.route == Route("1", "3", 0.3) and follower.loaded() == ["1", "3"]
        with follower.split(keys) as parts:
            got = {keys[int(j)]: mv.version for mv, rows in parts for j in (rows if rows is not None else [])}
            assert got == {k: expected_version(k, 0.3, canary="3") for k in keys}

            # A rollback while this micro-batch still holds version 3: it stays open until the block ends.
            assert store.save(finished(rollout, RolloutState.ROLLED_BACK))
            follower.refresh()
            assert follower.route == Route("1") and follower.loaded() == ["1", "3"]
        assert follower.loaded() == ["1"]  # closed once the micro-batch was done
        with follower.split(keys) as parts:
            assert [(mv.version, rows) for mv, rows in parts] == [("1", None)]

        again = running("1", "2", 0.1, revision=3)
        assert store.save(again)
        follower.refresh()
        assert store.save(finished(again, RolloutState.PROMOTED))
        follower.refresh()
        assert (follower.route, follower.loaded()) == (Route("2"), ["2"])
        assert loads == ["1", "3", "2"]  # each loaded when a route first named it
    finally:
        follower.close()
        store.close()


def test_the_default_store_is_the_servers_and_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLANE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("INFERLANE_ROLLOUT_STORE", raising=False)
    opener, where = rollout_store_opener(None)
    assert where == str(tmp_path / "state" / "rollouts.db")
    assert opener() is None and not (tmp_path / "state").exists()  # no server made one: nothing to follow
    open_rollout_store(None).close()  # what a server in this state folder does
    store = opener()
    assert store is not None
    store.close()
    monkeypatch.setenv("INFERLANE_ROLLOUT_STORE", f"sqlite:///{tmp_path / 'shared.db'}")
    assert rollout_store_opener(None)[1] == f"INFERLANE_ROLLOUT_STORE sqlite:///{tmp_path / 'shared.db'}"


@pytest.mark.e2e
def test_a_pinned_version_does_not_follow(versioned_fraud: Path, stream_redis_url: str, topic_prefix: str) -> None:
    store_url = f"{stream_redis_url}/{topic_prefix}-rollouts"
    store = open_rollout_store(store_url)
    try:
        store.save(finished(running("1", "2", 0.5, revision=1), RolloutState.PROMOTED))
    finally:
        store.close()
    src, out = f"{topic_prefix}:events", f"{topic_prefix}:scores"
    xadd_events(stream_redis_url, src, fraud_events(100))
    job = StreamJob(model=str(versioned_fraud), version="1", rollout_store=store_url,
                    source=stream_url(stream_redis_url, src), group=f"{topic_prefix}-g",
                    sink=stream_url(stream_redis_url, out), key="id",
                    settings=StreamSettings(max_batch=64, max_wait_ms=10, idle_exit_s=1.0))
    report = run_stream(job, threading.Event())
    assert (report["events_out"], report["model_version"], report["versions"]) == (100, "1", {"1": 100})
    assert {r["model_version"] for r in outputs(stream_redis_url, out).values()} == {"1"}


def test_a_bad_rollout_store_is_a_usage_error_before_anything_opens(versioned_fraud: Path, tmp_path: Path) -> None:
    job = StreamJob(model=str(versioned_fraud), rollout_store="http://nope/rollouts", source="redis://127.0.0.1:1/in",
                    group="g", sink="redis://127.0.0.1:1/out", key="id", state_dir=str(tmp_path / "state"))
    with pytest.raises(ConfigError, match=r"^--rollout-store http://nope/rollouts is not supported; use "):
        run_stream(job, threading.Event())
    assert not (tmp_path / "state").exists()
