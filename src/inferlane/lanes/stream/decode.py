"""JSON events → model inputs, one verdict per event (never one per batch).

The event schema comes from the model signature: each input is a field of the same name (a number
for a 1-D input, a list — nested for more dimensions — otherwise). ``columns`` maps an input onto
other fields instead, e.g. ``{"features": ["amount", "age", "hour"]}`` builds each row of a
``[-1, 3]`` input from three scalar fields.

    decoder = EventDecoder.create(model.config, key="id", columns={"features": ["amount", "age"]})
    decoded = decoder.decode([b'{"id": 1, "amount": 9.5, "age": 41}', b'not json'])
    decoded.index      # [0]: events that became rows, in order
    decoded.rejects    # [(1, "not a JSON object: ...")]

The fast path parses each event once with orjson and converts each input with one ``np.asarray``
over the whole batch; only when that fails does it look at events one by one to find the bad ones,
so one poison event costs its batch a second pass, never the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import ConfigError
from inferlane.core.spec import ModelConfig

MAX_EVENT_BYTES = 1 << 20
"""Events above this size are dead-lettered unparsed (a stream of rows, not of documents)."""


@dataclass(slots=True)
class Decoded:
    index: list[int]
    """Positions (in the batch) of the events that became rows, in order."""
    keys: list[str | int]
    """The key of each row."""
    inputs: dict[str, np.ndarray]
    """Model inputs, one row per entry of ``index``."""
    rejects: list[tuple[int, str]]
    """(position in the batch, reason) for events that cannot be scored."""


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    fields: tuple[str, ...]
    """One field holding the whole row, or one scalar field per element of a flat row."""
    dtype: np.dtype[Any]
    row_shape: tuple[int, ...]

    @property
    def gathered(self) -> bool:
        return len(self.fields) > 1 or (len(self.row_shape) == 1 and self.fields[0] != self.name)


class EventDecoder:
    def __init__(self, key: str, inputs: list[_Input]) -> None:
        self.key = key
        self._inputs = inputs

    @classmethod
    def create(cls, config: ModelConfig, key: str, columns: dict[str, list[str]] | None = None) -> EventDecoder:
        if not key:
            raise ConfigError("--key: name the event field that identifies an event (its output key)")
        columns = columns or {}
        names = {s.name for s in config.inputs}
        for name, wanted in columns.items():
            if name not in names:
                raise ConfigError(f"--columns {name}=...: the model has no input {name!r} (inputs: {sorted(names)})")
            if any(c in f for f in wanted for c in "*?["):
                raise ConfigError(f"--columns {name}=...: list the event fields; globs only work on batch files")
            if not wanted:
                raise ConfigError(f"--columns {name}=: name at least one field")
        inputs = []
        for spec in config.inputs:
            fields: tuple[str, ...] = tuple(columns.get(spec.name, [spec.name]))
            row_shape = spec.row_shape
            if len(fields) > 1 or fields[0] != spec.name:
                if len(row_shape) > 1 or (len(row_shape) == 1 and row_shape[0] not in (-1, len(fields))) or (
                        not row_shape and len(fields) != 1):
                    raise ConfigError(f"--columns {spec.name}=...: {len(fields)} field(s) cannot fill rows of "
                                      f"shape {list(row_shape)}")
                if row_shape and row_shape[0] == -1:
                    row_shape = (len(fields),)
            inputs.append(_Input(spec.name, fields, to_numpy(spec.datatype), row_shape))
        return cls(key, inputs)

    def decode(self, values: list[bytes | None]) -> Decoded:
        rejects: list[tuple[int, str]] = []
        rows: list[dict[str, Any]] = []
        index: list[int] = []
        keys: list[str | int] = []
        key = self.key
        loads = orjson.loads
        for i, raw in enumerate(values):
            if raw is None:
                rejects.append((i, "empty event (no value)"))
                continue
            if len(raw) > MAX_EVENT_BYTES:
                rejects.append((i, f"event of {len(raw)} bytes is over the {MAX_EVENT_BYTES}-byte limit"))
                continue
            try:
                event = loads(raw)
            except orjson.JSONDecodeError as e:
                rejects.append((i, f"not JSON: {e}"))
                continue
            if type(event) is not dict:
                rejects.append((i, f"event is a JSON {_JSON_TYPES.get(type(event), 'value')}, not an object"))
                continue
            k = event.get(key)
            if type(k) is not int and type(k) is not str:
                rejects.append((i, f"key field {key!r} is missing or not a string/integer"))
                continue
            rows.append(event)
            index.append(i)
            keys.append(k)

        inputs: dict[str, np.ndarray] = {}
        bad: dict[int, str] = {}
        for spec in self._inputs:
            fast = _gather(rows, spec)
            inputs[spec.name] = fast if fast is not None else _gather_checked(rows, spec, bad)
        if bad:
            keep = [j for j in range(len(rows)) if j not in bad]
            rejects.extend((index[j], reason) for j, reason in bad.items())
            rejects.sort()
            sel = np.asarray(keep, dtype=np.intp)
            inputs = {name: arr[sel] for name, arr in inputs.items()}
            index = [index[j] for j in keep]
            keys = [keys[j] for j in keep]
        return Decoded(index, keys, inputs, rejects)


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}

_KINDS = {"f": "fiub", "i": "iub", "u": "iub", "b": "b"}
"""JSON values an input of each numpy kind takes: numbers (and booleans, as 0 and 1: NumPy folds a
boolean among numbers into a number, so refusing them would depend on the neighbours) for numeric
inputs, booleans for BOOL. A string is refused, never parsed; a fraction for an integer input too."""


def _convert(values: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """``values`` as an array of ``dtype``: TypeError for values of the wrong JSON type; an object
    array (null, ragged rows) is returned as it is for the caller to refuse."""
    with np.errstate(over="ignore"):  # a number past the dtype's range becomes inf: refused by the callers
        arr = np.asarray(values)
        allowed = _KINDS.get(dtype.kind)
        if arr.dtype == object or allowed is None:
            return arr if allowed is not None else np.asarray(values, dtype=dtype)
        if arr.dtype.kind not in allowed and arr.size:
            what = {"U": "strings", "S": "strings", "b": "booleans", "f": "fractional numbers", "i": "numbers",
                    "u": "numbers"}.get(
                arr.dtype.kind, str(arr.dtype))
            raise TypeError(f"{what} where {dtype} values belong")
        return arr.astype(dtype, copy=False)


def _shape_ok(shape: tuple[int, ...], row_shape: tuple[int, ...]) -> bool:
    return len(shape) == len(row_shape) and all(d == -1 or d == s for s, d in zip(shape, row_shape, strict=True))


def _gather(rows: list[dict[str, Any]], spec: _Input) -> np.ndarray | None:
    """The whole column in one conversion, or None when some event is wrong."""
    try:
        if spec.gathered:
            fields = spec.fields
            arr = _convert([[r[f] for f in fields] for r in rows], spec.dtype)
        else:
            name = spec.fields[0]
            arr = _convert([r[name] for r in rows], spec.dtype)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not rows:
        return np.zeros((0, *(max(d, 0) for d in spec.row_shape)), dtype=spec.dtype)
    if arr.dtype == object or not _shape_ok(arr.shape[1:], spec.row_shape):
        return None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():  # null converts to NaN, out of range to inf
        return None
    return arr


def _gather_checked(rows: list[dict[str, Any]], spec: _Input, bad: dict[int, str]) -> np.ndarray:
    """Event by event: the reason for each bad event goes to ``bad``; bad rows are zeros."""
    converted: list[np.ndarray | None] = []
    width: tuple[int, ...] | None = None
    for j, r in enumerate(rows):
        try:
            if spec.gathered:
                missing = [f for f in spec.fields if f not in r]
                if missing:
                    raise KeyError(missing[0])
                raw = [r[f] for f in spec.fields]
            else:
                raw = r[spec.fields[0]]
            value = _convert(raw, spec.dtype)
            if value.dtype == object and _has_null(raw):
                raise ValueError("null (or NaN) where a number belongs")
            if value.dtype == object or not _shape_ok(value.shape, spec.row_shape):
                raise ValueError(f"shape {list(value.shape)} is not {list(spec.row_shape)}")
            if value.dtype.kind == "f" and np.isnan(value).any():
                raise ValueError("null (or NaN) where a number belongs")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(f"a number out of range for {value.dtype}")
            if width is not None and value.shape != width:
                raise ValueError(f"shape {list(value.shape)} differs from the batch's {list(width)}")
            width = width or value.shape
            converted.append(value)
        except KeyError as e:
            bad.setdefault(j, f"input {spec.name!r}: missing field {e.args[0]!r}")
            converted.append(None)
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            field = spec.fields[0] if not spec.gathered else ",".join(spec.fields)
            bad.setdefault(j, f"input {spec.name!r} (field {field}): {str(e)[:200]}")
            converted.append(None)
    shape = width if width is not None else tuple(max(d, 0) for d in spec.row_shape)
    out = np.zeros((len(rows), *shape), dtype=spec.dtype)
    for j, conv in enumerate(converted):
        if conv is not None:
            out[j] = conv
    return out


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    return False
