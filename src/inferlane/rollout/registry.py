"""The registry of loaded model versions, and hot loading and unloading while serving.

    registry = ModelRegistry.from_repository(Path("models"))
    await registry.load_all()             # loads and warms every version, off the event loop
    mv = registry.get("fraud")            # the version the router chooses (ModelNotFound / ModelNotReady)
    mv = registry.get("fraud", key="u-7") # sticky: one key, one version
    mv = registry.get("fraud", "2")       # pinned: bypasses the router
    await registry.load_version("fraud", "3")     # no traffic until a route names it
    await registry.unload_version("fraud", "1")   # in-flight requests finish first

A version counts as ready only after its warm-up batches ran. Before a load, its memory (about
twice its files, see :func:`estimate_bytes`) is checked against the memory budget
(``INFERLANE_MEMORY_BUDGET_BYTES``; none by default).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from inferlane.core.batcher import BatchObserver
from inferlane.core.errors import ConfigError, Conflict, InvalidInput, ModelNotFound, ModelNotReady
from inferlane.core.metrics import QueueState
from inferlane.core.model import ModelVersion
from inferlane.core.repository import ModelEntry, scan_model, scan_repository
from inferlane.rollout.router import Router

log = logging.getLogger(__name__)

ObserverFactory = Callable[[str, str], BatchObserver | None]
MEMORY_BUDGET_ENV = "INFERLANE_MEMORY_BUDGET_BYTES"


def memory_budget_from_env() -> int | None:
    """``INFERLANE_MEMORY_BUDGET_BYTES``: the most bytes all loaded versions may take (unset: no budget)."""
    raw = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"{MEMORY_BUDGET_ENV} must be a positive number of bytes, not {raw[:40]!r}")
    return int(raw)


def estimate_bytes(version_dir: Path) -> int:
    """A version's memory before loading it: twice the size of the files in its folder (the
    artifact on disk, and the runtime's copy of it with its working buffers)."""
    return 2 * sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())


class ModelRegistry:
    def __init__(self, entries: list[ModelEntry], observer_factory: ObserverFactory | None = None, *,
                 repo: Path | None = None, memory_budget_bytes: int | None = None) -> None:
        self.entries = {e.name: e for e in entries}
        self.repo = repo
        self._versions: dict[tuple[str, str], ModelVersion] = {}
        self._observer_factory = observer_factory
        self.memory_budget_bytes = memory_budget_bytes
        self._memory: dict[tuple[str, str], int] = {}
        """Estimated bytes of each loaded (or loading) version."""
        self._loading: dict[tuple[str, str], asyncio.Future[ModelVersion]] = {}
        self._active: dict[ModelVersion, int] = {}
        """Requests of the online lane inside each version (from enter to leave)."""
        self._idle: dict[ModelVersion, asyncio.Event] = {}
        """Set when a draining version has no request left inside."""
        self.router = Router(self._check_serving)
        for e in entries:
            self.router.add_model(e.name, e.default_version)
        self.ready = False
        self.load_error: str | None = None

    @classmethod
    def from_repository(cls, repo: Path, observer_factory: ObserverFactory | None = None, *,
                        memory_budget_bytes: int | None = None) -> ModelRegistry:
        """``memory_budget_bytes``: None reads INFERLANE_MEMORY_BUDGET_BYTES."""
        budget = memory_budget_bytes if memory_budget_bytes is not None else memory_budget_from_env()
        return cls(scan_repository(repo), observer_factory, repo=repo, memory_budget_bytes=budget)

    # -- loading ------------------------------------------------------------------------------------

    def _load_one(self, entry: ModelEntry, version: str) -> ModelVersion:
        mv = ModelVersion.load(entry.config, entry.path, version)
        try:  # a version that fails here is closed: its runtime's device memory goes back to the pool
            observer = self._observer_factory(entry.name, version) if self._observer_factory else None
            mv.start_batcher(observer=observer)
            seconds = mv.warmup()
        except BaseException:
            mv.close()
            raise
        log.info("loaded %s version %s (warm-up forward %.1f ms)", entry.name, version, seconds * 1e3)
        return mv

    def _reserve(self, entry: ModelEntry, version: str) -> None:
        """Count the version's memory before loading it; InvalidInput when over the budget."""
        need = estimate_bytes(entry.path / version)
        if self.memory_budget_bytes is not None:
            used = sum(self._memory.values())
            if used + need > self.memory_budget_bytes:
                raise InvalidInput(
                    f"model {entry.name} version {version} needs about {need} bytes and the loaded versions "
                    f"take {used}: over the memory budget of {self.memory_budget_bytes} bytes "
                    f"({MEMORY_BUDGET_ENV}); unload a version first")
        self._memory[(entry.name, version)] = need

    async def _load(self, entry: ModelEntry, version: str) -> ModelVersion:
        key = (entry.name, version)
        self._reserve(entry, version)
        try:
            mv = await asyncio.to_thread(self._load_one, entry, version)
        except BaseException:
            self._memory.pop(key, None)
            raise
        reported = getattr(mv.runtime, "memory_bytes", None)  # a runtime that knows its footprint
        if isinstance(reported, int) and reported > 0:
            self._memory[key] += reported
        mv.ready = True
        self._versions[key] = mv
        return mv

    async def load_all(self, *, ready: bool = True) -> None:
        """Load and warm every version; readiness turns true only when all succeeded (and, with
        ``ready=False``, only when the caller sets ``ready`` itself: the server first re-applies
        the stored rollout routes)."""
        try:
            for entry in list(self.entries.values()):
                for version in entry.versions:
                    if (entry.name, version) not in self._versions:
                        await self._load(entry, version)
        except Exception as e:
            self.load_error = str(e)
            log.error("model loading failed; the server stays not ready:\n%s", e)
            raise
        self.ready = ready

    def _rescan(self, name: str, version: str) -> ModelEntry:
        """The model's entry read again from its folder, now holding ``version``: ModelNotFound when
        the folder is missing. The entry keeps the configuration it was served with; the new
        version loads with the one on disk now."""
        old = self.entries.get(name)
        model_dir = old.path if old is not None else (self.repo / name if self.repo is not None else None)
        if model_dir is None or not (model_dir / "model.yaml").is_file():
            raise ModelNotFound(f"unknown model {name[:256]!r} (no {name[:256]}/model.yaml in the repository)")
        if not version.isdigit() or int(version) <= 0 or not (model_dir / version).is_dir():
            raise ModelNotFound(f"model {name!r} has no version folder {str(model_dir / version)[:512]!r}")
        try:
            fresh = scan_model(model_dir)
        except ConfigError as e:
            raise InvalidInput(e.message) from e
        if fresh.name != name:
            raise InvalidInput(f"{model_dir}/model.yaml names the model {fresh.name!r}, not {name!r}")
        if old is None:
            self.entries[name] = fresh
            self.router.add_model(name, fresh.default_version)
        else:
            self.entries[name] = replace(old, versions=fresh.versions)
        return fresh

    async def load_version(self, name: str, version: str) -> ModelVersion:
        """Hot load: read ``<repo>/<name>/<version>``, check the memory budget, load and warm it up
        off the event loop. It is ready only after its warm-up, and gets no traffic until a route
        names it. Loading a loaded version returns it; two loads of one version share the work."""
        key = (name, version)
        loaded = self._versions.get(key)
        if loaded is not None:
            return loaded
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fresh = self._rescan(name, version)
        future: asyncio.Future[ModelVersion] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            try:
                mv = await self._load(fresh, version)
            except ConfigError as e:  # a broken artifact or warm-up: said in one line, as a 400
                raise InvalidInput(e.message) from e
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: a load nobody else awaits is not "never retrieved"
            raise
        finally:
            del self._loading[key]
        future.set_result(mv)
        return mv

    async def unload_version(self, name: str, version: str, drain_timeout_s: float = 30.0) -> None:
        """Stop sending requests to a version, let the ones inside it finish (up to
        ``drain_timeout_s``), then close it. Conflict while a route names it or while it loads."""
        key = (name, version)
        if key in self._loading:
            raise Conflict(f"model {name!r} version {version} is still loading")
        mv = self._versions.get(key)
        if mv is None:
            self.resolve(name, version)
            raise ModelNotFound(f"model {name!r} version {version} is not loaded")
        route = self.router.route(name)
        if version in route.versions():
            raise Conflict(f"model {name!r} version {version} is in its route ({route}); "
                           "route its traffic elsewhere before unloading it")
        mv.ready = False  # get() refuses it from now on; requests already inside finish
        if self._active.get(mv, 0):
            idle = self._idle[mv] = asyncio.Event()
            try:
                await asyncio.wait_for(idle.wait(), drain_timeout_s)
            except TimeoutError:
                log.warning("model %s version %s: %d requests still running after %.1f s; closing it anyway",
                            name, version, self._active.get(mv, 0), drain_timeout_s)
            finally:
                self._idle.pop(mv, None)
        del self._versions[key]
        self._memory.pop(key, None)
        if mv.batcher is not None:
            await mv.batcher.close()
        if not self._active.get(mv):
            self._active.pop(mv, None)
        await asyncio.to_thread(mv.close)
        log.info("unloaded %s version %s", name, version)

    def versions(self, name: str) -> list[str]:
        """The loaded versions of ``name`` (ready or not yet), lowest first."""
        return sorted((v for (n, v) in self._versions if n == name), key=int)

    # -- serving ------------------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> tuple[ModelEntry, str]:
        """The model's entry and the version a request for (name, version) goes to: the one
        place that answers "unknown model or version" (ModelNotFound, 404)."""
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {name[:256]!r}")
        v = version or self.router.route(name).stable
        if v not in entry.versions:
            raise ModelNotFound(f"model {name!r} has no version {v[:256]!r} (versions: {list(entry.versions)})")
        return entry, v

    def get(self, name: str, version: str | None = None, key: str | None = None) -> ModelVersion:
        """The loaded version serving (name, version): pinned when ``version`` is given, else the
        router's choice for ``key``. ModelNotFound, or ModelNotReady while it loads or unloads, and
        for an unpinned request until the registry is ready: the routes may not be applied yet (a
        worker process of ``serve --workers N`` takes connections before it is ready)."""
        v = version or self.router.choose(name, key)
        mv = self._versions.get((name, v))
        if mv is not None and mv.ready and (version or self.ready):
            return mv
        self.resolve(name, v)
        if version is None and not self.ready and self.load_error is None:
            raise ModelNotReady(f"model {name!r} is not ready (loading, or applying its stored routes)")
        if mv is not None:
            why = "unloading"
        elif (name, v) in self._loading or not self.ready:
            why = "loading or warming up"
        else:
            why = "not loaded"
        raise ModelNotReady(f"model {name!r} version {v} is not ready ({why})")

    def _check_serving(self, name: str, version: str) -> None:
        """For the router: InvalidInput unless (name, version) is loaded and ready."""
        mv = self._versions.get((name, version))
        if mv is None or not mv.ready:
            raise InvalidInput(f"model {name!r} version {version!r} is not loaded and ready "
                               f"(loaded: {self.versions(name)})")

    def enter(self, mv: ModelVersion) -> None:
        """A request starts inside ``mv`` (the online lane); unloading waits for it."""
        self._active[mv] = self._active.get(mv, 0) + 1

    def leave(self, mv: ModelVersion) -> None:
        n = self._active[mv] - 1
        if n or mv.ready:
            self._active[mv] = n
            return
        del self._active[mv]  # the last request out of a version being unloaded
        idle = self._idle.get(mv)
        if idle is not None:
            idle.set()

    def is_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.get(name, version)
        except (ModelNotFound, ModelNotReady):
            return False
        return True

    def loaded(self) -> list[ModelVersion]:
        return list(self._versions.values())

    def queue_states(self, lane: str = "online") -> list[QueueState]:
        """Every loaded version's batcher queue, for ``Metrics.watch_queues``."""
        return [QueueState(mv.name, mv.version, lane, mv.batcher.queue_depth, mv.batcher.inflight)
                for mv in list(self._versions.values()) if mv.batcher is not None]

    async def close(self) -> None:
        self.ready = False
        for mv in list(self._versions.values()):
            mv.ready = False
            if mv.batcher is not None:
                await mv.batcher.close()
            mv.close()
