"""The rollout store against a real SQLite file and a real redis-server: one suite, every backend.

Saves are compare-and-set on the status's revision: the test of concurrent writers runs threads, each
with its own connection, that keep stepping one shared rollout; every step is saved, and its event
appended, exactly once.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
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
    VersionOrder,
    open_rollout_store,
)
from tests.conftest import empty_store_url


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = empty_store_url(request, tmp_path / "rollouts.db")
    return url if request.param == "sqlite" else url + "/ops"


def status(model: str = "fraud", step: int = 1, state: RolloutState = RolloutState.RUNNING,
           revision: int = 1) -> RolloutStatus:
    spec = RolloutSpec(model, "3", canary_pct=5, steps=(5, 25, 50, 100), window_s=2, min_samples=50, shadow_pct=0)
    return RolloutStatus(model, "2", "3", state, step, 0.25, 12.5, spec,
                         {"psi": {"y": {"psi": 0.01}}, "canary": {"p99_s": None}}, 1_700_000_000.25, revision)


def test_statuses_round_trip_and_replace(store_url: str) -> None:
    store: RolloutStore = open_rollout_store(store_url)
    try:
        assert store.load("fraud") is None and store.load_all() == []
        assert store.save(status())
        assert store.save(status("other"))
        later = status(step=2, revision=2)
        assert store.save(later)
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


def test_a_save_is_compare_and_set_on_the_revision(store_url: str) -> None:
    store = open_rollout_store(store_url)
    try:
        assert not store.save(status(revision=2))  # revision 2 needs revision 1 stored; none is
        assert store.save(status(), RolloutEvent(1.0, "fraud", "started", {}))
        assert not store.save(status(step=2), RolloutEvent(2.0, "fraud", "step", {"step": 2}))  # a second rev. 1
        assert not store.save(status(step=2, revision=3), RolloutEvent(2.0, "fraud", "step", {"step": 2}))
        assert store.load("fraud") == status()
        assert [e.kind for e in store.events("fraud")] == ["started"]  # a refused save appends nothing
        assert store.save(status(step=2, revision=2), RolloutEvent(3.0, "fraud", "step", {"step": 2}))
        assert [e.kind for e in store.events("fraud")] == ["started", "step"]
        assert store.load("fraud") == status(step=2, revision=2)
    finally:
        store.close()


def test_concurrent_writers_never_save_one_decision_twice(store_url: str) -> None:
    """Six writers, each with its own connection, race to step one rollout from step 0 to 60: each
    reads the status, decides the next step, and saves; a writer told False reads again."""
    first = open_rollout_store(store_url)
    first.save(status(step=0))
    last_step, writers = 60, 6
    won: Counter[int] = Counter()
    lost: Counter[int] = Counter()
    errors: list[BaseException] = []
    go = threading.Barrier(writers)

    def writer(n: int) -> None:
        store = open_rollout_store(store_url)
        try:
            go.wait()
            while True:
                s = store.load("fraud")
                assert s is not None
                if s.step_index >= last_step:
                    return
                step = s.step_index + 1
                if store.save(replace(s, step_index=step, revision=s.revision + 1),
                              RolloutEvent(float(step), "fraud", "step", {"step": step, "by": n})):
                    won[n] += 1
                else:
                    lost[n] += 1
        except BaseException as e:
            errors.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        final = first.load("fraud")
        steps = [e.detail["step"] for e in first.events("fraud", 1000)]
    finally:
        first.close()
    assert final is not None and (final.step_index, final.revision) == (last_step, last_step + 1)
    assert steps == list(range(1, last_step + 1))  # every step once, in order: none twice, none lost
    assert sum(won.values()) == last_step
    assert sum(lost.values()) > 0, "the writers never raced: the test proves nothing"


def test_version_orders_keep_the_latest_per_version(store_url: str) -> None:
    store = open_rollout_store(store_url)
    try:
        assert store.orders() == []
        store.put_order(VersionOrder("fraud", "3", loaded=True, id="a", at=1.0))
        store.put_order(VersionOrder("fraud", "2", loaded=False, id="b", at=2.0, drain_timeout_s=5.0))
        store.put_order(VersionOrder("fraud", "3", loaded=False, id="c", at=3.0))
        assert store.orders() == [VersionOrder("fraud", "2", loaded=False, id="b", at=2.0, drain_timeout_s=5.0),
                                  VersionOrder("fraud", "3", loaded=False, id="c", at=3.0)]
    finally:
        store.close()


def test_redis_keys_live_under_the_prefix(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = RedisRolloutStore(redis_url + "/ops")
    try:
        store.save(status())
        store.append_event(RolloutEvent(1.0, "fraud", "started", {}))
        store.put_order(VersionOrder("fraud", "3", loaded=True, id="a", at=1.0))
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in client.keys("*"))
        assert keys == ["ops:rollout-events:fraud", "ops:rollout:fraud", "ops:rollouts", "ops:version-orders"]
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
