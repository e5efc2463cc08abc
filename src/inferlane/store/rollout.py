"""Rollout state that survives a restart: each model's rollout status and its history of events.

    store = open_rollout_store(None)                          # SQLite: state_dir()/rollouts.db
    store = open_rollout_store("redis://cache:6379/0/inferlane")   # shared by every process and host
    store.save(replace(status, revision=status.revision + 1), event)   # False: another writer came first
    store.load("fraud"); store.events("fraud", 100)
    store.put_order(VersionOrder("fraud", "3", loaded=True, id=new_order_id(), at=time.time()))

The records (:class:`RolloutSpec`, :class:`RolloutStatus`, :class:`RolloutEvent`,
:class:`VersionOrder`) live here, below the controller that writes them (``rollout/controller.py``),
so every backend stores the same thing: one JSON document per status, event and order.

**Compare-and-set.** A status carries a ``revision``, the number of changes saved. ``save`` stores
revision ``n`` only over revision ``n - 1`` (no status counts as 0), and appends its event in the
same atomic step: when two processes decide on the same window, one saves and the other is told
False, re-reads, and neither the step nor its event happens twice. SQLite does it in one
``BEGIN IMMEDIATE`` transaction, Redis with WATCH/MULTI.

Redis keys (``P`` is the prefix, ``inferlane`` unless the URL names one)::

    P:rollout:<model>          string   the status, JSON
    P:rollouts                 set      models with a status
    P:rollout-events:<model>   list     events, JSON, oldest first (the newest MAX_EVENTS kept)
    P:version-orders           hash     <model>/<version> -> the latest load or unload order, JSON
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from inferlane.core.errors import ConfigError, InvalidInput, Unavailable
from inferlane.core.state import state_dir
from inferlane.core.urls import redact, redis_url, sqlite_url
from inferlane.store.sqlite import open_durable

if TYPE_CHECKING:
    import redis

STORE_ENV = "INFERLANE_ROLLOUT_STORE"
MAX_EVENTS = 10_000
"""Events kept per model (the oldest go first)."""
ACCEPTED = "sqlite:///relative/path.db, sqlite:////absolute/path.db, a bare file path, or redis://host:port/db[/prefix]"


class RolloutState(StrEnum):
    RUNNING = "running"
    """Traffic is split (or mirrored, in shadow mode) and the windows are being checked."""
    PROMOTED = "promoted"
    """The new version serves everything; the old one is unloaded after the drain period."""
    ROLLED_BACK = "rolled_back"
    """A check failed: everything back on stable, the new version unloaded."""
    ABORTED = "aborted"
    """An operator stopped it: everything back on stable, the new version unloaded."""


@dataclass(frozen=True)
class RolloutSpec:
    """What ``rollout start`` asks for; checked when built (InvalidInput names the field).

        RolloutSpec("fraud", "3", canary_pct=5, steps=(5, 25, 50, 100), window_s=60, min_samples=500)
    """

    model: str
    to_version: str
    canary_pct: float = 5.0
    """The first step, in percent of unpinned requests. Steps at or below it are skipped."""
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    """Percents, increasing; the last must be 100."""
    window_s: float = 60.0
    min_samples: int = 500
    """Canary outcomes a window needs before it can pass."""
    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.3
    max_psi: float = 0.2
    shadow_pct: float = 0.0
    """Above 0: shadow mode. No canary traffic; this percent of requests is mirrored to the new version."""
    drain_s: float = 5.0
    """After a promotion, the old version is unloaded this long after traffic left it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(float(s) for s in self.steps))
        if not self.model or not self.to_version:
            raise InvalidInput("a rollout needs a model and a version to roll out to")
        if not 0.0 < self.canary_pct <= 100.0:
            raise InvalidInput(f"canary: {self.canary_pct:g} is not a percent in (0, 100]")
        if not self.steps or self.steps[-1] != 100.0:
            raise InvalidInput(f"steps: {list(self.steps)} must end with 100")
        if any(not 0.0 < s <= 100.0 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise InvalidInput(f"steps: {list(self.steps)} must be increasing percents in (0, 100]")
        if not self.window_s > 0:
            raise InvalidInput(f"window_s: {self.window_s:g} must be greater than 0")
        if self.min_samples < 1:
            raise InvalidInput(f"min_samples: {self.min_samples} must be at least 1")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise InvalidInput(f"max_error_rate: {self.max_error_rate:g} is not a share in [0, 1]")
        if not self.max_p99_ratio > 0:
            raise InvalidInput(f"max_p99_ratio: {self.max_p99_ratio:g} must be greater than 0")
        if not self.max_psi >= 0:
            raise InvalidInput(f"max_psi: {self.max_psi:g} must be at least 0")
        if not 0.0 <= self.shadow_pct <= 100.0:
            raise InvalidInput(f"shadow: {self.shadow_pct:g} is not a percent in [0, 100]")
        if self.drain_s < 0:
            raise InvalidInput(f"drain_s: {self.drain_s:g} must be at least 0")

    @property
    def percents(self) -> tuple[float, ...]:
        """The steps actually taken: the canary percent, then every step above it."""
        return (self.canary_pct, *(s for s in self.steps if s > self.canary_pct))

    @property
    def shadow(self) -> bool:
        return self.shadow_pct > 0


@dataclass(frozen=True)
class RolloutEvent:
    at: float
    """Wall-clock time (seconds since the epoch)."""
    model: str
    kind: str
    """started, step, promoted, rolled_back, aborted or resumed."""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutStatus:
    model: str
    stable: str
    """The version serving unpinned traffic that does not go to the canary."""
    canary: str | None
    """The version being rolled out while running (None once finished)."""
    state: RolloutState
    step_index: int
    weight: float
    """Share of unpinned requests sent to the canary (0 in shadow mode)."""
    window_started_at: float
    """On the controller's monotonic clock (meaningful only inside the process that set it)."""
    spec: RolloutSpec
    last_checks: dict[str, Any] = field(default_factory=dict)
    updated_at: float = 0.0
    """Wall-clock time of the last change."""
    revision: int = 0
    """Changes saved so far: :meth:`RolloutStore.save` stores revision n only over revision n - 1."""


@dataclass(frozen=True)
class VersionOrder:
    """An operator's ``models load`` or ``models unload`` of one version, for every process serving
    the model (``serve --workers N``, hosts sharing a Redis store): each applies each order once.

        VersionOrder("fraud", "3", loaded=True, id=new_order_id(), at=time.time())
    """

    model: str
    version: str
    loaded: bool
    """True: load and warm it (no traffic until a route names it); False: unload it."""
    id: str
    """Unique per order: a process remembers the orders it applied."""
    at: float
    """Wall-clock time of the order."""
    drain_timeout_s: float = 30.0
    """For an unload: how long requests already inside the version may take to finish."""


def new_order_id() -> str:
    return uuid.uuid4().hex


def status_to_json(s: RolloutStatus) -> str:
    return json.dumps(asdict(s), sort_keys=True)


def status_from_json(text: str | bytes) -> RolloutStatus:
    d = json.loads(text)
    spec = d.pop("spec")
    spec["steps"] = tuple(spec["steps"])
    d["state"] = RolloutState(d["state"])
    return RolloutStatus(spec=RolloutSpec(**spec), **d)


def event_to_json(e: RolloutEvent) -> str:
    return json.dumps(asdict(e), sort_keys=True)


def event_from_json(text: str | bytes) -> RolloutEvent:
    return RolloutEvent(**json.loads(text))


def order_to_json(o: VersionOrder) -> str:
    return json.dumps(asdict(o), sort_keys=True)


def order_from_json(text: str | bytes) -> VersionOrder:
    return VersionOrder(**json.loads(text))


class RolloutStore(Protocol):
    def save(self, status: RolloutStatus, event: RolloutEvent | None = None) -> bool:
        """Compare-and-set: store ``status`` and append ``event`` in one atomic step, only when the
        stored status's revision is ``status.revision - 1`` (no status stored counts as 0). False,
        and nothing written, when another writer changed the status first."""
        ...

    def load(self, model: str) -> RolloutStatus | None: ...

    def load_all(self) -> list[RolloutStatus]:
        """Every model's status, by model name."""
        ...

    def append_event(self, event: RolloutEvent) -> None: ...

    def events(self, model: str, limit: int = 100) -> list[RolloutEvent]:
        """The model's newest ``limit`` events, oldest first."""
        ...

    def put_order(self, order: VersionOrder) -> None:
        """Replace the order of ``(order.model, order.version)``."""
        ...

    def orders(self) -> list[VersionOrder]:
        """The latest order of every (model, version) that has one."""
        ...

    def close(self) -> None: ...


def _append(conn: sqlite3.Connection, event: RolloutEvent) -> None:
    """Append ``event`` and drop the model's events beyond MAX_EVENTS, inside a transaction."""
    conn.execute("INSERT INTO rollout_events (model, event) VALUES (?, ?)", (event.model, event_to_json(event)))
    conn.execute("DELETE FROM rollout_events WHERE model = ? AND id <= "
                 "(SELECT id FROM rollout_events WHERE model = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                 (event.model, event.model, MAX_EVENTS))


class SqliteRolloutStore:
    """One SQLite file (WAL), shared by the processes of one machine (``serve --workers N``)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self._conn = open_durable(self.path, busy_timeout_s=busy_timeout_s)  # every statement its own transaction
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("CREATE TABLE IF NOT EXISTS rollouts (model TEXT PRIMARY KEY, status TEXT NOT NULL)")
            self._conn.execute("CREATE TABLE IF NOT EXISTS rollout_events (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                               " model TEXT NOT NULL, event TEXT NOT NULL)")
            self._conn.execute("CREATE INDEX IF NOT EXISTS rollout_events_model ON rollout_events (model, id)")
            self._conn.execute("CREATE TABLE IF NOT EXISTS version_orders (model TEXT NOT NULL, version TEXT NOT NULL,"
                               " version_order TEXT NOT NULL, PRIMARY KEY (model, version))")

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as e:  # locked past the timeout, read-only, disk full
                raise Unavailable(f"the SQLite rollout store {self.path} cannot be used now: {e}") from e

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, the lock held. NOTE: BEGIN IMMEDIATE takes the file's write lock
        first, so what the transaction reads cannot change before it commits."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as e:  # locked past the timeout, read-only, disk full
                raise Unavailable(f"the SQLite rollout store {self.path} cannot be used now: {e}") from e

    def save(self, status: RolloutStatus, event: RolloutEvent | None = None) -> bool:
        doc, expected = status_to_json(status), status.revision - 1
        with self._write() as conn:
            if expected == 0:  # the first save, or a row stored before revisions existed
                cur = conn.execute("INSERT INTO rollouts (model, status) VALUES (?, ?) ON CONFLICT (model) DO UPDATE"
                                   " SET status = excluded.status"
                                   " WHERE coalesce(json_extract(rollouts.status, '$.revision'), 0) = 0",
                                   (status.model, doc))
            else:
                cur = conn.execute("UPDATE rollouts SET status = ? WHERE model = ?"
                                   " AND coalesce(json_extract(status, '$.revision'), 0) = ?",
                                   (doc, status.model, expected))
            if cur.rowcount != 1:
                return False  # another writer came first: the transaction commits nothing
            if event is not None:
                _append(conn, event)
        return True

    def load(self, model: str) -> RolloutStatus | None:
        rows = self._run("SELECT status FROM rollouts WHERE model = ?", (model,))
        return status_from_json(rows[0][0]) if rows else None

    def load_all(self) -> list[RolloutStatus]:
        return [status_from_json(r[0]) for r in self._run("SELECT status FROM rollouts ORDER BY model")]

    def append_event(self, event: RolloutEvent) -> None:
        with self._write() as conn:
            _append(conn, event)

    def events(self, model: str, limit: int = 100) -> list[RolloutEvent]:
        rows = self._run("SELECT event FROM rollout_events WHERE model = ? ORDER BY id DESC LIMIT ?",
                         (model, max(0, limit)))
        return [event_from_json(r[0]) for r in reversed(rows)]

    def put_order(self, order: VersionOrder) -> None:
        self._run("INSERT INTO version_orders (model, version, version_order) VALUES (?, ?, ?) ON CONFLICT"
                  " (model, version) DO UPDATE SET version_order = excluded.version_order",
                  (order.model, order.version, order_to_json(order)))

    def orders(self) -> list[VersionOrder]:
        return [order_from_json(r[0]) for r in self._run("SELECT version_order FROM version_orders"
                                                         " ORDER BY model, version")]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class RedisRolloutStore:
    """Redis, shared by every process on every host; ``url`` may name a key prefix after the database."""

    def __init__(self, url: str, flag: str = STORE_ENV) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError(f"{flag} {redact(url)}: the Redis rollout store needs redis-py: "
                              "pip install 'inferlane[redis]'") from None
        parsed = redis_url(url, flag, name="optional")
        self.prefix = parsed.name or "inferlane"
        self.address = parsed.address
        self._client: redis.Redis = parsed.client()

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        import redis

        try:
            return fn(*args)
        except redis.RedisError as e:
            raise Unavailable(f"the Redis rollout store at {self.address} cannot {what} now: {e}") from e

    def save(self, status: RolloutStatus, event: RolloutEvent | None = None) -> bool:
        import redis

        key = f"{self.prefix}:rollout:{status.model}"

        def attempt() -> bool:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.watch(key)  # type: ignore[no-untyped-call]  # EXEC fails if the status changes after this
                raw = pipe.get(key)
                stored = 0 if raw is None else int(json.loads(raw).get("revision", 0))
                if stored != status.revision - 1:
                    return False
                pipe.multi()
                pipe.set(key, status_to_json(status))
                pipe.sadd(f"{self.prefix}:rollouts", status.model)
                if event is not None:
                    self._queue_event(pipe, event)
                try:
                    pipe.execute()
                except redis.WatchError:
                    return False
                return True

        return bool(self._call("save a status", attempt))

    def load(self, model: str) -> RolloutStatus | None:
        raw = self._call("read a status", self._client.get, f"{self.prefix}:rollout:{model}")
        return None if raw is None else status_from_json(raw)

    def load_all(self) -> list[RolloutStatus]:
        models = sorted(m.decode() for m in self._call("list statuses", self._client.smembers,
                                                       f"{self.prefix}:rollouts"))
        found = (self.load(m) for m in models)
        return [s for s in found if s is not None]

    def _queue_event(self, pipe: Any, event: RolloutEvent) -> None:
        key = f"{self.prefix}:rollout-events:{event.model}"
        pipe.rpush(key, event_to_json(event))
        pipe.ltrim(key, -MAX_EVENTS, -1)

    def append_event(self, event: RolloutEvent) -> None:
        pipe = self._client.pipeline(transaction=True)
        self._queue_event(pipe, event)
        self._call("append an event", pipe.execute)

    def events(self, model: str, limit: int = 100) -> list[RolloutEvent]:
        if limit <= 0:
            return []
        raw = self._call("read events", self._client.lrange, f"{self.prefix}:rollout-events:{model}", -limit, -1)
        return [event_from_json(r) for r in raw]

    def put_order(self, order: VersionOrder) -> None:
        self._call("save an order", self._client.hset, f"{self.prefix}:version-orders",
                   f"{order.model}/{order.version}", order_to_json(order))

    def orders(self) -> list[VersionOrder]:
        raw = self._call("read orders", self._client.hgetall, f"{self.prefix}:version-orders")
        return sorted((order_from_json(v) for v in raw.values()), key=lambda o: (o.model, o.version))

    def close(self) -> None:
        self._client.close()


def open_rollout_store(url: str | None, flag: str = STORE_ENV) -> RolloutStore:
    """The store named by ``url`` (``INFERLANE_ROLLOUT_STORE``); None or empty: SQLite in the state folder."""
    if not url:
        return SqliteRolloutStore(state_dir() / "rollouts.db")
    if url.startswith(("redis://", "rediss://")):
        return RedisRolloutStore(url, flag)
    if url.startswith("sqlite:"):
        try:
            return SqliteRolloutStore(sqlite_url(url, flag).path)
        except ConfigError as e:
            raise ConfigError(f"{e.message}; use {ACCEPTED}") from None
    if "://" not in url and not url.endswith("/"):
        return SqliteRolloutStore(url)
    raise ConfigError(f"{flag} {redact(url)} is not supported; use {ACCEPTED}")
