"""Import user code that lives with a model (Python runtime classes, pre/post-processing)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from inferlane.core.errors import ConfigError


def import_file(path: Path, module_name: str) -> ModuleType:
    """Import a Python file by path under a private module name."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"{path}: importing failed: {e!r}") from e
    return module


def load_function(model_dir: Path, ref: str, field: str, model_name: str) -> Callable[..., Any]:
    """Resolve ``module:function`` to a function in ``<model_dir>/<module>.py``."""
    module_name, func_name = ref.split(":", 1)
    module = import_file(model_dir / f"{module_name}.py", f"inferlane_{model_name}_{module_name}")
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"{model_dir}/model.yaml: {field}: {module_name}.py has no function {func_name!r}")
    return fn  # type: ignore[no-any-return]
