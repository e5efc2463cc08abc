"""Runtime adapters, chosen by ``runtime:`` in model.yaml."""

from __future__ import annotations

from pathlib import Path

from inferlane.core.cpus import ThreadPlan
from inferlane.core.errors import ConfigError
from inferlane.core.runtimes.base import Batch, Runtime
from inferlane.core.spec import ModelConfig

__all__ = ["Batch", "Runtime", "load_runtime"]


def load_runtime(config: ModelConfig, version_dir: Path, plan: ThreadPlan) -> Runtime:
    """Load one version's artifact with the runtime its config names, its threads as ``plan`` says."""
    artifact = version_dir / config.artifact_name
    folder, target = version_dir.resolve(), artifact.resolve()
    if not target.is_relative_to(folder):
        # '..', an absolute path or a symbolic link: a model loads only what its version folder holds.
        raise ConfigError(f"{artifact}: model.yaml field 'artifact' must name a file inside the version "
                          f"folder {version_dir}; this one resolves to {target}")
    if not artifact.is_file():
        raise ConfigError(f"{artifact}: artifact not found (runtime {config.runtime} expects "
                          f"'{config.artifact_name}'; set 'artifact' in model.yaml to change it)")
    limit_native_threads(plan.threads)
    if config.runtime == "onnx":
        from inferlane.core.runtimes.onnx import OnnxRuntime
        return OnnxRuntime(config, version_dir, plan)
    if config.runtime == "sklearn":
        from inferlane.core.runtimes.sklearn import SklearnRuntime
        return SklearnRuntime(config, version_dir)
    if config.runtime == "torch":
        from inferlane.core.runtimes.torch import TorchRuntime
        return TorchRuntime(config, version_dir, plan)
    if config.runtime in ("xgboost", "lightgbm"):
        from inferlane.core.runtimes.trees import TreeRuntime
        return TreeRuntime(config, version_dir, plan)
    from inferlane.core.runtimes.python import PythonRuntime
    return PythonRuntime(config, version_dir)


def limit_native_threads(threads: int) -> None:
    """BLAS and OpenMP pools (NumPy, scikit-learn, a Python model's libraries) to ``threads``, through
    threadpoolctl when it is installed (scikit-learn brings it). The pools are per process."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads)
