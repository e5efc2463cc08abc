"""runtime: xgboost and runtime: lightgbm — native files, outputs by prediction kind, batched vs
one-by-one outputs (bit-identical: every row walks its trees alone), refused artifacts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from inferlane.core.errors import ConfigError
from tests.runtimes.builders import FEATURES, load, rows, training_rows, write_lightgbm, write_xgboost

Writer = Callable[..., Path]
WRITERS: dict[str, Writer] = {"xgboost": write_xgboost, "lightgbm": write_lightgbm}


def edit_config(model_dir: Path, **changes: Any) -> None:
    path = model_dir / "model.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **changes}))


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("runtime", ["xgboost", "lightgbm"])
def test_outputs_match_the_library_and_batching_changes_nothing(tmp_path: Path, runtime: str, classes: int) -> None:
    version = WRITERS[runtime](tmp_path, "m", classes=classes)
    mv = load(tmp_path, "m")
    mv.warmup()
    x = rows(200, seed=3)
    out = mv.forward({"features": x})
    probs = out["probabilities"]
    assert probs.shape == (200, classes) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert np.array_equal(out["label"], probs.argmax(axis=1)) and out["label"].dtype == np.int64
    assert np.mean(out["label"] == _training_labels(x, classes)) > 0.7  # it learned something
    if runtime == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(version / "model.ubj"))
        native = np.asarray(booster.predict(xgb.DMatrix(x)))
    else:
        import lightgbm as lgb

        native = np.asarray(lgb.Booster(model_file=str(version / "model.txt")).predict(x))
    want = np.stack([1 - native, native], axis=1) if classes == 2 else native
    np.testing.assert_array_equal(probs, want.astype(np.float32))
    one_by_one = [mv.forward({"features": x[i:i + 1]}) for i in range(len(x))]
    for name, arr in out.items():
        assert np.array_equal(arr, np.concatenate([o[name] for o in one_by_one])), name


def _training_labels(x: np.ndarray, classes: int) -> np.ndarray:
    """The labels the boosters were trained to predict (builders.training_rows), for ``x``."""
    score = x[:, 0] + 0.5 * x[:, 1] - x[:, 2]
    ref, _ = training_rows(classes=classes)
    ref_score = ref[:, 0] + 0.5 * ref[:, 1] - ref[:, 2]
    return np.asarray(np.digitize(score, np.quantile(ref_score, np.linspace(0, 1, classes + 1)[1:-1])))


def test_default_output_is_the_booster_value(tmp_path: Path) -> None:
    write_xgboost(tmp_path, "m", outputs=[{"name": "p", "datatype": "FP32", "shape": [-1]}], trees=None)
    out = load(tmp_path, "m").forward({"features": rows(5)})
    assert out["p"].shape == (5,) and ((out["p"] > 0) & (out["p"] < 1)).all()


@pytest.mark.parametrize("runtime", ["xgboost", "lightgbm"])
def test_the_feature_count_is_checked(tmp_path: Path, runtime: str) -> None:
    WRITERS[runtime](tmp_path, "m")
    edit_config(tmp_path / "m", inputs=[{"name": "features", "datatype": "FP32", "shape": [-1, 4]}])
    with pytest.raises(ConfigError, match=rf"the booster takes {FEATURES} features per row: declare shape "
                                          rf"\[-1, {FEATURES}\]"):
        load(tmp_path, "m")


def test_every_output_needs_a_kind_and_kinds_fit_the_objective(tmp_path: Path) -> None:
    write_lightgbm(tmp_path, "m")
    edit_config(tmp_path / "m", trees={"outputs": {"probabilities": "probabilities"}})
    with pytest.raises(ConfigError, match=r"trees.outputs: say what fills each output; missing \['label', 'margin'\]"):
        load(tmp_path, "m")
    edit_config(tmp_path / "m", trees={"outputs": {"probabilities": "probabilities", "label": "label",
                                                   "margin": "margin", "extra": "value"}})
    with pytest.raises(ConfigError, match=r"trees.outputs.extra: not a declared output"):
        load(tmp_path, "m")


def test_a_regressor_has_no_probabilities(tmp_path: Path) -> None:
    import xgboost as xgb

    version = write_xgboost(tmp_path, "m")
    x = rows(300)
    xgb.train({"objective": "reg:squarederror", "nthread": 1}, xgb.DMatrix(x, label=x[:, 0]),
              num_boost_round=3).save_model(str(version / "model.ubj"))
    with pytest.raises(ConfigError, match=r"needs a classification objective; this booster is a regressor"):
        load(tmp_path, "m")


@pytest.mark.parametrize(("runtime", "message"), [
    ("xgboost", r"not an XGBoost model file \(booster.save_model to .ubj or .json\)"),
    ("lightgbm", r"not a LightGBM model file \(booster.save_model to .txt\)"),
])
def test_corrupt_and_foreign_files_are_refused(tmp_path: Path, runtime: str, message: str) -> None:
    version = WRITERS[runtime](tmp_path, "m")
    artifact = next(version.iterdir())
    artifact.write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, "m")
    other = WRITERS["lightgbm" if runtime == "xgboost" else "xgboost"](tmp_path, "other")
    artifact.write_bytes(next(other.iterdir()).read_bytes())  # the other library's model file
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, "m")


def test_a_pickled_booster_is_refused(tmp_path: Path) -> None:
    version = write_xgboost(tmp_path, "m")
    (version / "model.ubj").rename(version / "model.pkl")
    edit_config(tmp_path / "m", artifact="model.pkl")
    with pytest.raises(ConfigError, match=r"refusing a pickled booster"):
        load(tmp_path, "m")


def test_lightgbm_refuses_a_cuda_device(tmp_path: Path) -> None:
    write_lightgbm(tmp_path, "m", device="cuda:0")
    with pytest.raises(ConfigError, match=r"device cuda:0: runtime lightgbm runs on CPU only"):
        load(tmp_path, "m")


def test_trees_take_exactly_one_input(tmp_path: Path) -> None:
    write_xgboost(tmp_path, "m")
    edit_config(tmp_path / "m", inputs=[{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                                        {"name": "b", "datatype": "FP32", "shape": [-1, 3]}])
    with pytest.raises(ConfigError, match=r"runtime xgboost takes exactly one input"):
        load(tmp_path, "m")
