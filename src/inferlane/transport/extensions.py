"""The protocol's statistics and model repository extensions, once for both transports.

    statistics(registry, metrics, "fraud")           # {"model_stats": [...]}, Triton's shape
    repository_index(registry, ready_only=False)      # [{"name", "version", "state", "reason"}, ...]
    await load_model(orders, registry, "fraud")        # every version folder not loaded yet
    await unload_model(orders, registry, "fraud")      # every loaded version that no route names

Documents are plain dicts: HTTP answers them as JSON (transport/http/extensions.py), gRPC turns them
into its messages (transport/grpc/service.py). Loads and unloads go through the rollout's
:class:`~inferlane.rollout.versions.VersionOrders`, like the admin API's: every process serving the
repository follows them. The repository extension needs the admin token on both transports.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferlane.core.errors import InvalidInput, ModelNotFound
from inferlane.core.metrics import Metrics
from inferlane.core.repository import version_folders
from inferlane.rollout.registry import ModelRegistry
from inferlane.rollout.versions import VersionOrders

READY, UNAVAILABLE, UNLOADING = "READY", "UNAVAILABLE", "UNLOADING"
"""Repository index states (Triton's names)."""
REPOSITORY_PARAMETERS = ("version", "unload_dependents")
"""Load and unload parameters understood: ``version`` names one version; ``unload_dependents``
(sent by tritonclient) has no meaning here, inferlane models have no dependents."""


def _by_version(version: str) -> int:
    return int(version) if version.isdigit() else 0


def statistics(registry: ModelRegistry, metrics: Metrics, name: str = "", version: str = "") -> dict[str, Any]:
    """``{"model_stats": [...]}`` for one version, every loaded version of a model, or (no name) every
    loaded version of every model. ModelNotFound for an unknown model or version."""
    if not name:
        if version:
            raise InvalidInput("statistics for a version need the model's name")
        pairs = sorted(((mv.name, mv.version) for mv in registry.loaded()), key=lambda p: (p[0], _by_version(p[1])))
    elif version:
        entry, _ = registry.resolve(name, version)
        pairs = [(entry.name, version)]
    else:
        registry.resolve(name)
        pairs = [(name, v) for v in registry.versions(name)]
    return {"model_stats": [{"name": n, "version": v, **metrics.stats_doc(n, v)} for n, v in pairs]}


def _models_on_disk(registry: ModelRegistry) -> dict[str, Path]:
    """Every model folder of the repository (those served and those added since), by name."""
    found = {name: entry.path for name, entry in registry.entries.items()}
    repo = registry.repo
    if repo is not None and not (repo / "model.yaml").is_file():  # not a one-model repository
        try:
            folders = [p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            folders = []
        for folder in folders:
            if folder.name not in found and (folder / "model.yaml").is_file():
                found[folder.name] = folder
    return found


def repository_index(registry: ModelRegistry, ready_only: bool = False) -> list[dict[str, str]]:
    """One entry per version folder of every model in the repository, and per loaded version whose
    folder is gone: READY (serving), UNLOADING (requests inside finish first) or UNAVAILABLE."""
    index: list[dict[str, str]] = []
    for name, folder in sorted(_models_on_disk(registry).items()):
        loaded = registry.versions(name)
        for version in sorted(set(version_folders(folder)) | set(loaded), key=_by_version):
            if registry.is_ready(name, version):
                state, reason = READY, ""
            elif version in loaded:
                state, reason = UNLOADING, "unloading: the requests inside it finish first"
            elif not registry.ready and registry.load_error is None and name in registry.entries:
                state, reason = UNAVAILABLE, "the server is loading its models"
            else:
                state, reason = UNAVAILABLE, "not loaded"
            if state == READY or not ready_only:
                index.append({"name": name, "version": version, "state": state, "reason": reason})
    return index


def repository_version(parameters: Mapping[str, Any]) -> str | None:
    """The ``version`` parameter of a load or unload (None: every version); InvalidInput for a
    parameter this server does not take (Triton's ``config`` and ``file:`` overrides among them)."""
    unknown = sorted(k for k in parameters if k not in REPOSITORY_PARAMETERS)
    if unknown:
        hint = " (inferlane reads model.yaml and the version folders as they are on disk)" \
            if any(k == "config" or k.startswith("file:") for k in unknown) else ""
        raise InvalidInput(f"unknown repository parameter {unknown[0][:64]!r}{hint}; "
                           f"known: {', '.join(REPOSITORY_PARAMETERS)}")
    version = parameters.get("version")
    if version is None:
        return None
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version.isdigit() or int(version) < 1 or len(version) > 18:
        raise InvalidInput("parameters.version must name a version folder, a positive integer such as \"2\"")
    return version


async def load_model(orders: VersionOrders, registry: ModelRegistry, name: str,
                     version: str | None = None) -> list[str]:
    """Load ``version``, or every version folder of the model not loaded yet (a model added to the
    repository since the start included); returns the versions loaded now. Loading a loaded version
    does nothing: a changed model is a new version folder."""
    if version is not None:
        await orders.load(name, version)
        return [version]
    folder = _models_on_disk(registry).get(name)
    if folder is None:
        raise ModelNotFound(f"unknown model {name[:256]!r} (no {name[:256]}/model.yaml in the repository)")
    wanted = [v for v in version_folders(folder) if v not in registry.versions(name)]
    if not wanted and not registry.versions(name):
        raise ModelNotFound(f"model {name!r} has no version folder (expected {folder}/1/)")
    for v in wanted:  # one at a time: each is checked against the memory budget in turn
        await orders.load(name, v)
    return wanted


async def unload_model(orders: VersionOrders, registry: ModelRegistry, name: str, version: str | None = None,
                       drain_timeout_s: float = 30.0) -> list[str]:
    """Unload ``version`` (Conflict while a route names it), or every loaded version that no route
    names; returns the versions unloaded. The versions a route sends traffic to stay: route it
    elsewhere first (a rollout), then unload."""
    registry.resolve(name)
    if version is not None:
        await orders.unload(name, version, drain_timeout_s)
        return [version]
    routed = set(registry.router.route(name).versions())
    idle = [v for v in registry.versions(name) if v not in routed]
    for v in idle:
        await orders.unload(name, v, drain_timeout_s)
    return idle
