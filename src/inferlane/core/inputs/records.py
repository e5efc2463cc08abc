"""JSON records → model inputs, one verdict per record: stream events and JSONL lines alike.

    decoder = RecordDecoder.create(model.config, key=["id"], columns={"features": ["amount", "age"]})
    decoded = decoder.decode([b'{"id": 1, "amount": 9.5, "age": 41}', b'not json'])
    decoded.index          # [0]: records that became rows, in order
    decoded.keys["id"]     # [1]
    decoded.rejects        # [(1, "not JSON: ...")]

Each record is parsed once with orjson; each input is converted with one call of the value rules
(values.py) over the whole batch. Only when that fails are records looked at one by one to find
the bad ones, so a poison record costs its batch a second pass, never the stream. A record larger
than the model's ``limits.max_request_bytes`` is refused unparsed, as an online request would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from inferlane.core.datatypes import to_numpy
from inferlane.core.inputs.rows import Decoded, FieldMap, InputFields, key_problem
from inferlane.core.inputs.values import ValueProblem, belong, describe, from_json
from inferlane.core.spec import ModelConfig

_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_MISSING = object()


def _shape_ok(shape: tuple[int, ...], row_shape: tuple[int, ...]) -> bool:
    return len(shape) == len(row_shape) and all(d == -1 or d == s for s, d in zip(shape, row_shape, strict=True))


def shape_problem(shape: tuple[int, ...], row_shape: tuple[int, ...]) -> str:
    return f"shape {list(shape)} does not match {list(row_shape)}"


class RecordDecoder:
    def __init__(self, config: ModelConfig, fields: FieldMap, what: str) -> None:
        self.config = config
        self.fields = fields
        self.what = what
        self.max_bytes = config.limits.max_request_bytes
        self.max_elements = config.limits.max_elements_per_input

    @classmethod
    def create(cls, config: ModelConfig, key: str | list[str], columns: dict[str, list[str]] | None = None, *,
               what: str = "event", globs: bool = False, every_other_field: bool = False,
               key_hint: str = "name the event field that identifies an event (its output key)") -> RecordDecoder:
        """``what`` names a record in messages ("event", "line"); ``globs`` and
        ``every_other_field`` as in FieldMap (batch files allow both)."""
        keys = [key] if isinstance(key, str) else list(key)
        fm = FieldMap.create(config, keys, columns, globs=globs, every_other_field=every_other_field,
                             key_hint=key_hint)
        return cls(config, fm, what)

    @property
    def key(self) -> list[str]:
        return self.fields.key

    def decode(self, values: Sequence[bytes | None]) -> Decoded:
        rejects: list[tuple[int, str]] = []
        records: list[dict[str, Any]] = []
        index: list[int] = []
        keys: list[list[Any]] = [[] for _ in self.key]
        what, limit, loads = self.what, self.max_bytes, orjson.loads
        for i, raw in enumerate(values):
            if raw is None:
                rejects.append((i, f"empty {what} (no value)"))
                continue
            if len(raw) > limit:
                rejects.append((i, f"{what} of {len(raw)} bytes is over the {limit}-byte limit "
                                   "(limits.max_request_bytes)"))
                continue
            try:
                record = loads(raw)
            except orjson.JSONDecodeError as e:
                rejects.append((i, f"not JSON: {e}"))
                continue
            if type(record) is not dict:
                rejects.append((i, f"{what} is a JSON {_JSON_TYPES.get(type(record), 'value')}, not an object"))
                continue
            found = [record.get(k) for k in self.key]
            bad_key = next((k for k, v in zip(self.key, found, strict=True)
                            if type(v) is not int and type(v) is not str), None)
            if bad_key is not None:
                rejects.append((i, key_problem(bad_key)))
                continue
            records.append(record)
            index.append(i)
            for column, v in zip(keys, found, strict=True):
                column.append(v)
        if self.fields.static:
            resolved = self.fields.resolve()
        else:  # batch files: the fields of the whole chunk, in order of first appearance
            resolved = self.fields.resolve(list(dict.fromkeys(k for r in records for k in r)))

        inputs: dict[str, np.ndarray] = {}
        bad: dict[int, str] = {}
        for spec_fields in resolved.values():
            fast = self._gather(records, spec_fields)
            inputs[spec_fields.name] = fast if fast is not None else self._gather_checked(records, spec_fields, bad)
        if bad:
            keep = [j for j in range(len(records)) if j not in bad]
            rejects.extend((index[j], reason) for j, reason in bad.items())
            rejects.sort()
            sel = np.asarray(keep, dtype=np.intp)
            inputs = {name: arr[sel] for name, arr in inputs.items()}
            index = [index[j] for j in keep]
            keys = [[column[j] for j in keep] for column in keys]
        return Decoded(index, dict(zip(self.key, keys, strict=True)), inputs, rejects)

    # -- one input over the whole batch, then record by record when that fails ------------------

    def _empty(self, f: InputFields) -> np.ndarray:
        return np.zeros((0, *(max(d, 0) for d in f.row_shape)), dtype=to_numpy(f.spec.datatype))

    def _gather(self, records: list[dict[str, Any]], f: InputFields) -> np.ndarray | None:
        """The whole column in one conversion, or None when some record is wrong."""
        if not records:
            return self._empty(f)
        try:
            if f.gathered:
                fields = f.fields
                values: Any = [[r[x] for x in fields] for r in records]
            else:
                name = f.fields[0]
                values = [r[name] for r in records]
            arr = from_json(values, f.spec.datatype)
        except (KeyError, ValueProblem):
            return None
        if not _shape_ok(arr.shape[1:], f.row_shape) or (arr.ndim > 1 and arr[0].size > self.max_elements):
            return None
        return arr

    def _one(self, record: dict[str, Any], f: InputFields) -> np.ndarray:
        """One record's row of input ``f``; ValueProblem (already described) when it is wrong."""
        datatype = f.spec.datatype
        if f.gathered:
            row = []
            for x in f.fields:
                v = record.get(x, _MISSING)
                if v is _MISSING:
                    raise ValueProblem(describe(f.name, f"missing field {x!r}"))
                if isinstance(v, list):
                    raise ValueProblem(describe(f.name, belong("a list", datatype), x))
                try:
                    row.append(from_json(v, datatype))
                except ValueProblem as e:
                    raise ValueProblem(describe(f.name, e.problem, x)) from None
            return np.stack(row)
        x = f.fields[0]
        v = record.get(x, _MISSING)
        if v is _MISSING:
            raise ValueProblem(describe(f.name, f"missing field {x!r}"))
        try:
            value = from_json(v, datatype)
        except ValueProblem as e:
            raise ValueProblem(describe(f.name, e.problem, x)) from None
        if not _shape_ok(value.shape, f.row_shape):
            raise ValueProblem(describe(f.name, shape_problem(value.shape, f.row_shape), x))
        if value.size > self.max_elements:
            raise ValueProblem(describe(f.name, f"{value.size} elements; the limit is {self.max_elements} "
                                                "(limits.max_elements_per_input)", x))
        return value

    def _gather_checked(self, records: list[dict[str, Any]], f: InputFields, bad: dict[int, str]) -> np.ndarray:
        """Record by record: the reason for each bad record goes to ``bad``; bad rows are zeros."""
        converted: list[np.ndarray | None] = []
        width: tuple[int, ...] | None = None
        for j, r in enumerate(records):
            try:
                value = self._one(r, f)
                if width is not None and value.shape != width:
                    raise ValueProblem(describe(f.name, f"shape {list(value.shape)} differs from the batch's "
                                                        f"{list(width)}", f.fields[0]))
            except ValueProblem as e:
                bad.setdefault(j, e.problem)
                converted.append(None)
                continue
            width = width or value.shape
            converted.append(value)
        empty = self._empty(f)
        out = np.zeros((len(records), *(width if width is not None else empty.shape[1:])), dtype=empty.dtype)
        for j, conv in enumerate(converted):
            if conv is not None:
                out[j] = conv
        return out
