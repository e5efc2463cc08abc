"""Open Inference Protocol datatypes and their NumPy equivalents."""

from __future__ import annotations

from typing import Literal

import numpy as np

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]

_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_FROM_NUMPY: dict[np.dtype, str] = {v: k for k, v in _TO_NUMPY.items()}

DATATYPES: tuple[str, ...] = tuple(_TO_NUMPY)


def to_numpy(datatype: str) -> np.dtype:
    """NumPy dtype of an Open Inference Protocol datatype (KeyError if unknown)."""
    return _TO_NUMPY[datatype]


def from_numpy(dtype: np.dtype) -> str:
    """Open Inference Protocol datatype of a NumPy dtype; strings and bytes map to BYTES."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return _FROM_NUMPY[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"no Open Inference Protocol datatype for numpy dtype {dtype}") from None


def itemsize(datatype: str) -> int:
    """Bytes per element in the binary tensor encoding (0 for BYTES, which is length-prefixed)."""
    return 0 if datatype == "BYTES" else _TO_NUMPY[datatype].itemsize
