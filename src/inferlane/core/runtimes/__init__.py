"""Runtime adapters, chosen by ``runtime:`` in model.yaml."""

from __future__ import annotations

from pathlib import Path

from inferlane.core.errors import ConfigError
from inferlane.core.runtimes.base import Batch, Runtime
from inferlane.core.spec import ModelConfig

__all__ = ["Batch", "Runtime", "load_runtime"]


def load_runtime(config: ModelConfig, version_dir: Path) -> Runtime:
    """Load one version's artifact with the runtime its config names."""
    artifact = version_dir / config.artifact_name
    if not artifact.is_file():
        raise ConfigError(f"{artifact}: artifact not found (runtime {config.runtime} expects "
                          f"'{config.artifact_name}'; set 'artifact' in model.yaml to change it)")
    if config.runtime == "onnx":
        from inferlane.core.runtimes.onnx import OnnxRuntime
        return OnnxRuntime(config, version_dir)
    if config.runtime == "sklearn":
        from inferlane.core.runtimes.sklearn import SklearnRuntime
        return SklearnRuntime(config, version_dir)
    from inferlane.core.runtimes.python import PythonRuntime
    return PythonRuntime(config, version_dir)
