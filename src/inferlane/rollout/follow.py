"""Follow a model's route from the rollout store outside the server: the versions a lane in another
process (``inferlane stream run``) scores with, chosen per key as the server's router chooses.

    follower = RouteFollower(entry, rollout_store_opener(None), load=load_and_warm)
    follower.start()                          # the route now, its versions loaded and warm; then every second
    with follower.split(keys) as parts:       # [(model version, rows or None for all)], held until the end
        for model, rows in parts: ...
    follower.close()

The route is what the server applies (``route_of`` of the stored status; the model's default version
while none is stored). Each key goes where the server's router sends it: ``Route.side`` of the key's
:func:`sticky_point`, so one key reaches one version in the server and in the stream. A shadow is
not mirrored here (it only informs a rollout in the server).

Every ``every_s`` a thread reads the route again. A version it names for the first time is loaded
and warmed before any event goes to it; the previous route serves meanwhile. A version no longer
named (after a promotion or a rollback) is closed once the micro-batches holding it are done. A
store that cannot be read, or a version that cannot be loaded here, keeps the current route (and
is logged); the load is tried again when the route changes, or after ``RETRY_LOAD_S``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from inferlane.core.model import ModelVersion
from inferlane.core.repository import ModelEntry
from inferlane.core.state import state_dir
from inferlane.rollout.router import Route, route_of, sticky_point
from inferlane.store.rollout import STORE_ENV, RolloutStore, open_rollout_store

log = logging.getLogger(__name__)

RETRY_LOAD_S = 30.0
"""A version that failed to load is tried again this often while the route still names it."""

Part = tuple[ModelVersion, np.ndarray | None]
"""A version and the rows (indices into the keys) it scores; None: every row."""
StoreOpener = Callable[[], RolloutStore | None]


def rollout_store_opener(url: str | None, flag: str = "--rollout-store") -> tuple[StoreOpener, str]:
    """How a lane outside the server opens the server's rollout store, and a description of it:
    ``url``, else ``$INFERLANE_ROLLOUT_STORE``, else ``rollouts.db`` in the state folder (the
    server's own default). The default file is opened once a server created it: until then there
    is no rollout to follow (None). A URL is checked now (ConfigError)."""
    chosen, where = (url, flag) if url else (os.environ.get(STORE_ENV) or None, STORE_ENV)
    if chosen:
        open_rollout_store(chosen, where).close()  # a malformed URL is a usage error, said at once
        return (lambda: open_rollout_store(chosen, where)), f"{where} {chosen}"
    path = state_dir() / "rollouts.db"

    def default() -> RolloutStore | None:
        return open_rollout_store(str(path)) if Path(path).is_file() else None

    return default, str(path)


class RouteFollower:
    def __init__(self, entry: ModelEntry, open_store: StoreOpener, load: Callable[[str], ModelVersion], *,
                 every_s: float = 1.0, on_route: Callable[[Route], None] | None = None) -> None:
        self.entry = entry
        self.name = entry.name
        self._open_store = open_store
        self._store: RolloutStore | None = None
        self._load = load
        self.every_s = every_s
        self._on_route = on_route
        self._lock = threading.Lock()
        self._route = Route(stable=entry.default_version)
        self._models: dict[str, ModelVersion] = {}
        self._users: Counter[str] = Counter()
        """Micro-batches holding each version (from ``split`` to the end of its block)."""
        self._retired: set[str] = set()
        """Versions no longer routed, closed once no micro-batch holds them."""
        self._failed: tuple[Route, float] | None = None
        self._problem: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading --------------------------------------------------------------------------------------

    @property
    def route(self) -> Route:
        with self._lock:
            return self._route

    @property
    def version(self) -> str:
        """The stable version now."""
        return self.route.stable

    def loaded(self) -> list[str]:
        """The versions loaded now (routed, or retired and still held by a micro-batch)."""
        with self._lock:
            return sorted(self._models, key=int)

    # -- following ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Read the route and load its versions (errors raise: the lane does not start on versions
        the server may no longer route to), then follow it in a thread."""
        route = self._read()
        self._apply(route)
        self._thread = threading.Thread(target=self._follow, name="route-follower", daemon=True)
        self._thread.start()

    def _read(self) -> Route:
        """The route the server applies now; the default version while no rollout is stored."""
        if self._store is None:
            self._store = self._open_store()
            if self._store is None:
                return Route(stable=self.entry.default_version)
        status = self._store.load(self.name)
        if status is None:
            return Route(stable=self.entry.default_version)
        r = route_of(status)
        return Route(stable=r.stable, canary=r.canary, canary_weight=r.canary_weight)  # no shadow here

    def _apply(self, route: Route) -> None:
        """Load what ``route`` adds (before it takes any event), then route by it and retire the rest."""
        for version in route.versions():
            if version not in self.loaded():
                mv = self._load(version)
                with self._lock:
                    self._models[version] = mv
        with self._lock:
            before, self._route = self._route, route
            self._retired = set(self._models) - set(route.versions())  # a retired one routed again stays
        if route != before or self._thread is None:
            log.info("model %s: following the route %s", self.name, route)
        if self._on_route is not None:
            self._on_route(route)
        self._close_unused()

    def refresh(self) -> None:
        """Read the route again and apply a change (what the thread does every ``every_s``)."""
        try:
            route = self._read()
        except Exception as e:  # the store is away: keep the route, say so once
            if self._problem != str(e):
                self._problem = str(e)
                log.warning("model %s: cannot read the route (%s); keeping %s", self.name, e, self.route)
            return
        if self._problem is not None:
            log.info("model %s: the route can be read again", self.name)
            self._problem = None
        if route == self.route:
            return
        if self._failed is not None and self._failed[0] == route and time.monotonic() - self._failed[1] < RETRY_LOAD_S:
            return
        try:
            self._apply(route)
        except Exception as e:  # a version missing on this host, say: stay on the current route
            self._failed = (route, time.monotonic())
            log.error("model %s: cannot follow the route %s (%s); keeping %s, trying again in %g s",
                      self.name, route, e, self.route, RETRY_LOAD_S)
            return
        self._failed = None

    def _follow(self) -> None:
        while not self._stop.wait(self.every_s):
            self.refresh()

    # -- scoring --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def split(self, keys: Sequence[str | int]) -> Iterator[list[Part]]:
        """The versions these keys go to, with the rows of each (keys as text, as in the server's
        ``inferlane-routing-key``); the versions stay open until the block ends."""
        with self._lock:
            route = self._route
            models = {v: self._models[v] for v in route.versions()}
            for v in models:
                self._users[v] += 1
        try:
            canary = route.canary
            if canary is None or not len(keys):
                yield [(models[route.stable], None)]
            else:
                to_canary = np.fromiter((route.side(sticky_point(self.name, str(k))) == canary for k in keys),
                                        dtype=bool, count=len(keys))
                parts = [(models[route.stable], np.flatnonzero(~to_canary)),
                         (models[canary], np.flatnonzero(to_canary))]
                yield [(mv, rows) for mv, rows in parts if len(rows)]
        finally:
            with self._lock:
                for v in models:
                    self._users[v] -= 1
            self._close_unused()

    def _close_unused(self) -> None:
        with self._lock:
            idle = [v for v in self._retired if self._users[v] <= 0]
            closing = [self._models.pop(v) for v in idle]
            self._retired -= set(idle)
        for mv in closing:
            mv.close()
            log.info("model %s: version %s closed (no longer routed)", self.name, mv.version)

    def close(self) -> None:
        """Stop following and close every version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for mv in models:
            mv.close()
        if self._store is not None:
            self._store.close()
