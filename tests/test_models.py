"""Runtimes, signatures, pre/post-processing, config validation and `inferlane models validate`."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from inferlane.core.errors import BatchSizeMismatch, ConfigError, InvalidInput, ModelError, PayloadTooLarge
from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model, scan_repository
from inferlane.demo.models import synthetic_transactions


def load(model_dir: Path, version: str = "1") -> ModelVersion:
    entry = scan_model(model_dir)
    return ModelVersion.load(entry.config, entry.path, version)


def write_yaml(path: Path, doc: dict[str, object]) -> None:
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture(scope="module")
def estimator() -> object:
    from sklearn.linear_model import LogisticRegression

    x, y = synthetic_transactions(2000)
    return LogisticRegression(max_iter=200).fit(x, y)


def sklearn_model(root: Path, est: object, artifact: str, **extra: object) -> Path:
    d = root / "clf"
    (d / "1").mkdir(parents=True)
    if artifact.endswith(".skops"):
        import skops.io as sio

        sio.dump(est, d / "1" / artifact)
    else:
        import joblib

        joblib.dump(est, d / "1" / artifact)
    write_yaml(d / "model.yaml", {
        "runtime": "sklearn", "artifact": artifact,
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 30]}],
        "outputs": [{"name": "proba", "datatype": "FP64", "shape": [-1, 2]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
        "sklearn": {"methods": {"proba": "predict_proba", "label": "predict"}},
        **extra,
    })
    return d


def test_onnx_batched_and_alone_give_identical_outputs(model_repo: Path) -> None:
    mv = load(model_repo / "fraud")
    x, _ = synthetic_transactions(64, seed=3)
    batched = mv.forward({"features": x})
    for i in range(len(x)):
        alone = mv.forward({"features": x[i:i + 1]})
        assert np.array_equal(alone["probabilities"][0], batched["probabilities"][i])
        assert alone["label"][0] == batched["label"][i]


def test_sklearn_skops_runtime_matches_the_estimator(tmp_path: Path, estimator: object) -> None:
    mv = load(sklearn_model(tmp_path, estimator, "model.skops"))
    x, _ = synthetic_transactions(10, seed=5)
    out = mv.forward({"features": x.astype(np.float64)})
    assert np.array_equal(out["proba"], estimator.predict_proba(x.astype(np.float64)))  # type: ignore[attr-defined]
    assert out["label"].dtype == np.int64


def test_joblib_is_refused_unless_trusted(tmp_path: Path, estimator: object) -> None:
    d = sklearn_model(tmp_path, estimator, "model.joblib")
    with pytest.raises(ConfigError, match="refusing to load a pickle-based file"):
        load(d)
    cfg = yaml.safe_load((d / "model.yaml").read_text())
    write_yaml(d / "model.yaml", {**cfg, "trusted": True})
    mv = load(d)
    assert mv.forward({"features": np.zeros((2, 30))})["proba"].shape == (2, 2)


def test_skops_untrusted_types_are_refused_with_the_type_named(tmp_path: Path) -> None:
    import operator

    from sklearn.preprocessing import FunctionTransformer

    est = FunctionTransformer(operator.neg)  # not among skops' default-trusted types
    d = sklearn_model(tmp_path, est, "model.skops", sklearn={"methods": {"proba": "transform"}})
    cfg = yaml.safe_load((d / "model.yaml").read_text())
    cfg["outputs"] = [{"name": "proba", "datatype": "FP64", "shape": [-1, 30]}]
    write_yaml(d / "model.yaml", cfg)
    with pytest.raises(ConfigError, match=re.escape("_operator.neg")):
        load(d)
    write_yaml(d / "model.yaml", {**cfg, "trusted_types": ["_operator.neg"]})
    assert load(d).forward({"features": np.zeros((1, 30))})["proba"].shape == (1, 30)


PY_MODEL = textwrap.dedent('''
    import numpy as np

    class Model:
        def load(self, version_dir):
            self.bias = float((version_dir / "bias.txt").read_text())

        def predict(self, batch):
            return {"y": batch["x"].sum(axis=1, keepdims=True) + self.bias, "extra": 1}
''')

PROCESSING = textwrap.dedent('''
    def scale(batch):
        return {"x": batch["x"] * 10}

    def clip(outputs):
        return {"y": outputs["y"].clip(max=100)}
''')


def python_model(root: Path, **extra: object) -> Path:
    d = root / "py"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.py").write_text(PY_MODEL)
    (d / "1" / "bias.txt").write_text("0.5")
    (d / "process.py").write_text(PROCESSING)
    write_yaml(d / "model.yaml", {
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        **extra,
    })
    return d


def test_python_runtime_with_pre_and_post_processing(tmp_path: Path) -> None:
    mv = load(python_model(tmp_path, preprocess="process:scale", postprocess="process:clip"))
    out = mv.forward({"x": np.array([[1, 2, 3], [10, 10, 10]], np.float32)})
    assert out["y"].tolist() == [[60.5], [100.0]]
    assert out["y"].dtype == np.float32  # float64 from the model, cast to the declared FP32


def test_missing_output_is_a_named_model_error(tmp_path: Path) -> None:
    d = python_model(tmp_path)
    cfg = yaml.safe_load((d / "model.yaml").read_text())
    cfg["outputs"].append({"name": "score", "datatype": "FP32", "shape": [-1]})
    write_yaml(d / "model.yaml", cfg)
    with pytest.raises(ModelError, match="returned no output 'score'"):
        load(d).forward({"x": np.ones((1, 3), np.float32)})


SHORT_MODEL = textwrap.dedent('''
    class Model:
        def load(self, version_dir):
            pass

        def predict(self, batch):
            return {"y": batch["x"][:-1, :1]}  # one row short
''')


def test_a_wrong_row_count_is_checked_once_in_forward_and_fails_every_request_of_the_batch(tmp_path: Path) -> None:
    d = python_model(tmp_path, batching={"max_batch_size": 4, "max_queue_delay_ms": 50})
    (d / "1" / "model.py").write_text(SHORT_MODEL)
    mv = load(d)
    with pytest.raises(BatchSizeMismatch) as info:
        mv.forward({"x": np.ones((3, 3), np.float32)})
    assert (info.value.expected, info.value.got) == (3, 2)
    assert "model output 'y' has 2 rows for a batch of 3 rows" in info.value.message
    with pytest.raises(BatchSizeMismatch):  # the whole-batch lanes' entry point is the same forward
        mv.score({"x": np.ones((10, 3), np.float32)}, chunk_rows=4)

    async def three_requests() -> list[object]:
        mv.start_batcher()
        assert mv.batcher is not None
        deadline = mv.batcher._clock.now() + 5
        try:
            return await asyncio.gather(*(mv.infer({"x": np.full((1, 3), i, np.float32)}, deadline)
                                          for i in range(3)), return_exceptions=True)
        finally:
            await mv.batcher.close()

    results = asyncio.run(three_requests())
    assert all(isinstance(r, BatchSizeMismatch) for r in results), results


def test_score_checks_the_signature_and_runs_in_chunks(tmp_path: Path) -> None:
    mv = load(python_model(tmp_path))
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    np.testing.assert_array_equal(mv.score({"x": x}, chunk_rows=3)["y"], mv.forward({"x": x})["y"])
    with pytest.raises(InvalidInput, match=r"datatype must be FP32, got FP64$"):
        mv.score({"x": x.astype(np.float64)}, chunk_rows=3)
    with pytest.raises(InvalidInput, match=re.escape("shape [10, 2] does not match [-1, 3]")):
        mv.score({"x": x[:, :2]}, chunk_rows=3)


def test_request_checks_name_dtype_shape_and_limits(model_repo: Path) -> None:
    mv = load(model_repo / "fraud")
    ok = np.zeros((2, 30), np.float32)
    assert mv.check_inputs({"features": ok})[:2] == (2, 60)
    with pytest.raises(InvalidInput, match=re.escape("missing ['features']; unexpected ['feature']")):
        mv.check_inputs({"feature": ok})
    with pytest.raises(InvalidInput, match=r"datatype must be FP32, got FP64$"):
        mv.check_inputs({"features": ok.astype(np.float64)})
    with pytest.raises(InvalidInput, match=r"datatype must be FP32, got numpy complex64$"):
        mv.check_inputs({"features": ok.astype(np.complex64)})
    with pytest.raises(InvalidInput, match=r"shape \[2, 29\] does not match \[-1, 30\]"):
        mv.check_inputs({"features": ok[:, :29]})
    with pytest.raises(InvalidInput, match="at most 64 per request"):
        mv.check_inputs({"features": np.zeros((65, 30), np.float32)})
    with pytest.raises(InvalidInput, match="at least one row"):
        mv.check_inputs({"features": np.zeros((0, 30), np.float32)})


def test_element_limit_is_413(tmp_path: Path) -> None:
    mv = load(python_model(tmp_path, limits={"max_elements_per_input": 6}))
    with pytest.raises(PayloadTooLarge, match="9 elements; the limit is 6"):
        mv.check_inputs({"x": np.zeros((3, 3), np.float32)})


@pytest.mark.parametrize(("change", "message"), [
    ({"inputs": [{"name": "x", "datatype": "FP23", "shape": [-1, 3]}]},
     "inputs.0.datatype: unknown datatype 'FP23'; did you mean FP32?"),
    ({"inputs": [{"name": "x", "datatype": "float64", "shape": [-1, 3]}]},
     "inputs.0.datatype: unknown datatype 'float64'; did you mean FP64?"),
    ({"inputs": [{"name": "x", "datatype": "QQ", "shape": [-1, 3]}]},
     "inputs.0.datatype: unknown datatype 'QQ'; use one of BOOL, UINT8"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 3]}]},
     "inputs.0.shape: the first dimension is the batch"),
    ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size: Input should be greater than or equal to 1"),
    ({"batching": {"max_batchsize": 8}}, "unknown field batching.max_batchsize: did you mean max_batch_size?"),
    ({"inputs": [{"nme": "x", "datatype": "FP32", "shape": [-1, 3]}]},
     "unknown field inputs.0.nme: did you mean name?"),
    ({"python": {"klass": "Model"}}, "unknown field python.klass: did you mean class?"),
    ({"max_batch_size": 8}, "unknown field max_batch_size: it belongs under batching:"),
    ({"colour": "red"}, "unknown field colour: known fields are name, runtime, artifact"),
    ({"runtime": "tensorflow"},
     "runtime: Input should be 'onnx', 'sklearn', 'python', 'torch', 'xgboost' or 'lightgbm'"),
    ({"preprocess": "os.system"}, "preprocess: String should match pattern"),
])
def test_config_errors_name_the_field(tmp_path: Path, change: dict[str, object], message: str) -> None:
    d = python_model(tmp_path)
    cfg = yaml.safe_load((d / "model.yaml").read_text())
    write_yaml(d / "model.yaml", {**cfg, **change})
    with pytest.raises(ConfigError) as info:
        scan_model(d)
    assert message in info.value.message
    assert str(d / "model.yaml") in info.value.message
    assert info.value.message.count("\n") == 1, info.value.message  # the file, then one problem


def test_a_bad_tensor_is_one_line_not_pydantic_noise(tmp_path: Path) -> None:
    # pydantic also reports the enclosing list as "too short" when its only item fails.
    d = python_model(tmp_path)
    cfg = yaml.safe_load((d / "model.yaml").read_text())
    write_yaml(d / "model.yaml", {**cfg, "inputs": [{"name": "x", "datatype": "FP23", "shape": [-1, 3]}]})
    with pytest.raises(ConfigError) as info:
        scan_model(d)
    assert info.value.message.splitlines()[1:] == [
        "  inputs.0.datatype: unknown datatype 'FP23'; did you mean FP32?"]
    write_yaml(d / "model.yaml", {**cfg, "outputs": []})
    with pytest.raises(ConfigError, match=re.escape("outputs: must not be empty")):
        scan_model(d)


def test_onnx_signature_mismatch_names_the_field(tmp_path: Path, model_repo: Path) -> None:
    import shutil

    d = tmp_path / "fraud"
    shutil.copytree(model_repo / "fraud", d)
    cfg = yaml.safe_load((d / "model.yaml").read_text())
    cfg["outputs"][1]["datatype"] = "FP64"
    write_yaml(d / "model.yaml", cfg)
    msg = "outputs.probabilities.datatype: config says FP64, the ONNX graph says FP32"
    with pytest.raises(ConfigError, match=re.escape(msg)):
        load(d)


def test_repository_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model repository not found"):
        scan_repository(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no models"):
        scan_repository(tmp_path)
    d = python_model(tmp_path)
    (d / "1").rename(d / "v1")
    with pytest.raises(ConfigError, match="no version folders"):
        scan_repository(tmp_path)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    d = python_model(tmp_path)
    (d / "model.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        scan_model(d)
    (d / "model.yaml").write_text("runtime: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        scan_model(d)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferlane", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.e2e
def test_models_validate_cli(model_repo: Path, tmp_path: Path) -> None:
    ok = run_cli("models", "validate", str(model_repo))
    assert ok.returncode == 0, ok.stderr
    assert "ok   fraud version 1: runtime onnx" in ok.stdout
    assert "ok   slow version 1: runtime python" in ok.stdout

    d = python_model(tmp_path)
    (d / "1" / "model.py").write_text("class Model:\n    def predict(self, batch):\n        return {}\n")
    bad = run_cli("models", "validate", str(tmp_path))
    assert bad.returncode == 1
    assert "FAIL py version 1" in bad.stderr
    assert "returned no output 'y'" in bad.stderr

    (d / "model.yaml").write_text("runtime: onnx\ninputs: []\n")
    usage = run_cli("models", "validate", str(tmp_path))
    assert usage.returncode == 2
    assert "inputs: must not be empty" in usage.stderr
    assert "outputs: Field required" in usage.stderr


@pytest.mark.parametrize("artifact", ["../../etc/passwd", "/etc/passwd", "sub/../../model.py", ""])
def test_artifact_path_outside_the_version_folder_is_refused(tmp_path: Path, artifact: str) -> None:
    d = python_model(tmp_path, artifact=artifact)
    with pytest.raises(ConfigError, match=re.escape(
            f"artifact: {artifact!r} must be a file name relative to the version folder")):
        scan_model(d)


def test_artifact_symlink_leading_out_of_the_version_folder_is_refused(tmp_path: Path) -> None:
    d = python_model(tmp_path, artifact="link.py")
    outside = tmp_path / "elsewhere.py"
    outside.write_text(PY_MODEL)
    (d / "1" / "link.py").symlink_to(outside)
    with pytest.raises(ConfigError, match="'artifact' must name a file inside the version folder"):
        load(d)
    (d / "1" / "link.py").unlink()
    (d / "1" / "link.py").symlink_to(d / "1" / "model.py")  # a link that stays inside is fine
    assert load(d).forward({"x": np.ones((1, 3), np.float32)})["y"].shape == (1, 1)
