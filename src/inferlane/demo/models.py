"""Model repositories for the demo, tests and benchmarks (needs ``inferlane[sklearn]``).

    write_fraud_model(Path("models"))                       # sklearn MLP -> ONNX, 30 features
    write_request(Path("request.json"))                     # a V2 request for it
    write_mlp_model(Path("models"), "heavy", (1024, 1024, 1024))   # random-weight ONNX MLP
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

N_FEATURES = 30
SEED = 7


def synthetic_transactions(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Card transactions shaped like the classic fraud data set: time, 28 latent components
    and the amount; about 2% are fraud, which shifts a few components and the amount."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.02).astype(np.int64)
    t = rng.uniform(0, 172_800, n)
    v = rng.standard_normal((n, 28))
    v[y == 1, :6] += rng.normal(2.0, 0.8, (int(y.sum()), 6))
    v[y == 1, 10:14] -= rng.normal(1.5, 0.5, (int(y.sum()), 4))
    amount = rng.lognormal(3.5, 1.2, n) * np.where(y == 1, 2.5, 1.0)
    x = np.column_stack([t / 86_400.0, v, np.log1p(amount)]).astype(np.float32)
    return x, y


def _model_yaml(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def write_fraud_model(repo: Path, name: str = "fraud", version: str = "1", *,
                      batching: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                      rows: int = 20_000) -> Path:
    """Train a scaler + MLP classifier (fixed seed), convert to ONNX, write the model folder."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = synthetic_transactions(rows)
    clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=60,
                                                        early_stopping=True, random_state=SEED))
    clf.fit(x, y)
    onx = to_onnx(clf, initial_types=[("features", FloatTensorType([None, N_FEATURES]))],
                  options={id(clf.steps[-1][1]): {"zipmap": False}}, target_opset=17)
    model_dir = repo / name
    (model_dir / version).mkdir(parents=True, exist_ok=True)
    (model_dir / version / "model.onnx").write_bytes(onx.SerializeToString())
    _model_yaml(model_dir / "model.yaml", {
        "runtime": "onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
        "batching": {"max_batch_size": 64, "max_queue_delay_ms": 2, "max_queue_size": 256,
                     **(batching or {})},
        "limits": {"max_request_bytes": 1_048_576, **(limits or {})},
        "onnx": {"intra_op_num_threads": 1},
        "warmup": {"batch_sizes": [1, 64]},
    })
    return model_dir


def write_request(path: Path, rows: int = 1) -> Path:
    """An Open Inference Protocol V2 request for the fraud model (``rows`` synthetic transactions),
    as JSON, for ``curl --data-binary @request.json`` against ``/v2/models/fraud/infer``."""
    x, _ = synthetic_transactions(rows, seed=SEED + 1)
    doc = {"id": "tx-1", "inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, N_FEATURES],
                                     "data": [[round(float(v), 4) for v in row] for row in x]}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    return path


def mlp_onnx_bytes(hidden: tuple[int, ...], n_in: int = N_FEATURES, n_out: int = 2, seed: int = 0) -> bytes:
    """A ReLU MLP with random weights and a softmax, as an ONNX model (input 'x', output 'y')."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = (n_in, *hidden, n_out)
    nodes, inits = [], []
    prev = "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = np.zeros(b, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        prev = out
    nodes.append(helper.make_node("Softmax", [prev], ["y"], axis=1))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write_mlp_model(repo: Path, name: str, hidden: tuple[int, ...], *, version: str = "1",
                    batching: dict[str, Any] | None = None, threads: int = 1) -> Path:
    model_dir = repo / name
    (model_dir / version).mkdir(parents=True, exist_ok=True)
    (model_dir / version / "model.onnx").write_bytes(mlp_onnx_bytes(hidden))
    _model_yaml(model_dir / "model.yaml", {
        "runtime": "onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "batching": {"max_batch_size": 64, "max_queue_delay_ms": 2, "max_queue_size": 4096,
                     **(batching or {})},
        "onnx": {"intra_op_num_threads": threads},
        "warmup": {"batch_sizes": [1, 64]},
    })
    return model_dir
