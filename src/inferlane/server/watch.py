"""``serve --watch``: hot-load version folders that appear in the model repository while serving.

    watcher = RepositoryWatcher(registry)   # the folders there now are the registry's to load
    await watcher.scan()                    # loads what appeared since; returns [(model, version), ...]
    await watcher.run(interval_s=2.0)       # scan, wait, scan, ... until cancelled

A new ``<repo>/<name>/<version>/`` folder of a served model is loaded and warmed by
``registry.load_version``; it gets no traffic until a route or a rollout names it. A folder that
fails to load (often one still being copied) is logged once and tried again only when its files
change. A version unloaded on purpose (after a promotion, say) is not loaded back: only folders
that are new to the watcher are loaded. A folder removed and created again counts as new.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from inferlane.rollout.registry import ModelRegistry

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]
"""(relative path, size, mtime in ns) of every file under a version folder."""


def version_folders(model_dir: Path) -> set[str]:
    """The version folders of a model: positive integers, as ``core/repository.py`` reads them."""
    try:
        return {p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0}
    except OSError:
        return set()


def fingerprint(folder: Path) -> Fingerprint:
    found: list[tuple[str, int, int]] = []
    for p in folder.rglob("*"):
        try:
            st = p.stat()
        except OSError:  # removed while listing: the next scan sees the change
            continue
        if p.is_file():
            found.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return tuple(sorted(found))


class RepositoryWatcher:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._seen: dict[str, set[str]] = {name: version_folders(e.path) for name, e in registry.entries.items()}
        self._failed: dict[tuple[str, str], Fingerprint] = {}

    def _new_folders(self) -> list[tuple[str, str, Fingerprint | None]]:
        """(model, version, fingerprint of a folder that failed before) for every folder not seen yet."""
        new: list[tuple[str, str, Fingerprint | None]] = []
        for name, entry in self.registry.entries.items():
            present = version_folders(entry.path)
            seen = self._seen.setdefault(name, set())
            seen &= present  # a folder removed and created again is new
            for key in [k for k in self._failed if k[0] == name and k[1] not in present]:
                del self._failed[key]
            for version in sorted(present - seen, key=int):
                failed = self._failed.get((name, version))
                new.append((name, version, None if failed is None else fingerprint(entry.path / version)))
        return new

    async def scan(self) -> list[tuple[str, str]]:
        """Load every version folder that appeared since the last scan; returns those loaded."""
        loaded: list[tuple[str, str]] = []
        for name, version, current in await asyncio.to_thread(self._new_folders):
            key = (name, version)
            if key in self._failed and self._failed[key] == current:
                continue  # failed before and unchanged since: logged once already
            if version in self.registry.versions(name):  # loaded by an admin call meanwhile
                self._seen[name].add(version)
                continue
            folder = self.registry.entries[name].path / version
            before = current if current is not None else await asyncio.to_thread(fingerprint, folder)
            try:
                await self.registry.load_version(name, version)
            except Exception as e:
                self._failed[key] = before
                log.warning("watch: cannot load %s version %s from %s (tried again when its files change): %s",
                            name, version, folder, e)
                continue
            self._failed.pop(key, None)
            self._seen[name].add(version)
            loaded.append(key)
            log.info("watch: loaded %s version %s from %s; it gets traffic once a route or rollout names it",
                     name, version, folder)
        return loaded

    async def run(self, interval_s: float = 2.0) -> None:
        log.info("watching %d model folder(s) for new versions every %g s", len(self.registry.entries), interval_s)
        while True:
            await self.scan()
            await asyncio.sleep(interval_s)
