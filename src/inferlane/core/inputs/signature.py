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

from inferlane.core.datatypes import from_numpy, to_numpy
from inferlane.core.errors import InvalidInput, PayloadTooLarge
from inferlane.core.spec import ModelConfig


def shape_ok(shape: tuple[int, ...], spec: tuple[int, ...]) -> bool:
    return len(shape) == len(spec) and all(s == -1 or s == d for s, d in zip(spec, shape, strict=True))


def _datatype_of(arr: np.ndarray, expected: str) -> str:
    """The Open Inference Protocol name of an array's datatype; NumPy's name when there is none or
    when it reads the same as the expected one (a NumPy string array for BYTES)."""
    try:
        name = from_numpy(arr.dtype)
    except TypeError:
        return f"numpy {arr.dtype}"
    return f"numpy {arr.dtype}" if name == expected else name


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class Signature:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.name = config.name
        self._dtypes = {s.name: to_numpy(s.datatype) for s in config.inputs}
        self.budget = config.batch_elements_budget
        self._limit = config.limits.max_elements_per_input
        self._max_rows = config.batching.max_batch_size
        # (name, dtype, row shape or None when a dimension is variable, spec) per input, in order
        self._specs = [(s.name, to_numpy(s.datatype), None if -1 in s.row_shape else s.row_shape, s)
                       for s in config.inputs]
        self._fixed = all(row is not None for _, _, row, _ in self._specs)
        """Every row shape is fixed: any two requests may share a batch (the batch key is None)."""

    def _names_error(self, inputs: Mapping[str, np.ndarray]) -> InvalidInput:
        expected = [s.name for s in self.config.inputs]
        extra = sorted(set(inputs) - set(expected))
        missing = [n for n in expected if n not in inputs]
        return InvalidInput(f"model {self.name} expects inputs {expected}"
                            + (f"; missing {missing}" if missing else "")
                            + (f"; unexpected {[e[:64] for e in extra[:10]]}" if extra else ""))

    def check(self, inputs: Mapping[str, np.ndarray], *, per_request: bool = True) -> tuple[int, int, Hashable]:
        """(rows, elements, batch key): requests with different variable dimensions have different
        keys and are never concatenated."""
        if len(inputs) != len(self._specs):
            raise self._names_error(inputs)
        rows = -1
        elements = 0
        for name, dtype, row_shape, spec in self._specs:
            arr = inputs.get(name)
            if arr is None:
                raise self._names_error(inputs)
            if arr.dtype != dtype:
                raise InvalidInput(f"input {name!r}: datatype must be {spec.datatype}, "
                                   f"got {_datatype_of(arr, spec.datatype)}")
            shape = arr.shape
            if (shape[1:] != row_shape or len(shape) != len(spec.shape)) if row_shape is not None \
                    else not shape_ok(shape, spec.shape):
                raise InvalidInput(f"input {name!r}: shape {fmt_shape(shape)} does not match "
                                   f"{fmt_shape(spec.shape)}")
            size = arr.size
            if per_request and size > self._limit:
                raise PayloadTooLarge(f"input {name!r}: {size} elements; the limit is {self._limit}")
            if rows == -1:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidInput(f"input {name!r}: {shape[0]} rows, other inputs have {rows}")
            elements += size
        if per_request:
            if rows == 0:
                raise InvalidInput("a request must have at least one row")
            if rows > self._max_rows:
                raise InvalidInput(f"request has {rows} rows; model {self.name} takes at most "
                                   f"{self._max_rows} per request (batching.max_batch_size)")
            if elements > self.budget:
                raise PayloadTooLarge(f"request has {elements} elements; the batch budget is "
                                      f"{self.budget} (batching.max_batch_elements)")
        key = None if self._fixed else tuple(inputs[name].shape[1:] for name, _, _, _ in self._specs)
        return rows, elements, key
