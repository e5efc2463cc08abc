"""NumPy model outputs ↔ Arrow columns, the form every table output takes.

    table = scored_table({"id": ids}, outputs, model="fraud", version="1", scored_at=now)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa


def to_arrow(arr: np.ndarray) -> pa.Array:
    """1-D → a plain column; N-D → a fixed-size list column (row-major)."""
    if arr.ndim == 1:
        return pa.array(arr)
    width = int(np.prod(arr.shape[1:]))
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(arr).reshape(-1)), width)


def flatten_lists(table: pa.Table) -> pa.Table:
    """Fixed-size list columns → one column per element (name_0, name_1, ...), for flat outputs."""
    cols: dict[str, pa.Array] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_fixed_size_list(col.type):
            width = col.type.list_size
            flat = col.combine_chunks().flatten()
            for j in range(width):
                cols[f"{name}_{j}"] = flat[j::width] if len(flat) else pa.array([], col.type.value_type)
        else:
            cols[name] = col
    return pa.table(cols)


def key_array(values: Any) -> pa.Array:
    """Keys as one column: an Arrow array as it is; a list of integers as int64, else as text."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    if all(type(k) is int for k in values):
        try:
            return pa.array(values, pa.int64())
        except OverflowError:  # unsigned 64-bit keys
            return pa.array(values, pa.uint64()) if all(k >= 0 for k in values) else pa.array(map(str, values))
    return pa.array([str(k) for k in values], pa.string())


def scored_table(keys: dict[str, Any], outputs: dict[str, np.ndarray], *, model: str, version: str,
                 scored_at: datetime, extra: dict[str, pa.Array] | None = None) -> pa.Table:
    """Key columns, one column per output, then model_name, model_version, any ``extra`` columns
    and scored_at: the row layout of every table output (batch and stream)."""
    cols: dict[str, Any] = {k: key_array(v) for k, v in keys.items()}
    rows = len(next(iter(cols.values()))) if cols else 0
    for name, arr in outputs.items():
        cols[name] = to_arrow(arr)
    cols["model_name"] = pa.repeat(pa.scalar(model, pa.string()), rows)
    cols["model_version"] = pa.repeat(pa.scalar(version, pa.string()), rows)
    cols.update(extra or {})
    cols["scored_at"] = pa.repeat(pa.scalar(scored_at, pa.timestamp("us", tz="UTC")), rows)
    return pa.table(cols)
