"""Model repository layout: ``<repo>/<name>/model.yaml`` and ``<repo>/<name>/<version>/<artifact>``.

Version folders are positive integers; the highest is the default unless ``default_version``
says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inferlane.core.errors import ConfigError
from inferlane.core.spec import ModelConfig, load_config


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A model found in a repository (not loaded)."""

    name: str
    path: Path
    config: ModelConfig
    versions: tuple[str, ...]
    """Version folder names, lowest first."""

    @property
    def default_version(self) -> str:
        return self.config.default_version or self.versions[-1]


def version_folders(model_dir: Path) -> list[str]:
    """The version folders of a model folder (positive integers), lowest first; none when it cannot be read."""
    try:
        return sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0),
                      key=int)
    except OSError:
        return []


def scan_model(model_dir: Path) -> ModelEntry:
    """Read one model folder; ConfigError names the file and field at fault."""
    cfg_path = model_dir / "model.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{model_dir}: no model.yaml")
    config = load_config(cfg_path, model_dir.name)
    versions = version_folders(model_dir)
    if not versions:
        raise ConfigError(f"{model_dir}: no version folders (expected {model_dir}/1/{config.artifact_name})")
    if config.default_version is not None and config.default_version not in versions:
        raise ConfigError(f"{cfg_path}: default_version: {config.default_version!r} is not one of "
                          f"the version folders {versions}")
    return ModelEntry(config.name, model_dir, config, tuple(versions))


def locate_version(model_dir: str | Path, version: str | None = None) -> tuple[ModelEntry, str]:
    """A model folder's entry and the version to run (its default when ``version`` is None), without
    loading anything; ConfigError names an unknown version."""
    entry = scan_model(Path(model_dir))
    version = version or entry.default_version
    if version not in entry.versions:
        raise ConfigError(f"--version {version}: model {entry.name} has versions {list(entry.versions)}")
    return entry, version


def scan_repository(repo: Path) -> list[ModelEntry]:
    """Every model in a repository. A folder directly holding model.yaml is a one-model repo."""
    if not repo.is_dir():
        raise ConfigError(f"{repo}: model repository not found (expected a folder)")
    if (repo / "model.yaml").is_file():
        return [scan_model(repo)]
    dirs = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[ModelEntry] = []
    errors: list[str] = []
    for d in dirs:
        if not (d / "model.yaml").is_file():
            continue
        try:
            entries.append(scan_model(d))
        except ConfigError as e:
            errors.append(e.message)
    if errors:
        raise ConfigError("\n".join(errors))
    if not entries:
        raise ConfigError(f"{repo}: no models (expected {repo}/<name>/model.yaml)")
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{repo}: several folders declare the model name(s) {dupes}")
    return entries
