"""ONNX Runtime: the default runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from inferlane.core.cpus import ThreadPlan
from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import ConfigError
from inferlane.core.runtimes.base import Batch
from inferlane.core.runtimes.devices import onnx_device, onnx_providers, report
from inferlane.core.spec import ModelConfig, OnnxOptions

_ORT_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class OnnxRuntime:
    def __init__(self, config: ModelConfig, version_dir: Path, plan: ThreadPlan) -> None:
        import onnxruntime as ort

        opts = config.onnx or OnnxOptions()
        so = ort.SessionOptions()
        so.intra_op_num_threads = plan.threads
        so.inter_op_num_threads = opts.inter_op_num_threads or 1  # sequential execution: no inter-op pool
        if not plan.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[opts.graph_optimization_level])
        available = set(ort.get_available_providers())
        providers: list[Any] = [p for p in opts.providers if p in available] or ["CPUExecutionProvider"]
        path = version_dir / config.artifact_name
        device = onnx_device(config, path, available)
        # ONNX Runtime reports no per-session memory: the artifact's size is the figure reserved.
        self._held = report(config, path, device, path.stat().st_size,
                            "artifact size; ONNX Runtime reports no session memory")
        with self._held.while_loading():
            try:
                self._session = ort.InferenceSession(str(path), sess_options=so,
                                                     providers=onnx_providers(device, providers))
            except Exception as e:  # ORT raises its own exception classes for unreadable models
                raise ConfigError(f"{path}: ONNX Runtime cannot load the model: {e}") from e
            self._check_signature(config, path)
        self._inputs = [(s.name, to_numpy(s.datatype)) for s in config.inputs]
        self._outputs = [s.name for s in config.outputs]

    def _check_signature(self, config: ModelConfig, path: Path) -> None:
        graph_in = {i.name: i for i in self._session.get_inputs()}
        graph_out = {o.name: o for o in self._session.get_outputs()}
        for group, specs, graph in (("inputs", config.inputs, graph_in),
                                    ("outputs", config.outputs, graph_out)):
            for spec in specs:
                node = graph.get(spec.name)
                if node is None:
                    raise ConfigError(
                        f"{path}: {group}.{spec.name}: the ONNX graph has no {group[:-1]} of that "
                        f"name (it has {sorted(graph)})")
                dt = _ORT_TYPES.get(node.type)
                if dt != spec.datatype:
                    raise ConfigError(
                        f"{path}: {group}.{spec.name}.datatype: config says {spec.datatype}, "
                        f"the ONNX graph says {dt or node.type}")
                if len(node.shape) != len(spec.shape):
                    raise ConfigError(
                        f"{path}: {group}.{spec.name}.shape: config has {len(spec.shape)} "
                        f"dimensions, the ONNX graph {len(node.shape)} ({node.shape})")
        missing = set(graph_in) - {s.name for s in config.inputs}
        if missing:
            raise ConfigError(f"{path}: inputs: the ONNX graph also needs {sorted(missing)}")

    def predict(self, batch: Batch) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(batch[name], dtype=dt) for name, dt in self._inputs}
        results = self._session.run(self._outputs, feed)
        return dict(zip(self._outputs, results, strict=True))

    def close(self) -> None:
        self._held.release()
        del self._session
