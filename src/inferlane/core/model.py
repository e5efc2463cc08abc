"""One loaded model version: runtime + pre/post-processing + signature checks + batcher.

Every lane calls :meth:`ModelVersion.forward` (through the batcher or directly, for whole
batches), so the same input gives the same output in every lane.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from inferlane.core.batcher import ONLINE, BatchObserver, DynamicBatcher, Prediction
from inferlane.core.clock import Clock, MonotonicClock
from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import ConfigError, InvalidInput, ModelError, PayloadTooLarge
from inferlane.core.plugins import load_function
from inferlane.core.runtimes import Runtime, load_runtime
from inferlane.core.spec import ModelConfig, TensorSpec

log = logging.getLogger(__name__)

Processor = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _shape_ok(shape: tuple[int, ...], spec: tuple[int, ...]) -> bool:
    return len(shape) == len(spec) and all(s == -1 or s == d for s, d in zip(spec, shape, strict=True))


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class ModelVersion:
    """A model version ready to serve.

        mv = ModelVersion.load(config, Path("models/fraud"), "1")
        mv.warmup()
        outputs = mv.forward({"features": x})            # a whole batch, synchronously
        pred = await mv.infer({"features": x}, deadline)   # one request through the batcher
    """

    def __init__(self, config: ModelConfig, model_dir: Path, version: str, runtime: Runtime,
                 preprocess: Processor | None = None, postprocess: Processor | None = None) -> None:
        self.config = config
        self.name = config.name
        self.version = version
        self.model_dir = model_dir
        self.runtime = runtime
        self._pre = preprocess
        self._post = postprocess
        self._in_dtypes = {s.name: to_numpy(s.datatype) for s in config.inputs}
        self._budget = config.batch_elements_budget
        self.batcher: DynamicBatcher | None = None
        self.ready = False

    @classmethod
    def load(cls, config: ModelConfig, model_dir: Path, version: str) -> ModelVersion:
        version_dir = model_dir / version
        pre = load_function(model_dir, config.preprocess, "preprocess", config.name) if config.preprocess else None
        post = load_function(model_dir, config.postprocess, "postprocess", config.name) if config.postprocess else None
        runtime = load_runtime(config, version_dir)
        return cls(config, model_dir, version, runtime, pre, post)

    def start_batcher(self, *, clock: Clock | None = None, observer: BatchObserver | None = None) -> DynamicBatcher:
        self.batcher = DynamicBatcher(
            self.forward, self.config.batching, elements_budget=self._budget,
            clock=clock or MonotonicClock(), observer=observer, name=f"{self.name}:{self.version}")
        return self.batcher

    # -- validation -------------------------------------------------------------------------------

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, int, Hashable]:
        """Check a request against the signature and limits. Returns (rows, elements, batch key).

        Raises InvalidInput (400) naming the tensor at fault, or PayloadTooLarge (413).
        """
        specs = self.config.inputs
        if len(inputs) != len(specs) or any(s.name not in inputs for s in specs):
            expected = [s.name for s in specs]
            extra = sorted(set(inputs) - set(expected))
            missing = [n for n in expected if n not in inputs]
            raise InvalidInput(f"model {self.name} expects inputs {expected}"
                               + (f"; missing {missing}" if missing else "")
                               + (f"; unexpected {extra}" if extra else ""))
        rows = -1
        elements = 0
        key: list[tuple[int, ...]] = []
        limit = self.config.limits.max_elements_per_input
        for spec in specs:
            arr = inputs[spec.name]
            if arr.dtype != self._in_dtypes[spec.name]:
                raise InvalidInput(f"input {spec.name!r}: datatype must be {spec.datatype}")
            if not _shape_ok(arr.shape, spec.shape):
                raise InvalidInput(f"input {spec.name!r}: shape {_fmt(arr.shape)} does not match "
                                   f"{_fmt(spec.shape)}")
            if arr.size > limit:
                raise PayloadTooLarge(f"input {spec.name!r}: {arr.size} elements; the limit is {limit}")
            if rows == -1:
                rows = arr.shape[0]
            elif arr.shape[0] != rows:
                raise InvalidInput(f"input {spec.name!r}: {arr.shape[0]} rows, other inputs have {rows}")
            elements += arr.size
            key.append(arr.shape[1:])
        if rows == 0:
            raise InvalidInput("a request must have at least one row")
        max_rows = self.config.batching.max_batch_size
        if rows > max_rows:
            raise InvalidInput(f"request has {rows} rows; model {self.name} takes at most "
                               f"{max_rows} per request (batching.max_batch_size)")
        if elements > self._budget:
            raise PayloadTooLarge(f"request has {elements} elements; the batch budget is "
                                  f"{self._budget} (batching.max_batch_elements)")
        return rows, elements, tuple(key)

    def _check_outputs(self, outputs: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
        result: dict[str, np.ndarray] = {}
        for spec in self.config.outputs:
            if spec.name not in outputs:
                raise ModelError(f"model {self.name} returned no output {spec.name!r} "
                                 f"(it returned {sorted(outputs)})")
            arr = np.asarray(outputs[spec.name])
            want = to_numpy(spec.datatype)
            if arr.dtype != want:
                if spec.datatype == "BYTES" or not np.can_cast(arr.dtype, want, "same_kind"):
                    raise ModelError(f"model {self.name} output {spec.name!r} is {arr.dtype}, "
                                     f"declared {spec.datatype}")
                arr = arr.astype(want)
            if arr.ndim and arr.shape[0] == rows and not _shape_ok(arr.shape, spec.shape):
                raise ModelError(f"model {self.name} output {spec.name!r} has shape {_fmt(arr.shape)}, "
                                 f"declared {_fmt(spec.shape)}")
            result[spec.name] = arr
        return result

    # -- running ----------------------------------------------------------------------------------

    def forward(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pre-process, run the runtime and post-process one batch; check the outputs' signature.

        Row-count mismatches are left to the caller (the batcher fails the batch with
        BatchSizeMismatch naming both numbers).
        """
        rows = next(iter(batch.values())).shape[0]
        x = self._pre(batch) if self._pre is not None else batch
        y = self.runtime.predict(x)
        if self._post is not None:
            y = self._post(y)
        return self._check_outputs(y, rows)

    async def infer(self, inputs: Mapping[str, np.ndarray], deadline: float, priority: int = ONLINE) -> Prediction:
        """Validate one request and run it through the batcher (``BACKGROUND`` for jobs)."""
        rows, elements, key = self.check_inputs(inputs)
        assert self.batcher is not None, "start_batcher() before infer()"
        return await self.batcher.submit(inputs, rows=rows, elements=elements, deadline=deadline, key=key,
                                         priority=priority)

    def warmup_batches(self) -> list[dict[str, np.ndarray]]:
        """Warm-up inputs: the declared ones, else generated from the signature."""
        w = self.config.warmup
        if w.inputs:
            out = []
            for i, req in enumerate(w.inputs):
                try:
                    batch = {s.name: np.asarray(req[s.name], dtype=to_numpy(s.datatype))
                             for s in self.config.inputs}
                except (KeyError, ValueError, TypeError) as e:
                    raise ConfigError(f"{self.model_dir}/model.yaml: warmup.inputs.{i}: {e!r}") from e
                out.append(batch)
            return out
        rng = np.random.default_rng(0)
        return [{s.name: _generate(s, n, rng) for s in self.config.inputs} for n in w.batch_sizes]

    def warmup(self) -> float:
        """Run every warm-up batch once; returns the slowest forward time (seconds)."""
        slowest = 0.0
        for i, batch in enumerate(self.warmup_batches()):
            try:
                self.check_inputs(batch)
            except (InvalidInput, PayloadTooLarge) as e:
                raise ConfigError(f"{self.model_dir}/model.yaml: warmup input {i}: {e.message}") from e
            rows = next(iter(batch.values())).shape[0]
            t0 = time.perf_counter()
            try:
                out = self.forward(batch)
            except Exception as e:
                raise ConfigError(f"{self.model_dir}/{self.version}: warm-up batch {i} failed: "
                                  f"{type(e).__name__}: {e}") from e
            slowest = max(slowest, time.perf_counter() - t0)
            for name, arr in out.items():
                if (arr.shape[0] if arr.ndim else 1) != rows:
                    raise ConfigError(f"{self.model_dir}/{self.version}: warm-up: output {name!r} "
                                      f"has {arr.shape[0] if arr.ndim else 1} rows for {rows} input rows")
        if self.batcher is not None:
            self.batcher.seed_forward_estimate(slowest)
        return slowest

    def close(self) -> None:
        self.ready = False
        self.runtime.close()


def _generate(spec: TensorSpec, rows: int, rng: np.random.Generator) -> np.ndarray:
    shape = (rows, *(1 if d == -1 else d for d in spec.row_shape))
    dt = to_numpy(spec.datatype)
    if spec.datatype == "BYTES":
        return np.full(shape, b"warmup", dtype=object)
    if spec.datatype == "BOOL":
        return np.zeros(shape, dtype=dt)
    if dt.kind == "f":
        return rng.standard_normal(math.prod(shape)).reshape(shape).astype(dt)
    return np.zeros(shape, dtype=dt)
