"""Small models built inside the tests: a torch MLP saved four ways, XGBoost and LightGBM boosters
trained on a few hundred random rows, each written as ``<repo>/<name>/{model.yaml, 1/<artifact>}``."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model

FEATURES = 6

NET_SOURCE = textwrap.dedent('''
    import torch


    class Net(torch.nn.Module):
        """x (FP32 [-1, 6]) -> class probabilities (FP32 [-1, 2])."""

        def __init__(self, features: int = 6, hidden: int = 16) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(features, hidden)
            self.out = torch.nn.Linear(hidden, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.out(torch.relu(self.hidden(x))), dim=-1)


    class Padded(Net):
        """Net with a table built at construction (not in the weights file): 1000 float32 = 4000 bytes."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.zeros(1000), persistent=False)


    class Greedy(Net):
        """Net that runs out of memory on batches of more than 8 rows."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 8:
                raise MemoryError("pretend the device is full")
            return super().forward(x)
''')

TORCH_SIGNATURE: dict[str, Any] = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
}


def write_model(repo: Path, name: str, config: dict[str, Any]) -> Path:
    """``<repo>/<name>/model.yaml``; returns the version folder ``<repo>/<name>/1``."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / "model.yaml").write_text(yaml.safe_dump(config))
    return version


def load(repo: Path, name: str) -> ModelVersion:
    entry = scan_model(repo / name)
    return ModelVersion.load(entry.config, entry.path, "1")


def rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)


def net(seed: int = 0) -> Any:
    """A fresh ``Net`` (from NET_SOURCE, the same class the module kind imports) with seeded weights."""
    import torch

    namespace: dict[str, Any] = {}
    exec(compile(NET_SOURCE, "net.py", "exec"), namespace)
    torch.manual_seed(seed)
    return namespace["Net"]().eval()


def write_torch(repo: Path, name: str, kind: str, **extra: Any) -> Path:
    """A torch model of ``kind`` (torchscript, export, module); returns its version folder."""
    import torch

    model = net()
    config: dict[str, Any] = {"runtime": "torch", **TORCH_SIGNATURE, "torch": {"kind": kind}, **extra}
    if kind == "export":
        config["trusted"] = extra.get("trusted", True)
    if kind == "module":
        config["torch"]["module"] = config["torch"].get("module", "net:Net")
    version = write_model(repo, name, config)
    (repo / name / "net.py").write_text(NET_SOURCE)
    if kind == "torchscript":
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; its files still load
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, torch.from_numpy(rows(3)))  # type: ignore[no-untyped-call]
            torch.jit.save(traced, str(version / "model.pt"))
    elif kind == "export":
        program = torch.export.export(model, (torch.from_numpy(rows(3)),),
                                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.export.save(program, str(version / "model.pt2"))
    else:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(version / "model.safetensors"))
    return version


def training_rows(n: int = 400, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x = rows(n, seed=7)
    score = x[:, 0] + 0.5 * x[:, 1] - x[:, 2]
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return x, y


def write_xgboost(repo: Path, name: str, classes: int = 2, artifact: str = "model.ubj", **extra: Any) -> Path:
    import xgboost as xgb

    x, y = training_rows(classes=classes)
    params: dict[str, Any] = ({"objective": "binary:logistic"} if classes == 2
                              else {"objective": "multi:softprob", "num_class": classes})
    booster = xgb.train({**params, "max_depth": 3, "nthread": 1}, xgb.DMatrix(x, label=y), num_boost_round=20)
    version = write_model(repo, name, {"runtime": "xgboost", "artifact": artifact, **_tree_signature(classes), **extra})
    booster.save_model(str(version / artifact))
    return version


def write_lightgbm(repo: Path, name: str, classes: int = 2, **extra: Any) -> Path:
    import lightgbm as lgb

    x, y = training_rows(classes=classes)
    params: dict[str, Any] = ({"objective": "binary"} if classes == 2
                              else {"objective": "multiclass", "num_class": classes})
    booster = lgb.train({**params, "num_leaves": 7, "verbose": -1, "num_threads": 1},
                        lgb.Dataset(x, label=y), num_boost_round=20)
    version = write_model(repo, name, {"runtime": "lightgbm", **_tree_signature(classes), **extra})
    booster.save_model(str(version / "model.txt"))
    return version


def _tree_signature(classes: int) -> dict[str, Any]:
    return {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "margin", "datatype": "FP32", "shape": [-1] if classes == 2 else [-1, classes]}],
        "trees": {"outputs": {"probabilities": "probabilities", "label": "label", "margin": "margin"}},
    }
