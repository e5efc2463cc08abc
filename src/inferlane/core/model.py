"""One loaded model version: runtime + pre/post-processing + signature checks + batcher.

Every lane calls :meth:`ModelVersion.forward` (through the batcher or directly, for whole
batches), so the same input gives the same output in every lane.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from inferlane.core.batcher import (
    INLINE_BELOW_ONE_CPU_S,
    INLINE_BELOW_S,
    ONLINE,
    BatchObserver,
    DynamicBatcher,
    Prediction,
)
from inferlane.core.clock import Clock, MonotonicClock
from inferlane.core.cpus import Role, ThreadPlan, thread_plan
from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import BatchSizeMismatch, ConfigError, InvalidInput, ModelError, PayloadTooLarge
from inferlane.core.inputs.signature import Signature, fmt_shape, shape_ok
from inferlane.core.plugins import load_function
from inferlane.core.repository import locate_version
from inferlane.core.runtimes import Runtime, load_runtime
from inferlane.core.spec import ModelConfig, OnnxOptions, TensorSpec
from inferlane.core.text.stage import BucketObserver, TextStage, runtime_config

log = logging.getLogger(__name__)

Processor = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class ModelVersion:
    """A model version ready to serve.

        mv = ModelVersion.load(config, Path("models/fraud"), "1")
        mv.warmup()
        outputs = mv.forward({"features": x})            # a whole batch, synchronously
        pred = await mv.infer({"features": x}, deadline)   # one request through the batcher
    """

    def __init__(self, config: ModelConfig, model_dir: Path, version: str, runtime: Runtime,
                 preprocess: Processor | None = None, postprocess: Processor | None = None,
                 text: TextStage | None = None) -> None:
        self.config = config
        self.name = config.name
        self.version = version
        self.model_dir = model_dir
        self.runtime = runtime
        self._pre = preprocess
        self._post = postprocess
        self.text = text
        """The tokenizer stage of a text model (core/text/stage.py), else None."""
        self.signature = Signature(config)
        self._budget = config.batch_elements_budget
        self.batcher: DynamicBatcher | None = None
        self.ready = False
        self.threads: ThreadPlan | None = None
        """How the model's threads were chosen (set by :meth:`load`)."""

    @classmethod
    def load(cls, config: ModelConfig, model_dir: Path, version: str, *, role: Role = "serving",
             threads: int = 0) -> ModelVersion:
        """Load a version; its model threads come from the CPUs this process may use (core/cpus.py)
        for ``role``, unless ``threads`` or model.yaml's ``onnx:`` settings say otherwise."""
        version_dir = model_dir / version
        pre = load_function(model_dir, config.preprocess, "preprocess", config.name) if config.preprocess else None
        post = load_function(model_dir, config.postprocess, "postprocess", config.name) if config.postprocess else None
        onnx = config.onnx or OnnxOptions()
        plan = thread_plan(role, threads=threads or onnx.intra_op_num_threads, spinning=onnx.allow_spinning)
        log.info("model %s version %s: %s", config.name, version, plan.reason)
        text = TextStage.load(config, version_dir) if config.tokenizer is not None else None
        runtime = load_runtime(runtime_config(config), version_dir, plan)
        mv = cls(config, model_dir, version, runtime, pre, post, text)
        mv.threads = plan
        return mv

    @classmethod
    def open(cls, folder: str | Path, version: str | None = None, threads: int = 0) -> ModelVersion:
        """A version from its model folder, for lanes that run whole batches themselves (no
        batcher): ``threads`` model threads (0: every CPU the process may use), no spinning.
        ConfigError names an unknown version."""
        entry, version = locate_version(folder, version)
        return cls.load(entry.config, entry.path, version, role="batch", threads=threads)

    def start_batcher(self, *, clock: Clock | None = None, observer: BatchObserver | None = None) -> DynamicBatcher:
        # With one usable CPU the model and the event loop cannot run at once: a worker thread would
        # only add switches between them, so every pass short enough not to stall serving runs inline.
        one_cpu = self.threads is not None and self.threads.cpus == 1
        if self.text is not None and isinstance(observer, BucketObserver):
            self.text.observer = observer  # batches by padded-length bucket
        self.batcher = DynamicBatcher(
            self.forward, self.config.batching, elements_budget=self._budget,
            clock=clock or MonotonicClock(), observer=observer, name=f"{self.name}:{self.version}",
            inline_below_s=INLINE_BELOW_ONE_CPU_S if one_cpu else INLINE_BELOW_S)
        return self.batcher

    # -- validation -------------------------------------------------------------------------------

    def check_inputs(self, inputs: Mapping[str, np.ndarray], *, per_request: bool = True) -> tuple[int, int, Hashable]:
        """Check decoded inputs against the signature (core/inputs/signature.py); returns
        (rows, elements, batch key). InvalidInput (400) names the tensor at fault; PayloadTooLarge (413).
        A text model's key is the request's bucket and its elements its padded tokens."""
        checked = self.signature.check(inputs, per_request=per_request)
        if self.text is None or not per_request:
            return checked  # whole batches: forward checks each text as it tokenizes them
        admitted = self.text.admit(inputs)
        return admitted.rows, admitted.elements, admitted.key

    def _check_outputs(self, outputs: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
        """The one output check: every declared output, its datatype (same-kind casts allowed),
        its shape, and one row per input row (BatchSizeMismatch, naming both numbers)."""
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
            got = arr.shape[0] if arr.ndim else 1
            if got != rows:
                raise BatchSizeMismatch(spec.name, rows, got)
            if not shape_ok(arr.shape, spec.shape):
                raise ModelError(f"model {self.name} output {spec.name!r} has shape {fmt_shape(arr.shape)}, "
                                 f"declared {fmt_shape(spec.shape)}")
            result[spec.name] = arr
        return result

    # -- running ----------------------------------------------------------------------------------

    def forward(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pre-process, run the runtime and post-process one batch, then check the outputs
        (names, datatypes, shapes, one row per input row) once. Every lane runs the model
        through here: the batcher for requests, :meth:`score` for whole batches."""
        rows = next(iter(batch.values())).shape[0]
        y = self.text.run(batch, self._predict) if self.text is not None else self._predict(batch)
        if self._post is not None:
            y = self._post(y)
        return self._check_outputs(y, rows)

    def _predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runtime.predict(self._pre(batch) if self._pre is not None else batch)

    def score(self, inputs: Mapping[str, np.ndarray], chunk_rows: int,
              observe: Callable[[int, float], None] | None = None) -> dict[str, np.ndarray]:
        """Whole-batch lanes (batch, stream): check the signature, then :meth:`forward` in chunks
        of at most ``chunk_rows`` rows; outputs concatenated in order. ``observe(rows, seconds)``
        is called after each forward pass (metrics)."""
        rows, _, _ = self.check_inputs(inputs, per_request=False)
        outs = []
        for lo in range(0, rows, chunk_rows):
            chunk = dict(inputs) if rows <= chunk_rows else {k: v[lo:lo + chunk_rows] for k, v in inputs.items()}
            t0 = time.perf_counter()
            outs.append(self.forward(chunk))
            if observe is not None:
                observe(min(chunk_rows, rows - lo), time.perf_counter() - t0)
        if len(outs) == 1:
            return outs[0]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def screen(self, inputs: Mapping[str, np.ndarray]) -> list[tuple[int, str]]:
        """(row, reason) for each row of a whole batch that the model's stages refuse on its own
        (a text model: a text too long or not text); empty for other models. Whole-batch lanes call
        it after a row-level refusal (400/413) to reject those rows and score the rest."""
        return self.text.screen(inputs) if self.text is not None else []

    def infer(self, inputs: Mapping[str, np.ndarray], deadline: float, priority: int = ONLINE) -> Awaitable[Prediction]:
        """Validate one request (raising at once) and run it through the batcher (``BACKGROUND``
        for jobs): await the result. Not a coroutine itself: one frame less on every resume."""
        key: Hashable
        if self.text is not None:  # tokenized once, here: the batcher queues the padded tokens
            self.signature.check(inputs)
            admitted = self.text.admit(inputs)
            rows, elements, key, inputs = admitted.rows, admitted.elements, admitted.key, admitted.tokens
        else:
            rows, elements, key = self.check_inputs(inputs)
        assert self.batcher is not None, "start_batcher() before infer()"
        return self.batcher.submit(inputs, rows=rows, elements=elements, deadline=deadline, key=key,
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

    def sample_inputs(self, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``rows`` rows of valid inputs: the first declared warm-up input repeated, else generated from
        the signature as warm-up does (the profiler's inputs)."""
        if self.config.warmup.inputs:
            first = self.warmup_batches()[0]
            have = next(iter(first.values())).shape[0]
            return {k: np.take(v, np.arange(rows) % have, axis=0) for k, v in first.items()}
        rng = np.random.default_rng(seed)
        return {s.name: _generate(s, rows, rng) for s in self.config.inputs}

    def warmup(self) -> float:
        """Run every warm-up batch once; returns the slowest forward time (seconds) and seeds the
        batcher's estimates with it (the first call of a model is its slowest: the estimates only
        come down from there)."""
        slowest = 0.0
        slowest_rows = 1
        for i, batch in enumerate(self.warmup_batches()):
            try:
                self.check_inputs(batch)
            except (InvalidInput, PayloadTooLarge) as e:
                raise ConfigError(f"{self.model_dir}/model.yaml: warmup input {i}: {e.message}") from e
            t0 = time.perf_counter()
            try:
                self.forward(batch)
            except Exception as e:
                raise ConfigError(f"{self.model_dir}/{self.version}: warm-up batch {i} failed: "
                                  f"{type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - t0
            if seconds > slowest:
                slowest, slowest_rows = seconds, next(iter(batch.values())).shape[0]
        if self.batcher is not None:
            self.batcher.seed_forward_estimate(slowest, slowest_rows)
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
