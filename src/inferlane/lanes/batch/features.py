"""Columns → model inputs, row-level validation (rejects), model outputs → an output table.

    mapper = FeatureMapper.create(model_config, key=["id"], columns={"features": ["f0", "f1"]})
    prepared = mapper.prepare(record_batch)       # inputs for valid rows + (row, reason) rejects
    table = mapper.output_table(prepared, outputs, "fraud", "1", scored_at)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import ConfigError
from inferlane.core.spec import ModelConfig, TensorSpec

Reject = Callable[[np.ndarray, str], None]
"""Marks rows (a boolean mask) as rejected with a reason; the first reason per row is kept."""


@dataclass(slots=True)
class Prepared:
    keys: dict[str, pa.Array]
    """Key columns of the valid rows."""
    inputs: dict[str, np.ndarray]
    """Model inputs for the valid rows."""
    rejects: list[tuple[int, str, str]]
    """(row index in the batch, key as text, reason)."""
    rows: int
    """Rows in the batch (valid + rejected)."""


def _natural(columns: list[str], pattern: str) -> list[str]:
    return [c for c in columns if fnmatch.fnmatchcase(c, pattern)]


class FeatureMapper:
    """Maps columns onto the model's inputs; one mapper per job (the schema may vary by file)."""

    def __init__(self, config: ModelConfig, key: list[str], columns: dict[str, list[str]]) -> None:
        self.config = config
        self.key = key
        self.explicit = columns
        self._dtypes = {s.name: to_numpy(s.datatype) for s in config.inputs}
        self._resolved: dict[tuple[str, ...], dict[str, list[str]]] = {}

    @classmethod
    def create(cls, config: ModelConfig, key: list[str], columns: dict[str, list[str]] | None = None) -> FeatureMapper:
        if not key:
            raise ConfigError("--key: name the key column(s) that identify a row")
        for name in columns or {}:
            if name not in {s.name for s in config.inputs}:
                raise ConfigError(f"--columns {name}=...: the model has no input {name!r} "
                                  f"(inputs: {[s.name for s in config.inputs]})")
        return cls(config, key, columns or {})

    def columns_for(self, names: list[str]) -> dict[str, list[str]]:
        """Input name → the columns that feed it, for a schema with these column names."""
        cache_key = tuple(names)
        found = self._resolved.get(cache_key)
        if found is not None:
            return found
        result: dict[str, list[str]] = {}
        others = [n for n in names if n not in self.key]
        for spec in self.config.inputs:
            if spec.name in self.explicit:
                cols: list[str] = []
                for item in self.explicit[spec.name]:
                    cols += _natural(names, item) if any(c in item for c in "*?[") else [item]
                result[spec.name] = cols
            elif spec.name in names or len(spec.shape) == 1:
                result[spec.name] = [spec.name]
            elif len(self.config.inputs) == 1 and len(spec.shape) == 2:
                result[spec.name] = others  # every non-key column, in file order
            else:
                raise ConfigError(f"input {spec.name!r}: say which columns feed it with "
                                  f"--columns {spec.name}=col1,col2,... (or a glob like f_*)")
        self._resolved[cache_key] = result
        return result

    def prepare(self, batch: pa.RecordBatch, row_offset: int = 0) -> Prepared:
        n = batch.num_rows
        names = batch.schema.names
        bad = np.zeros(n, dtype=bool)
        reasons: dict[int, str] = {}

        def reject(mask: np.ndarray, reason: str) -> None:
            for i in np.flatnonzero(mask & ~bad):
                reasons[int(i)] = reason
            bad[:] |= mask

        keys: dict[str, pa.Array] = {}
        for k in self.key:
            if k not in names:
                raise ConfigError(f"--key {k}: the input has no column {k!r} (columns: {names[:20]})")
            col = batch.column(k)
            if col.type == pa.string() or col.type == pa.large_string():
                col = _maybe_int(col)
            keys[k] = col
            if col.null_count:
                reject(np.asarray(col.is_null()), f"null key column {k!r}")

        inputs: dict[str, np.ndarray] = {}
        for spec in self.config.inputs:
            inputs[spec.name] = self._input(batch, spec, self.columns_for(names)[spec.name], reject, n)

        rejects = []
        if bad.any():
            key_text = _key_text(keys, n)
            rejects = [(i, key_text[i], reasons[i]) for i in sorted(reasons)]
            good = ~bad
            keys = {k: v.filter(pa.array(good)) for k, v in keys.items()}
            inputs = {k: v[good] for k, v in inputs.items()}
        return Prepared(keys, inputs, rejects, n)

    def _input(self, batch: pa.RecordBatch, spec: TensorSpec, cols: list[str], reject: Reject,
               n: int) -> np.ndarray:
        dt = self._dtypes[spec.name]
        rej = reject
        width = spec.row_elements
        if len(spec.shape) == 1:
            return self._column(batch, cols[0], dt, rej, n)
        if len(cols) == 1 and cols[0] == spec.name and cols[0] in batch.schema.names:
            col = batch.column(cols[0])
            if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
                return self._list_column(col, spec, dt, rej, n)
        if width is not None and len(cols) != width:
            missing = [c for c in cols if c not in batch.schema.names]
            raise ConfigError(
                f"input {spec.name!r} takes {width} features per row; the columns that feed it are "
                f"{len(cols)}: {cols[:8]}{'...' if len(cols) > 8 else ''}"
                + (f" (missing: {missing})" if missing else "")
                + f". Use --columns {spec.name}=... to choose them.")
        out = np.empty((n, len(cols)), dtype=dt)
        for j, c in enumerate(cols):
            out[:, j] = self._column(batch, c, dt, rej, n)
        return out.reshape((n, *spec.row_shape)) if width is not None else out

    @staticmethod
    def _column(batch: pa.RecordBatch, name: str, dt: np.dtype, reject: Reject, n: int) -> np.ndarray:
        if name not in batch.schema.names:
            reject(np.ones(n, dtype=bool), f"missing column {name!r}")
            return np.zeros(n, dtype=dt)
        col = batch.column(name)
        if col.null_count:
            reject(np.asarray(col.is_null()), f"null in column {name!r}")
            col = col.fill_null(0 if not pa.types.is_string(col.type) else "0")
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return _parse_text(col, name, dt, reject, n)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
            reject(np.ones(n, dtype=bool), f"column {name!r} has type {col.type}, not a number")
            return np.zeros(n, dtype=dt)
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dt)

    @staticmethod
    def _list_column(col: pa.Array, spec: TensorSpec, dt: np.dtype, reject: Reject, n: int) -> np.ndarray:
        width = spec.row_elements or 0
        lengths = np.asarray(pc.list_value_length(col).fill_null(-1))
        wrong = lengths != width
        if wrong.any():
            reject(wrong, f"column {spec.name!r} must hold lists of {width} numbers")
        flat = np.zeros((n, width), dtype=dt)
        ok = ~wrong
        if ok.any():
            values = pc.list_flatten(col.filter(pa.array(ok)))
            flat[ok] = np.asarray(values.to_numpy(zero_copy_only=False), dtype=dt).reshape(-1, width)
        return flat.reshape((n, *spec.row_shape))

    def output_table(self, prepared: Prepared, outputs: dict[str, np.ndarray], model: str,
                     version: str, scored_at: datetime) -> pa.Table:
        cols: dict[str, pa.Array] = dict(prepared.keys)
        for spec in self.config.outputs:
            arr = outputs[spec.name]
            cols[spec.name] = to_arrow(arr)
        rows = next(iter(prepared.keys.values())).__len__() if prepared.keys else 0
        cols["model_name"] = pa.repeat(pa.scalar(model, pa.string()), rows)
        cols["model_version"] = pa.repeat(pa.scalar(version, pa.string()), rows)
        cols["scored_at"] = pa.repeat(pa.scalar(scored_at, pa.timestamp("us", tz="UTC")), rows)
        return pa.table(cols)


def to_arrow(arr: np.ndarray) -> pa.Array:
    """1-D → a plain column; N-D → a fixed-size list column (row-major)."""
    if arr.ndim == 1:
        return pa.array(arr)
    width = int(np.prod(arr.shape[1:]))
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(arr).reshape(-1)), width)


def _maybe_int(col: pa.Array) -> pa.Array:
    """Text keys from CSV/JSONL become integers when every value is one (same as Parquet ints)."""
    try:
        return pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return col


def _parse_text(col: pa.Array, name: str, dt: np.dtype, reject: Reject, n: int) -> np.ndarray:
    assert callable(reject)
    target = pa.from_numpy_dtype(dt)
    try:
        return np.asarray(pc.cast(col, target).to_numpy(zero_copy_only=False), dtype=dt)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.zeros(n, dtype=dt)
    bad = np.zeros(n, dtype=bool)
    first_bad = ""
    for i, v in enumerate(col.to_pylist()):
        try:
            out[i] = float(v) if dt.kind == "f" else int(v)
        except (TypeError, ValueError, OverflowError):
            bad[i] = True
            first_bad = first_bad or str(v)[:50]
    reject(bad, f"column {name!r}: {first_bad!r} is not a {dt.name} number")
    return out


def _key_text(keys: dict[str, pa.Array], n: int) -> list[str]:
    lists = [k.to_pylist() for k in keys.values()]
    if not lists:
        return [""] * n
    return ["|".join("" if v is None else str(v) for v in row) for row in zip(*lists, strict=True)]
