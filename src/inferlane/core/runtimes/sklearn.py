"""scikit-learn estimators: skops files by default, joblib pickles only when ``trusted: true``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from inferlane.core.errors import ConfigError
from inferlane.core.runtimes.base import Batch
from inferlane.core.spec import ModelConfig

_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform")


def _missing_extra() -> ConfigError:
    return ConfigError("runtime sklearn needs scikit-learn and skops: pip install 'inferlane[sklearn]'")


class SklearnRuntime:
    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        path = version_dir / config.artifact_name
        if not path.is_file():
            raise ConfigError(f"{path}: artifact not found")
        if path.suffix in _PICKLE_SUFFIXES:
            if not config.trusted:
                raise ConfigError(
                    f"{path}: refusing to load a pickle-based file: unpickling runs arbitrary code "
                    "from the file. Save the model with skops (model.skops), or set 'trusted: true' "
                    "in model.yaml if you built this file yourself.")
            try:
                import joblib
            except ImportError as e:
                raise _missing_extra() from e
            self._est = joblib.load(path)
        else:
            try:
                import skops.io as sio
            except ImportError as e:
                raise _missing_extra() from e
            try:
                untrusted = [t for t in sio.get_untrusted_types(file=path)
                             if t not in config.trusted_types]
                if untrusted:
                    raise ConfigError(
                        f"{path}: the file contains types skops does not trust by default: "
                        f"{untrusted}. If you trust them, list them under 'trusted_types' in model.yaml.")
                self._est = sio.load(path, trusted=list(config.trusted_types) or None)
            except ConfigError:
                raise
            except Exception as e:
                raise ConfigError(f"{path}: skops cannot load the file: {e}") from e
        self._input = config.inputs[0].name
        opts = config.sklearn
        methods = dict(opts.methods) if opts else {}
        if not methods:
            default = "predict_proba" if hasattr(self._est, "predict_proba") else "predict"
            methods = {config.outputs[0].name: default}
        declared = {s.name for s in config.outputs}
        for out, method in methods.items():
            if out not in declared:
                raise ConfigError(f"sklearn.methods.{out}: not a declared output ({sorted(declared)})")
            if method not in _METHODS or not hasattr(self._est, method):
                raise ConfigError(f"sklearn.methods.{out}: estimator {type(self._est).__name__} "
                                  f"has no method {method!r}")
        if set(methods) != declared:
            raise ConfigError(f"sklearn.methods: say which method produces each output; missing "
                              f"{sorted(declared - set(methods))}")
        self._methods: dict[str, Any] = {out: getattr(self._est, m) for out, m in methods.items()}

    def predict(self, batch: Batch) -> dict[str, np.ndarray]:
        x = batch[self._input]
        return {out: np.asarray(fn(x)) for out, fn in self._methods.items()}

    def close(self) -> None:
        self._est = None
