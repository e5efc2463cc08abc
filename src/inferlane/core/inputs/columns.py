"""Table columns (Arrow record batches read from Parquet or CSV) → model inputs, a verdict per row.

    decoder = ColumnDecoder.create(model.config, key=["id"], columns={"features": ["f_*"]})
    decoded = decoder.decode(record_batch, text=False)    # text=True for CSV: every cell is text
    decoded.keys["id"], decoded.inputs["features"], decoded.rejects

Typed columns go through the same value rules as every other lane (values.py): a boolean column
does not feed a number input, a string column does not either (Parquet has types; "1.5" is a
string), NaN is refused. CSV has no types, so a CSV cell is read as a JSON scalar would be: a
number (JSON's syntax: ``-0.5``, ``1e3``, not ``+1``, ``.5`` or ``nan``), ``true``/``false``,
empty (null), or else a string. The common case (every cell a number) is converted by Arrow in
one pass per column; only cells that are not plain numbers are looked at one by one.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import ConfigError
from inferlane.core.inputs.records import shape_problem
from inferlane.core.inputs.rows import Decoded, FieldMap, InputFields, key_problem
from inferlane.core.inputs.values import ValueProblem, belong, check_typed, describe, from_json
from inferlane.core.spec import ModelConfig

JSON_NUMBER = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
JSON_INTEGER = r"^-?(0|[1-9][0-9]*)$"

RowProblems = list[tuple[np.ndarray, str]]
"""(row mask, problem) pairs; the first problem of a row is its reason."""


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _cell(text: str, datatype: str) -> Any:
    """One CSV cell that is not a plain number, as its value in ``datatype`` (ValueProblem if not)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    if isinstance(value, list | dict):
        value = text  # a cell is a scalar: "[1, 2]" is text
    return from_json(value, datatype)[()]


def _cells(col: pa.Array, rows: np.ndarray, datatype: str, out: np.ndarray, problems: RowProblems) -> None:
    """Convert the cells of ``rows`` one by one into ``out``; their problems go to ``problems``."""
    texts = col.take(pa.array(rows, pa.int64())).to_pylist()
    found: dict[str, np.ndarray] = {}
    for i, text in zip(rows, texts, strict=True):
        try:
            out[i] = _cell(text, datatype)
        except ValueProblem as e:
            found.setdefault(e.problem, np.zeros(len(out), dtype=bool))[i] = True
    problems.extend((mask, problem) for problem, mask in found.items())


def _text_values(col: pa.Array, datatype: str) -> tuple[np.ndarray, RowProblems]:
    """CSV text cells (nulls already handled by the caller) as ``datatype``."""
    n = len(col)
    dt = to_numpy(datatype)
    problems: RowProblems = []
    present = np.asarray(col.is_valid())
    if datatype == "BYTES":
        out = np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
        return np.asarray([s.encode() for s in out], dtype=object) if n else out, problems
    if datatype == "BOOL":
        is_true = np.asarray(pc.equal(col, "true").fill_null(False))
        plain = is_true | np.asarray(pc.equal(col, "false").fill_null(False))
        out = is_true.copy()
        _cells(col, np.flatnonzero(present & ~plain), datatype, out, problems)
        return out, problems
    plain = np.asarray(pc.match_substring_regex(col, JSON_INTEGER if dt.kind in "iu" else JSON_NUMBER)
                       .fill_null(False))
    source = pc.if_else(pa.array(plain), col, "0")
    target = pa.float64() if dt.kind == "f" else pa.uint64() if datatype == "UINT64" else pa.int64()
    try:
        arr = np.asarray(pc.cast(source, target).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # integers past 64 bits: cell by cell
        arr = np.zeros(n, dtype=np.float64 if dt.kind == "f" else np.int64)
        plain = np.zeros(n, dtype=bool)
    out, typed = check_typed(arr, datatype)
    problems.extend((mask & plain, problem) for mask, problem in typed)
    _cells(col, np.flatnonzero(present & ~plain), datatype, out, problems)
    return out, problems


def column_values(col: pa.Array, datatype: str, *, text: bool) -> tuple[np.ndarray, RowProblems]:
    """A column of scalars as ``datatype``: values for every row (0 where refused) and the
    problems, each with its row mask."""
    n = len(col)
    dt = to_numpy(datatype)
    t = col.type
    everything = np.ones(n, dtype=bool)
    if pa.types.is_null(t):
        return np.zeros(n, dtype=dt), [(everything, belong("null", datatype))]
    problems: RowProblems = []
    if col.null_count:
        problems.append((np.asarray(col.is_null()), belong("null", datatype)))
    if _is_text(t) and text:
        out, more = _text_values(col, datatype)
    elif _is_text(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        arr = np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
        if col.null_count:
            arr[np.asarray(col.is_null())] = b""
        out, more = check_typed(arr, datatype)
    elif pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        if pa.types.is_decimal(t):
            col = pc.cast(col, pa.float64())
        filled = col.fill_null(False if pa.types.is_boolean(t) else 0) if col.null_count else col
        out, more = check_typed(np.asarray(filled.to_numpy(zero_copy_only=False)), datatype)
    elif _is_list(t):
        return np.zeros(n, dtype=dt), [*problems, (everything, belong("a list", datatype))]
    else:
        return np.zeros(n, dtype=dt), [*problems, (everything, belong(f"a {t} value", datatype))]
    return out, problems + more


def key_column(col: pa.Array, text: bool) -> tuple[pa.Array, np.ndarray]:
    """The key column (CSV text keys become integers when every one is) and its bad rows."""
    t = col.type
    if _is_text(t) and text:
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            col = pc.cast(col, pa.int64())
        t = col.type
    if not (pa.types.is_integer(t) or _is_text(t)):
        return col, np.ones(len(col), dtype=bool)
    return col, np.asarray(col.is_null()) if col.null_count else np.zeros(len(col), dtype=bool)


class ColumnDecoder:
    def __init__(self, config: ModelConfig, fields: FieldMap) -> None:
        self.config = config
        self.fields = fields

    @classmethod
    def create(cls, config: ModelConfig, key: list[str], columns: dict[str, list[str]] | None = None) -> ColumnDecoder:
        return cls(config, FieldMap.create(config, key, columns, globs=True, every_other_field=True,
                                           key_hint="name the key column(s) that identify a row"))

    @property
    def key(self) -> list[str]:
        return self.fields.key

    def decode(self, batch: pa.RecordBatch, *, text: bool) -> Decoded:
        """``text``: the batch comes from CSV (every column is text to read as JSON scalars)."""
        n = batch.num_rows
        names = batch.schema.names
        reasons: dict[int, str] = {}

        def reject(mask: np.ndarray, reason: str) -> None:
            for i in np.flatnonzero(mask):
                reasons.setdefault(int(i), reason)

        keys: dict[str, pa.Array] = {}
        for k in self.key:
            if k not in names:
                raise ConfigError(f"--key {k}: the input has no column {k!r} (columns: {names[:20]})")
            keys[k], bad = key_column(batch.column(k), text)
            reject(bad, key_problem(k))
        inputs = {f.name: self._input(batch, f, text, reject) for f in self.fields.resolve(names).values()}
        good = np.ones(n, dtype=bool)
        if reasons:
            good[list(reasons)] = False
            mask = pa.array(good)
            keys = {k: v.filter(mask) for k, v in keys.items()}
            inputs = {k: v[good] for k, v in inputs.items()}
        return Decoded([int(i) for i in np.flatnonzero(good)], keys, inputs, sorted(reasons.items()))

    def _input(self, batch: pa.RecordBatch, f: InputFields, text: bool, reject: Any) -> np.ndarray:
        n = batch.num_rows
        datatype = f.spec.datatype
        dt = to_numpy(datatype)
        names = batch.schema.names
        if f.gathered:
            out = np.zeros((n, len(f.fields)), dtype=dt)
            for j, field in enumerate(f.fields):
                if field not in names:
                    reject(np.ones(n, dtype=bool), describe(f.name, f"missing field {field!r}"))
                    continue
                out[:, j], problems = column_values(batch.column(field), datatype, text=text)
                for mask, problem in problems:
                    reject(mask, describe(f.name, problem, field))
            return out
        field = f.fields[0]
        empty = np.zeros((n, *(max(d, 1) for d in f.row_shape)), dtype=dt)
        if field not in names:
            reject(np.ones(n, dtype=bool), describe(f.name, f"missing field {field!r}"))
            return empty
        col = batch.column(field)
        if not f.row_shape:
            out, problems = column_values(col, datatype, text=text)
            for mask, problem in problems:
                reject(mask, describe(f.name, problem, field))
            return out
        if not _is_list(col.type):
            raise ConfigError(f"input {f.name!r} takes rows of shape {list(f.row_shape)}; column {field!r} holds "
                              f"{col.type} values. Use --columns {f.name}=col1,col2,... to build it from columns.")
        width = f.spec.row_elements
        if width is None:
            raise ConfigError(f"input {f.name!r} has a variable dimension: a list column cannot feed it")
        return self._list_input(col, f, width, text, reject, empty)

    def _list_input(self, col: pa.Array, f: InputFields, width: int, text: bool, reject: Any,
                    out: np.ndarray) -> np.ndarray:
        datatype = f.spec.datatype
        lengths = np.asarray(pc.list_value_length(col).fill_null(-1))
        reject(lengths == -1, describe(f.name, belong("null", datatype), f.fields[0]))
        for length in np.unique(lengths[(lengths != width) & (lengths != -1)]):
            reject(lengths == length, describe(f.name, shape_problem((int(length),), f.row_shape), f.fields[0]))
        ok = np.flatnonzero(lengths == width)
        if not len(ok):
            return out
        values = pc.list_flatten(col.take(pa.array(ok, pa.int64())))
        flat, problems = column_values(values, datatype, text=text)
        for mask, problem in problems:
            rows = np.zeros(len(out), dtype=bool)
            rows[ok] = mask.reshape(len(ok), width).any(axis=1)
            reject(rows, describe(f.name, problem, f.fields[0]))
        out[ok] = flat.reshape((len(ok), *f.row_shape))
        return out
