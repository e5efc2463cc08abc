"""Row sources (JSON records, table columns): which fields feed which input, keys, the result.

A record or a table row holds named fields. By default an input is fed by the field of the same
name (a number for a ``[-1]`` input, a list, nested for more dimensions, otherwise). ``columns``
maps an input onto other fields instead, e.g. ``{"features": ["amount", "age", "hour"]}`` builds
each row of a ``[-1, 3]`` input from three scalar fields. Batch files may also use globs
(``f_*``) and, for a model with one 2-D input, default to every field that is not a key.

A key is a string or an integer: null, a float, true/false, a list or an object is refused.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferlane.core.errors import ConfigError
from inferlane.core.spec import ModelConfig, TensorSpec

GLOB_CHARS = "*?["


def is_glob(name: str) -> bool:
    return any(c in name for c in GLOB_CHARS)


@dataclass(slots=True)
class Decoded:
    """What a row source gives: model inputs for the rows that passed, and a reason for each other."""

    index: list[int]
    """Positions (in what was decoded) of the rows that became model rows, in order."""
    keys: dict[str, Any]
    """Key field → the keys of those rows (a list for records, an Arrow array for columns)."""
    inputs: dict[str, np.ndarray]
    """Model inputs, one row per entry of ``index``."""
    rejects: list[tuple[int, str]]
    """(position, reason) of every row that cannot be scored, by position."""

    @property
    def rows(self) -> int:
        return len(self.index)

    def refuse(self, refused: list[tuple[int, str]]) -> Decoded:
        """The same rows less ``refused`` ((model row, reason)), which become rejects by position."""
        out = {j for j, _ in refused}
        keep = [j for j in range(self.rows) if j not in out]
        take = np.asarray(keep, dtype=np.int64)
        keys = {k: [v[j] for j in keep] if isinstance(v, list) else v.take(take) for k, v in self.keys.items()}
        rejects = sorted(self.rejects + [(self.index[j], reason) for j, reason in refused])
        return Decoded([self.index[j] for j in keep], keys, {k: v[take] for k, v in self.inputs.items()}, rejects)


def key_problem(field: str) -> str:
    return f"key field {field!r} is missing or not a string/integer"


@dataclass(frozen=True, slots=True)
class InputFields:
    """The fields feeding one input, resolved for a set of field names."""

    spec: TensorSpec
    fields: tuple[str, ...]
    row_shape: tuple[int, ...]
    """The input's row shape, with a variable width fixed by the number of gathered fields."""
    gathered: bool
    """True when each row is built from one scalar field per element (``fields`` in order)."""

    @property
    def name(self) -> str:
        return self.spec.name

    def shows(self) -> str:
        """The fields, as a message names them."""
        return ",".join(self.fields)


class FieldMap:
    """Resolves which fields feed each input.

        fm = FieldMap.create(config, key=["id"], columns={"features": ["f_*"]}, globs=True)
        fm.resolve(["id", "f_0", "f_1", ...])     # {"features": InputFields(...)}
    """

    def __init__(self, config: ModelConfig, key: list[str], columns: dict[str, list[str]],
                 every_other_field: bool) -> None:
        self.config = config
        self.key = key
        self.columns = columns
        self.every_other_field = every_other_field
        self._cache: dict[tuple[str, ...], dict[str, InputFields]] = {}

    @classmethod
    def create(cls, config: ModelConfig, key: list[str], columns: dict[str, list[str]] | None = None, *,
               globs: bool, every_other_field: bool, key_hint: str) -> FieldMap:
        """``globs``: allow ``f_*`` patterns (table files); ``every_other_field``: a model with one
        2-D input takes every non-key field by default. ConfigError names the flag at fault."""
        if not key or not all(key):
            raise ConfigError(f"--key: {key_hint}")
        columns = columns or {}
        names = [s.name for s in config.inputs]
        for name, wanted in columns.items():
            if name not in names:
                raise ConfigError(f"--columns {name}=...: the model has no input {name!r} (inputs: {names})")
            if not wanted:
                raise ConfigError(f"--columns {name}=: name at least one field")
            if not globs and any(is_glob(f) for f in wanted):
                raise ConfigError(f"--columns {name}=...: list the event fields; globs only work on batch files")
            if not any(is_glob(f) for f in wanted):
                _fields_fit(config.inputs[names.index(name)], tuple(wanted))
        return cls(config, key, columns, every_other_field)

    @property
    def static(self) -> bool:
        """True when the fields do not depend on the names a source has."""
        return not self.every_other_field and not any(is_glob(f) for fs in self.columns.values() for f in fs)

    def resolve(self, names: list[str] | tuple[str, ...] = ()) -> dict[str, InputFields]:
        """Input name → its fields, for a source whose fields are ``names`` (in their order)."""
        cache_key = tuple(names) if not self.static else ()
        found = self._cache.get(cache_key)
        if found is not None:
            return found
        result: dict[str, InputFields] = {}
        others = [n for n in names if n not in self.key]
        for spec in self.config.inputs:
            wanted = self.columns.get(spec.name)
            if wanted is not None:
                fields: list[str] = []
                for item in wanted:
                    fields += [n for n in names if fnmatch.fnmatchcase(n, item)] if is_glob(item) else [item]
            elif spec.name in names or len(spec.shape) == 1 or not self.every_other_field:
                fields = [spec.name]
            elif len(self.config.inputs) == 1 and len(spec.shape) == 2:
                fields = others  # every non-key field, in the source's order
            else:
                raise ConfigError(f"input {spec.name!r}: say which fields feed it with "
                                  f"--columns {spec.name}=col1,col2,... (or a glob like f_*)")
            result[spec.name] = _fields_fit(spec, tuple(fields))
        self._cache[cache_key] = result
        return result


def _fields_fit(spec: TensorSpec, fields: tuple[str, ...]) -> InputFields:
    """InputFields for ``fields``, or ConfigError when they cannot fill the input's rows."""
    row_shape = spec.row_shape
    gathered = len(fields) != 1 or (len(row_shape) == 1 and fields[0] != spec.name)
    if not gathered:
        return InputFields(spec, fields, row_shape, False)
    if not fields or len(row_shape) != 1 or row_shape[0] not in (-1, len(fields)):
        raise ConfigError(f"--columns {spec.name}=...: {len(fields)} field(s) cannot fill rows of shape "
                          f"{list(row_shape)}" + (" (no field matched)" if not fields else ""))
    return InputFields(spec, fields, (len(fields),), True)
