"""``device:`` and the memory budget: how a setting resolves, and ONNX Runtime's provider choice.

This machine has no GPU: the CUDA paths are checked up to the point where they would need one
(a clear refusal), and benchmarks/gpu.py exercises them where a GPU is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from inferlane.core.errors import ConfigError
from inferlane.core.runtimes.devices import device_index, resolve_device
from inferlane.core.spec import ModelConfig
from inferlane.demo.models import write_fraud_model
from tests.runtimes.builders import load


@pytest.mark.parametrize(("setting", "cuda", "device"), [
    ("cpu", True, "cpu"), ("auto", True, "cuda:0"), ("auto", False, "cpu"),
    ("cuda", False, "cuda:0"), ("cuda:3", False, "cuda:3"),
])
def test_resolve_device(setting: str, cuda: bool, device: str) -> None:
    assert resolve_device(setting, lambda: cuda) == device


def test_device_index() -> None:
    assert (device_index("cuda:0"), device_index("cuda:12"), device_index("cuda")) == (0, 12, 0)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "CPU", "mps"])
def test_device_setting_is_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="device"):
        ModelConfig.model_validate({"device": bad, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]})


@pytest.mark.parametrize("runtime", ["sklearn", "python"])
def test_runtimes_without_devices_refuse_the_device_fields(runtime: str) -> None:
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                 "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}
    for fields in ({"device": "auto"}, {"device_memory_budget_bytes": 1000}):
        with pytest.raises(ValueError, match=rf"apply to runtimes onnx, torch, xgboost and lightgbm; runtime "
                                             rf"{runtime} runs on the CPU"):
            ModelConfig.model_validate({"runtime": runtime, **signature, **fields})


@pytest.fixture(scope="module")
def onnx_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx")
    write_fraud_model(root, rows=600)
    return root


def set_fields(model_dir: Path, **fields: object) -> None:
    path = model_dir / "model.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **fields}))


def test_onnx_device_auto_runs_on_cpu_and_cuda_is_refused_without_the_provider(onnx_repo: Path) -> None:
    import onnxruntime as ort

    assert "CUDAExecutionProvider" not in ort.get_available_providers()  # this test describes a CPU machine
    set_fields(onnx_repo / "fraud", device="auto")
    x = np.zeros((2, 30), dtype=np.float32)
    mv = load(onnx_repo, "fraud")
    assert mv.forward({"features": x})["probabilities"].shape == (2, 2)
    assert mv.runtime._session.get_providers() == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    set_fields(onnx_repo / "fraud", device="cuda:0")
    with pytest.raises(ConfigError, match=r"device cuda:0: this ONNX Runtime has no CUDAExecutionProvider"):
        load(onnx_repo, "fraud")


def test_onnx_budget_uses_the_artifact_size(onnx_repo: Path) -> None:
    size = (onnx_repo / "fraud" / "1" / "model.onnx").stat().st_size
    set_fields(onnx_repo / "fraud", device="cpu", device_memory_budget_bytes=size - 1)
    with pytest.raises(ConfigError, match=rf"\({size} bytes\) on cpu \(artifact size"):
        load(onnx_repo, "fraud")
    set_fields(onnx_repo / "fraud", device_memory_budget_bytes=size)
    load(onnx_repo, "fraud").close()
