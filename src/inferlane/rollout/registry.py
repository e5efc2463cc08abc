"""The registry of loaded model versions.

    registry = ModelRegistry.from_repository(Path("models"))
    await registry.load_all()          # loads and warms every version, off the event loop
    mv = registry.get("fraud")         # the default version, or ModelNotFound / ModelNotReady
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from inferlane.core.batcher import BatchObserver
from inferlane.core.errors import ModelNotFound, ModelNotReady
from inferlane.core.metrics import QueueState
from inferlane.core.model import ModelVersion
from inferlane.core.repository import ModelEntry, scan_repository

log = logging.getLogger(__name__)

ObserverFactory = Callable[[str, str], BatchObserver | None]


class ModelRegistry:
    def __init__(self, entries: list[ModelEntry], observer_factory: ObserverFactory | None = None) -> None:
        self.entries = {e.name: e for e in entries}
        self._versions: dict[tuple[str, str], ModelVersion] = {}
        self._observer_factory = observer_factory
        self.ready = False
        self.load_error: str | None = None

    @classmethod
    def from_repository(cls, repo: Path, observer_factory: ObserverFactory | None = None) -> ModelRegistry:
        return cls(scan_repository(repo), observer_factory)

    def _load_one(self, entry: ModelEntry, version: str) -> ModelVersion:
        mv = ModelVersion.load(entry.config, entry.path, version)
        observer = self._observer_factory(entry.name, version) if self._observer_factory else None
        mv.start_batcher(observer=observer)
        seconds = mv.warmup()
        log.info("loaded %s version %s (warm-up forward %.1f ms)", entry.name, version, seconds * 1e3)
        return mv

    async def load_all(self) -> None:
        """Load and warm every version; readiness turns true only when all succeeded."""
        try:
            for entry in self.entries.values():
                for version in entry.versions:
                    mv = await asyncio.to_thread(self._load_one, entry, version)
                    mv.ready = True
                    self._versions[(entry.name, version)] = mv
        except Exception as e:
            self.load_error = str(e)
            log.error("model loading failed; the server stays not ready:\n%s", e)
            raise
        self.ready = True

    def resolve(self, name: str, version: str | None = None) -> tuple[ModelEntry, str]:
        """The model's entry and the version a request for (name, version) goes to: the one
        place that answers "unknown model or version" (ModelNotFound, 404)."""
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {name[:256]!r}")
        v = version or entry.default_version
        if v not in entry.versions:
            raise ModelNotFound(f"model {name!r} has no version {v[:256]!r} (versions: {list(entry.versions)})")
        return entry, v

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The loaded version serving (name, version): ModelNotFound, or ModelNotReady while it loads."""
        _, v = self.resolve(name, version)
        mv = self._versions.get((name, v))
        if mv is None or not mv.ready:
            raise ModelNotReady(f"model {name!r} version {v} is not ready (loading or warming up)")
        return mv

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
        for mv in self._versions.values():
            mv.ready = False
            if mv.batcher is not None:
                await mv.batcher.close()
            mv.close()
