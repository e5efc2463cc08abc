"""Gradient-boosted trees from their native files: XGBoost (``.ubj``/``.json``) and LightGBM (``.txt``).

    # model.yaml
    runtime: xgboost                  # or lightgbm
    inputs:  [{name: features, datatype: FP32, shape: [-1, 30]}]
    outputs: [{name: probabilities, datatype: FP32, shape: [-1, 2]},
              {name: label, datatype: INT64, shape: [-1]}]
    trees: {outputs: {probabilities: probabilities, label: label}}

Both formats are plain data (JSON, UBJSON, text): no code runs when they load, so ``trusted`` is not
needed (a pickled booster is refused). One input matrix; each declared output is filled by one
prediction kind (``trees.outputs``), the way ``sklearn.methods`` maps estimator methods. The
booster's threads follow the CPU-aware plan of core/cpus.py (``trees.threads`` wins).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from inferlane.core.cpus import ThreadPlan
from inferlane.core.errors import ConfigError, OutOfMemory
from inferlane.core.runtimes.base import Batch
from inferlane.core.runtimes.devices import report, resolve_device
from inferlane.core.spec import ModelConfig, TreeOptions

_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
Predict = Callable[[np.ndarray, bool], np.ndarray]
"""``predict(x, margin)``: the booster's prediction for its objective, or its raw margin."""


class TreeRuntime:
    def __init__(self, config: ModelConfig, version_dir: Path, plan: ThreadPlan) -> None:
        path = version_dir / config.artifact_name
        if path.suffix in _PICKLE_SUFFIXES:
            raise ConfigError(f"{path}: refusing a pickled booster (unpickling runs code from the file); "
                              "save it natively: booster.save_model('model.ubj') for XGBoost, "
                              "booster.save_model('model.txt') for LightGBM")
        opts = config.trees or TreeOptions()
        device = resolve_device(config.device, _no_cuda)
        if config.runtime == "lightgbm" and device != "cpu":
            raise ConfigError(f"{path}: device {config.device}: runtime lightgbm runs on CPU only here "
                              "(its CUDA build is a separate compile); use device: cpu")
        self._held = report(config, path, device, path.stat().st_size, "artifact size")
        with self._held.while_loading():
            self._load(config, opts, path, device, opts.threads or plan.threads)

    def _load(self, config: ModelConfig, opts: TreeOptions, path: Path, device: str, threads: int) -> None:
        if config.runtime == "xgboost":
            self._predict, features, self._classes = _xgboost(path, threads, device)
        else:
            self._predict, features, self._classes = _lightgbm(path, threads)
        spec = config.inputs[0]
        if spec.row_shape != (features,):
            raise ConfigError(f"{path}: inputs.{spec.name}.shape: the booster takes {features} features "
                              f"per row: declare shape [-1, {features}] (config has {list(spec.shape)})")
        self._input = spec.name
        kinds = dict(opts.outputs) or {config.outputs[0].name: "value"}
        declared = [s.name for s in config.outputs]
        for out, kind in kinds.items():
            if out not in declared:
                raise ConfigError(f"trees.outputs.{out}: not a declared output ({declared})")
            if kind in ("probabilities", "label") and self._classes == 0:
                raise ConfigError(f"trees.outputs.{out}: {kind} needs a classification objective; this "
                                  "booster is a regressor or ranker (use value or margin)")
        if set(kinds) != set(declared):
            raise ConfigError(f"trees.outputs: say what fills each output; missing "
                              f"{sorted(set(declared) - set(kinds))}")
        self._kinds = kinds

    def predict(self, batch: Batch) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch[self._input])
        try:
            value = self._predict(x, False) if any(k != "margin" for k in self._kinds.values()) else None
            margin = self._predict(x, True) if "margin" in self._kinds.values() else None
        except MemoryError as e:
            raise OutOfMemory(f"the booster ran out of memory on a batch of {len(x)} rows; lower "
                              "batching.max_batch_size") from e
        out: dict[str, np.ndarray] = {}
        for name, kind in self._kinds.items():
            if kind == "margin":
                out[name] = np.asarray(margin)
            elif kind == "value":
                out[name] = np.asarray(value)
            else:
                probs = _probabilities(np.asarray(value), self._classes)
                out[name] = probs if kind == "probabilities" else probs.argmax(axis=1).astype(np.int64)
        return out

    def close(self) -> None:
        self._held.release()
        self._predict = _closed


def _xgboost(path: Path, threads: int, device: str) -> tuple[Predict, int, int]:
    try:
        import xgboost as xgb
    except ImportError as e:
        raise ConfigError("runtime xgboost needs XGBoost: pip install 'inferlane[trees]'") from e
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except xgb.core.XGBoostError as e:
        raise ConfigError(f"{path}: not an XGBoost model file (booster.save_model to .ubj or .json): "
                          f"{str(e).splitlines()[0]}") from e
    booster.set_param({"nthread": threads, "device": device})
    objective = str(json.loads(booster.save_config())["learner"]["objective"]["name"])
    classes = 2 if objective == "binary:logistic" else 0
    if objective == "multi:softprob":
        classes = int(json.loads(booster.save_config())["learner"]["learner_model_param"]["num_class"])

    def predict(x: np.ndarray, margin: bool) -> np.ndarray:
        return np.asarray(booster.inplace_predict(x, predict_type="margin" if margin else "value"))

    return predict, booster.num_features(), classes


def _lightgbm(path: Path, threads: int) -> tuple[Predict, int, int]:
    try:
        import lightgbm as lgb
    except ImportError as e:
        raise ConfigError("runtime lightgbm needs LightGBM: pip install 'inferlane[trees]'") from e
    try:
        booster = lgb.Booster(model_file=str(path))
    except lgb.basic.LightGBMError as e:
        raise ConfigError(f"{path}: not a LightGBM model file (booster.save_model to .txt): {e}") from e
    objective = str(booster.dump_model().get("objective", ""))
    classes = 2 if objective.startswith("binary") else 0
    if objective.startswith("multiclass"):
        classes = int(objective.split("num_class:")[1].split()[0])

    def predict(x: np.ndarray, margin: bool) -> np.ndarray:
        return np.asarray(booster.predict(x, raw_score=margin, num_threads=threads))

    return predict, booster.num_feature(), classes


def _probabilities(value: np.ndarray, classes: int) -> np.ndarray:
    """One column per class: a binary model's P(1) becomes [1 - p, p]."""
    if classes == 2 and value.ndim == 1:
        return np.stack([1.0 - value, value], axis=1)
    return value


def _no_cuda() -> bool:
    """``device: auto`` for trees: the CPU (a GPU booster needs its own build; name ``cuda:N`` for it)."""
    return False


def _closed(x: np.ndarray, margin: bool) -> np.ndarray:
    raise RuntimeError("the model was closed")

