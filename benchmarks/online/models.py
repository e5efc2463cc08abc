"""The models and the requests: a model repository holding each MLP with batching on and off, on
default settings, and the one-row V2 JSON bodies the load sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from benchmarks.online.config import BATCHING_OFF, BATCHING_ON, DISTINCT_ROWS, MODELS, N_FEATURES, inferlane


def model_yaml(batching: dict[str, Any]) -> dict[str, Any]:
    """The signature and the batching block, nothing else: every other setting (ONNX Runtime
    threads, queue size, warm-up, limits) is inferlane's default, which is what is measured."""
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
            "batching": batching}


def write_repository(repo: Path) -> dict[str, Path]:
    """Every model as ``<model>`` (batching on) and ``<model>-nobatch`` (batching off); returns
    each model's ONNX file (the naive endpoint and the raw probe load the same one)."""
    from inferlane.demo.models import mlp_onnx_bytes

    files = {}
    for model, hidden in MODELS.items():
        onnx = mlp_onnx_bytes(hidden)
        for batching in (True, False):
            folder = repo / inferlane(model, batching).served_name
            (folder / "1").mkdir(parents=True)
            (folder / "1" / "model.onnx").write_bytes(onnx)
            doc = model_yaml(BATCHING_ON if batching else BATCHING_OFF)
            (folder / "model.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        files[model] = repo / model / "1" / "model.onnx"
    return files


def request_bodies(n: int = DISTINCT_ROWS) -> list[bytes]:
    """``n`` distinct Open Inference Protocol V2 requests, one row of 30 FP32 features each."""
    from inferlane.demo.models import synthetic_transactions

    x, _ = synthetic_transactions(n, seed=11)
    return [orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, N_FEATURES], "data": row}]})
            for row in x.tolist()]
