"""A plain Python class in the version folder: ``load(version_dir)`` then ``predict(batch)``.

    # <repo>/echo/1/model.py
    class Model:
        def load(self, version_dir):
            self.scale = 2.0
        def predict(self, batch):
            return {"y": batch["x"] * self.scale}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from inferlane.core.errors import ConfigError
from inferlane.core.plugins import import_file
from inferlane.core.runtimes.base import Batch
from inferlane.core.spec import ModelConfig, PythonOptions


class PythonRuntime:
    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        path = version_dir / config.artifact_name
        class_name = (config.python or PythonOptions()).class_name
        module = import_file(path, f"inferlane_model_{config.name}_{version_dir.name}")
        cls = getattr(module, class_name, None)
        if cls is None:
            raise ConfigError(f"{path}: python.class: no class {class_name!r} in the file")
        obj: Any = cls()
        if not callable(getattr(obj, "predict", None)):
            raise ConfigError(f"{path}: class {class_name} has no predict(batch) method")
        if callable(getattr(obj, "load", None)):
            try:
                obj.load(version_dir)
            except Exception as e:
                raise ConfigError(f"{path}: {class_name}.load() failed: {e!r}") from e
        self._model = obj

    def predict(self, batch: Batch) -> dict[str, np.ndarray]:
        out = self._model.predict(dict(batch))
        if not isinstance(out, dict):
            raise TypeError(f"predict() must return a dict of arrays, got {type(out).__name__}")
        return {k: np.asarray(v) for k, v in out.items()}

    def close(self) -> None:
        close = getattr(self._model, "close", None)
        if callable(close):
            close()
