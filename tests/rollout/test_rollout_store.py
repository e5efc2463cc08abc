"""The rollout store against a real SQLite file and a real redis-server: one suite, every backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from inferlane.core.errors import ConfigError, InvalidInput
from inferlane.store.rollout import (
    RedisRolloutStore,
    RolloutEvent,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    RolloutStore,
    SqliteRolloutStore,
    open_rollout_store,
)
from tests.conftest import empty_store_url


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = empty_store_url(request, tmp_path / "rollouts.db")
    return url if request.param == "sqlite" else url + "/ops"


def status(model: str = "fraud", step: int = 1, state: RolloutState = RolloutState.RUNNING) -> RolloutStatus:
    spec = RolloutSpec(model, "3", canary_pct=5, steps=(5, 25, 50, 100), window_s=2, min_samples=50, shadow_pct=0)
    return RolloutStatus(model, "2", "3", state, step, 0.25, 12.5, spec,
                         {"psi": {"y": {"psi": 0.01}}, "canary": {"p99_s": None}}, 1_700_000_000.25)


def test_statuses_round_trip_and_replace(store_url: str) -> None:
    store: RolloutStore = open_rollout_store(store_url)
    try:
        assert store.load("fraud") is None and store.load_all() == []
        store.save(status())
        store.save(status("other"))
        later = status(step=2)
        store.save(later)
        assert store.load("fraud") == later
        assert [s.model for s in store.load_all()] == ["fraud", "other"]
        loaded = store.load("fraud")
        assert loaded is not None and loaded.state is RolloutState.RUNNING
        assert loaded.spec.percents == (5.0, 25.0, 50.0, 100.0)
    finally:
        store.close()
    again = open_rollout_store(store_url)  # persisted: a new store (a restarted server) reads it back
    try:
        assert again.load("fraud") == later
    finally:
        again.close()


def test_events_come_back_oldest_first_per_model(store_url: str) -> None:
    store = open_rollout_store(store_url)
    try:
        for i in range(5):
            store.append_event(RolloutEvent(100.0 + i, "fraud", "step", {"step": i}))
        store.append_event(RolloutEvent(200.0, "other", "started", {}))
        store.append_event(RolloutEvent(300.0, "fraud", "rolled_back",
                                        {"check": "psi", "canary": 0.4, "stable": 0.0, "limit": 0.2}))
        events = store.events("fraud", limit=3)
        assert [e.detail.get("step") for e in events] == [3, 4, None]
        assert events[-1] == RolloutEvent(300.0, "fraud", "rolled_back",
                                          {"check": "psi", "canary": 0.4, "stable": 0.0, "limit": 0.2})
        assert len(store.events("fraud")) == 6 and store.events("fraud", 0) == []
        assert [e.kind for e in store.events("other")] == ["started"]
    finally:
        store.close()


def test_redis_keys_live_under_the_prefix(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = RedisRolloutStore(redis_url + "/ops")
    try:
        store.save(status())
        store.append_event(RolloutEvent(1.0, "fraud", "started", {}))
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in client.keys("*"))
        assert keys == ["ops:rollout-events:fraud", "ops:rollout:fraud", "ops:rollouts"]
    finally:
        store.close()
        client.close()


def test_default_is_sqlite_in_the_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLANE_STATE_DIR", str(tmp_path / "state"))
    store = open_rollout_store(None)
    try:
        assert isinstance(store, SqliteRolloutStore) and store.path == str(tmp_path / "state" / "rollouts.db")
        assert Path(store.path).is_file()
        mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        store.close()


@pytest.mark.parametrize("url", ["http://x/rollouts", "sqlite:///", "dir/"])
def test_a_bad_url_is_one_line_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^INFERLANE_ROLLOUT_STORE .*(use|write)") as e:
        open_rollout_store(url)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"steps": (5, 50)}, "steps"),
    ({"steps": (50, 25, 100)}, "steps"),
    ({"canary_pct": 0}, "canary"),
    ({"window_s": 0}, "window_s"),
    ({"min_samples": 0}, "min_samples"),
    ({"max_error_rate": 2}, "max_error_rate"),
    ({"shadow_pct": 150}, "shadow"),
])
def test_a_spec_names_the_field_at_fault(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{field}: "):
        RolloutSpec("fraud", "3", **kwargs)  # type: ignore[arg-type]


def test_steps_below_the_canary_percent_are_skipped() -> None:
    assert RolloutSpec("fraud", "3", canary_pct=10).percents == (10.0, 25.0, 50.0, 100.0)
    assert RolloutSpec("fraud", "3", canary_pct=100).percents == (100.0,)
