"""The model's signature, checked against decoded inputs: names, datatypes, shapes and limits.

    sig = Signature(config)
    rows, elements, key = sig.check(inputs)               # one request for the batcher
    sig.check(inputs, per_request=False)                  # a whole batch (batch and stream lanes)

Raises InvalidInput (400) naming the tensor at fault, or PayloadTooLarge (413). ``per_request``
adds the limits of one request: at most ``batching.max_batch_size`` rows and the batch element
budget, so that any request fits in a batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np

from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import InvalidInput, PayloadTooLarge
from inferlane.core.spec import ModelConfig


def shape_ok(shape: tuple[int, ...], spec: tuple[int, ...]) -> bool:
    return len(shape) == len(spec) and all(s == -1 or s == d for s, d in zip(spec, shape, strict=True))


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class Signature:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.name = config.name
        self._dtypes = {s.name: to_numpy(s.datatype) for s in config.inputs}
        self.budget = config.batch_elements_budget

    def check(self, inputs: Mapping[str, np.ndarray], *, per_request: bool = True) -> tuple[int, int, Hashable]:
        """(rows, elements, batch key): requests with different variable dimensions have different
        keys and are never concatenated."""
        specs = self.config.inputs
        if len(inputs) != len(specs) or any(s.name not in inputs for s in specs):
            expected = [s.name for s in specs]
            extra = sorted(set(inputs) - set(expected))
            missing = [n for n in expected if n not in inputs]
            raise InvalidInput(f"model {self.name} expects inputs {expected}"
                               + (f"; missing {missing}" if missing else "")
                               + (f"; unexpected {[e[:64] for e in extra[:10]]}" if extra else ""))
        rows = -1
        elements = 0
        key: list[tuple[int, ...]] = []
        limit = self.config.limits.max_elements_per_input
        for spec in specs:
            arr = inputs[spec.name]
            if arr.dtype != self._dtypes[spec.name]:
                raise InvalidInput(f"input {spec.name!r}: datatype must be {spec.datatype}")
            if not shape_ok(arr.shape, spec.shape):
                raise InvalidInput(f"input {spec.name!r}: shape {fmt_shape(arr.shape)} does not match "
                                   f"{fmt_shape(spec.shape)}")
            if per_request and arr.size > limit:
                raise PayloadTooLarge(f"input {spec.name!r}: {arr.size} elements; the limit is {limit}")
            if rows == -1:
                rows = arr.shape[0]
            elif arr.shape[0] != rows:
                raise InvalidInput(f"input {spec.name!r}: {arr.shape[0]} rows, other inputs have {rows}")
            elements += arr.size
            key.append(arr.shape[1:])
        if per_request:
            if rows == 0:
                raise InvalidInput("a request must have at least one row")
            max_rows = self.config.batching.max_batch_size
            if rows > max_rows:
                raise InvalidInput(f"request has {rows} rows; model {self.name} takes at most "
                                   f"{max_rows} per request (batching.max_batch_size)")
            if elements > self.budget:
                raise PayloadTooLarge(f"request has {elements} elements; the batch budget is "
                                      f"{self.budget} (batching.max_batch_elements)")
        return rows, elements, tuple(key)
