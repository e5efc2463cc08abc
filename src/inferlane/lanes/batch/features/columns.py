"""A block's columns as a materialization stores them: the key of each row, the kind of each column
(numeric or why not), its numbers, and the encoded values (the rules: the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inferlane.core.errors import InvalidInput
from inferlane.core.inputs.columns import (
    JSON_INTEGER,
    JSON_NUMBER,
    key_column,  # the batch lane's key rule, not a copy
)
from inferlane.lanes.batch.features.job import MODEL
from inferlane.lanes.batch.features.sources import Block, Values
from inferlane.store import kv


def _is_number(v: object) -> bool:
    return isinstance(v, int | float | Decimal)  # bool is an int


def _is_nan(v: object) -> bool:
    return (isinstance(v, float) and math.isnan(v)) or (isinstance(v, Decimal) and v.is_nan())


def column_kind(col: Values, text: bool) -> str | None:
    """"numeric", None (no value to tell yet) or why the column is not stored."""
    if isinstance(col, list):
        seen = [v for v in col if v is not None]
        if not seen:
            return None
        other = next((v for v in seen if not _is_number(v)), None)
        return "numeric" if other is None else f"holds {type(other).__name__} values such as {str(other)[:40]!r}"
    t = col.type
    if pa.types.is_null(t) or col.null_count == len(col):
        return None
    if text and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        cells = col.drop_null()
        if pc.all(pc.match_substring_regex(cells, JSON_NUMBER)).as_py() or pc.all(
                pc.is_in(cells, pa.array(["true", "false"]))).as_py():
            return "numeric"
        other = pc.filter(cells, pc.invert(pc.match_substring_regex(cells, JSON_NUMBER)))[0].as_py()
        return f"holds text such as {str(other)[:40]!r}"
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric"
    return f"is of type {t}"


def _python_numbers(col: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    present = np.array([v is not None and not _is_nan(v) for v in col], dtype=bool)
    bad = np.array([v is not None and not _is_number(v) for v in col], dtype=bool)
    present &= ~bad
    seen = [v for v, p in zip(col, present, strict=True) if p]
    if seen and all(isinstance(v, bool) for v in seen):
        return np.array([bool(v) if p else False for v, p in zip(col, present, strict=True)]), present, bad
    if all(isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63 for v in seen):
        return np.array([v if p else 0 for v, p in zip(col, present, strict=True)], dtype=np.int64), present, bad
    return np.array([float(v) if p else 0.0 for v, p in zip(col, present, strict=True)], dtype=np.float64), present, bad


def _text_numbers(col: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    valid = np.asarray(col.is_valid())
    is_int = np.asarray(pc.match_substring_regex(col, JSON_INTEGER).fill_null(False))
    is_num = np.asarray(pc.match_substring_regex(col, JSON_NUMBER).fill_null(False))
    is_bool = np.asarray(pc.is_in(col, pa.array(["true", "false"])).fill_null(False))
    if valid.any() and (is_bool | ~valid).all():
        return np.asarray(pc.equal(col, "true").fill_null(False)), valid, np.zeros(len(col), bool)
    bad = valid & ~is_num
    source = pc.if_else(pa.array(is_num), col, "0")
    if (is_int | ~valid).all():
        try:
            return np.asarray(pc.cast(source, pa.int64())), is_num, bad
        except pa.ArrowInvalid:  # past 64 bits: as floats
            pass
    return np.asarray(pc.cast(source, pa.float64())), is_num, bad


def numbers(col: Values, text: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A numeric column as (values, present: a number that is not NaN, bad: a value that is no number)."""
    if isinstance(col, list):
        return _python_numbers(col)
    t = col.type
    if text and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return _text_numbers(col)
    n = len(col)
    if pa.types.is_null(t):
        return np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
    if not (pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        return np.zeros(n), np.zeros(n, bool), np.asarray(col.is_valid())  # another file typed it otherwise
    if pa.types.is_decimal(t):
        col = pc.cast(col, pa.float64())
    values = np.asarray(col.fill_null(False if pa.types.is_boolean(t) else 0).to_numpy(zero_copy_only=False))
    present = np.asarray(col.is_valid())
    if values.dtype.kind == "f":
        present &= ~np.isnan(values)
    return values, present, np.zeros(n, bool)


@dataclass(frozen=True, slots=True)
class BadKey:
    """A key cell that cannot be part of a key (None: missing or null)."""

    value: Any


def key_texts(block: Block, key: list[str]) -> tuple[list[str], list[str | None]]:
    """Each row's key as text ('' when it has none) and why a row's key is refused (None: it is not)."""
    if all(not isinstance(block.columns[k], list) for k in key):
        return _arrow_keys(block, key)
    parts: list[list[Any]] = []
    for k in key:
        col = block.columns[k]
        if not isinstance(col, list):
            arr, bad = key_column(col, block.text)
            col = [BadKey(v) if b else v for v, b in zip(arr.to_pylist(), bad, strict=True)]
        parts.append([v if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) else BadKey(v)
                      for v in col])
    texts: list[str] = []
    why: list[str | None] = []
    for vs in zip(*parts, strict=True):
        wrong = [(k, v.value) for k, v in zip(key, vs, strict=True) if isinstance(v, BadKey)]
        if wrong:
            texts.append("")
            why.append(_bad_key(*wrong[0]))
            continue
        text = "|".join(str(v) for v in vs)
        texts.append(text)
        why.append(_key_problem(text))
    return texts, why


def _bad_key(column: str, value: Any) -> str:
    if value is None:
        return f"key column {column!r} is missing or null"
    return f"key column {column!r} holds a {type(value).__name__} ({str(value)[:40]!r}): a key is text or an integer"


def _key_problem(text: str) -> str | None:
    try:
        kv.check_key(text, "key")
    except InvalidInput as e:
        return e.message
    return None


def _arrow_keys(block: Block, key: list[str]) -> tuple[list[str], list[str | None]]:
    """key_texts for Arrow columns, a column at a time (the usual case: Parquet and CSV)."""
    n = len(block.rows)
    why: list[str | None] = [None] * n
    refused = np.zeros(n, dtype=bool)
    parts = []
    for k in key:
        arr, bad = key_column(block.columns[k], block.text)
        bad = np.asarray(bad, dtype=bool)
        for i in np.flatnonzero(bad & ~refused):
            why[i] = _bad_key(k, arr[int(i)].as_py())
        refused |= bad
        string = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
        parts.append(arr if string else pc.cast(arr, pa.string()) if pa.types.is_integer(arr.type)
                     else pa.nulls(n, pa.string()))
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "|")
    size = np.asarray(pc.binary_length(joined).fill_null(0))
    nul = np.asarray(pc.match_substring(joined, "\x00").fill_null(False))
    texts: list[str] = joined.fill_null("").to_pylist()
    for i in np.flatnonzero(~refused & ((size == 0) | (size > kv.MAX_KEY_BYTES) | nul)):
        why[i] = _key_problem(texts[i])
    return texts, why


def cell(col: Values, i: int) -> Any:
    return col[i] if isinstance(col, list) else col[i].as_py()


def encode_block(n: int, columns: dict[str, tuple[np.ndarray, np.ndarray]], empty: list[str], version: str,
                 computed_at: float) -> list[bytes]:
    """One value for each of ``n`` rows: the row's present fields (``columns``: name → (values, present))
    as scalars, rows grouped by which fields are present, one ``encode_rows`` per group. A row without
    any gets an empty array per name in ``empty`` (at least one)."""
    names = list(columns)
    if not names:
        return kv.encode_rows(MODEL, version, computed_at, {e: np.empty((n, 0)) for e in empty}) if n else []
    present = np.column_stack([columns[c][1] for c in names])
    patterns, inverse = np.unique(np.packbits(present, axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    out: list[bytes] = [b""] * n
    for g in range(len(patterns)):
        idx = np.flatnonzero(inverse == g)
        mask = present[idx[0]]
        arrays = {c: columns[c][0][idx] for c, m in zip(names, mask, strict=True) if m}
        if not arrays:
            arrays = {e: np.empty((len(idx), 0)) for e in empty}
        for i, value in zip(idx, kv.encode_rows(MODEL, version, computed_at, arrays), strict=True):
            out[i] = value
    return out
