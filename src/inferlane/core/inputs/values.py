"""The value rules: raw values of any lane → an array of the input's datatype, or the reason not.

Two entry points, one set of rules (the table in docs/inputs.md):

- :func:`from_json` takes JSON values as a parser gives them (numbers, true/false, strings, null,
  nested lists): V2 and V1 request data, stream events, JSONL lines, CSV cells read as JSON.
- :func:`from_typed` takes an array that already has a type: the V2 binary extension, Arrow
  columns from Parquet and CSV.

The rules, for every source:

- numeric inputs take numbers only: not true/false (even among numbers, where NumPy would make
  them 0 and 1), not strings (even "1.5"), not null;
- integer inputs take integers only (``1.0`` and ``1e3`` are floats), within the datatype's range;
- float inputs take any finite number: a number is read as a 64-bit float and rounded to the
  datatype (FP32, FP16) once; NaN and ±infinity are refused, and so is a number that becomes
  infinite in the datatype (1e39 for FP32); tiny numbers round to zero or a subnormal, -0.0 stays;
- BOOL inputs take true/false only; BYTES inputs take strings (UTF-8 encoded) or raw bytes.

Every refusal is a :class:`ValueProblem` whose text reads the same in every lane; callers add
where it happened with :func:`invalid` (``input 'features' (field f3): null where FP32 numbers
belong``).
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

import numpy as np

from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import InvalidInput

MAX_DEPTH = 32
"""Deepest nesting of JSON lists accepted for one value."""


class ValueProblem(Exception):
    """Why values cannot be an input's data, without saying which input (callers know that)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class InvalidValue(InvalidInput):
    """Input values refused by the rules; ``.input``, ``.field`` and ``.problem`` say which and why."""

    def __init__(self, input_name: str, problem: str, field: str | None = None) -> None:
        super().__init__(describe(input_name, problem, field))
        self.input = input_name
        self.field = field
        self.problem = problem


def describe(input_name: str, problem: str, field: str | None = None) -> str:
    """The one message format: ``input 'x': problem`` or ``input 'x' (field f): problem``."""
    where = f"input {input_name!r}" + (f" (field {field})" if field is not None and field != input_name else "")
    return f"{where}: {problem}"


def invalid(input_name: str, problem: ValueProblem | str, field: str | None = None) -> InvalidValue:
    return InvalidValue(input_name, problem.problem if isinstance(problem, ValueProblem) else problem, field)


def belong(found: str, datatype: str) -> str:
    what = {"BOOL": "BOOL values (true/false)", "BYTES": "BYTES values (strings)"}.get(datatype, f"{datatype} numbers")
    if datatype.startswith(("INT", "UINT")):
        what = f"{datatype} integers"
    return f"{found} where {what} belong"


def out_of_range(datatype: str) -> str:
    return f"a number out of range for {datatype}"


_FOUND_BY_KIND = {"b": "true/false", "i": "a number", "u": "a number", "f": "a number", "U": "a string",
                  "S": "a string", "O": "a string", "M": "a timestamp", "m": "a duration"}


def _found_object(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str | bytes):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


# -- typed values --------------------------------------------------------------------------------

Problems = list[tuple[np.ndarray, str]]
"""(element mask, problem) pairs, in the order the rules check them."""


_ROUNDS_TO_INFINITY = {"FP16": 65520.0, "FP32": 3.4028235677973366e38, "FP64": math.inf}
"""The smallest magnitude each float datatype rounds to infinity (its largest value plus half a step)."""


def check_typed(arr: np.ndarray, datatype: str) -> tuple[np.ndarray, Problems]:
    """``arr`` converted to ``datatype`` where its elements are acceptable (others become 0 or
    b""), and the problems found, each with the mask of the elements it applies to."""
    dt = to_numpy(datatype)
    kind = arr.dtype.kind
    limit = _ROUNDS_TO_INFINITY.get(datatype)
    # The common case in two reductions: every number finite and in range (NaN fails both
    # comparisons, like ±infinity and overflow); anything else goes the long way below.
    if limit is not None and kind in "iuf" and (
            not arr.size or (-limit < float(arr.min()) and float(arr.max()) < limit)):
        source = arr if kind == "f" else arr.astype(np.float64)  # every number is read as a 64-bit float
        return source.astype(dt, copy=False), []
    everything = np.ones(arr.shape, dtype=bool)
    if datatype == "BYTES":
        if kind not in "OUS":
            return np.full(arr.shape, b"", dtype=object), [(everything, belong(_FOUND_BY_KIND.get(kind, "a value"),
                                                                                datatype))]
        flat = arr.ravel()
        out = np.empty(flat.size, dtype=object)
        bad = np.zeros(flat.size, dtype=bool)
        first = ""
        for i, x in enumerate(flat):
            if isinstance(x, bytes):
                out[i] = x
            elif isinstance(x, str):
                out[i] = x.encode()
            else:
                out[i] = b""
                bad[i] = True
                first = first or _found_object(x)
        found = [(bad.reshape(arr.shape), belong(first, datatype))] if bad.any() else []
        return out.reshape(arr.shape), found
    if datatype == "BOOL":
        if kind == "b":
            return arr, []
        return np.zeros(arr.shape, dtype=bool), [(everything, belong(_FOUND_BY_KIND.get(kind, "a value"), datatype))]
    if kind not in "iuf":
        return np.zeros(arr.shape, dtype=dt), [(everything, belong(_FOUND_BY_KIND.get(kind, "a value"), datatype))]
    if dt.kind == "f":
        problems: Problems = []
        source = arr.astype(np.float64, copy=False)  # every number is read as a 64-bit float first
        if kind == "f":
            nonfinite = ~np.isfinite(source)
            if nonfinite.any():
                problems.append((nonfinite, belong("NaN or infinity", datatype)))
                source = np.where(nonfinite, 0.0, source)
        with np.errstate(over="ignore"):
            out = source.astype(dt)
        overflow = ~np.isfinite(out)
        if overflow.any():
            problems.append((overflow, out_of_range(datatype)))
            out[overflow] = 0
        return out, problems
    info = np.iinfo(dt)
    if kind == "f":
        # 2**bits (2**(bits-1) if signed) is the exclusive upper bound; unlike info.max, a float holds it exactly.
        top = 2.0 ** (info.bits - (dt.kind == "i"))
        nonfinite = ~np.isfinite(arr)
        with np.errstate(invalid="ignore"):
            beyond = ~nonfinite & ((arr < info.min) | (arr >= top))
        return np.zeros(arr.shape, dtype=dt), [(nonfinite, belong("NaN or infinity", datatype)),
                                               (beyond, out_of_range(datatype)),
                                               (~nonfinite & ~beyond, belong("a float", datatype))]
    if np.can_cast(arr.dtype, dt, "safe"):
        return arr.astype(dt, copy=False), []
    beyond = (arr < info.min) | (arr > info.max)  # NumPy 2 compares with out-of-bounds Python ints exactly
    if not beyond.any():
        return arr.astype(dt), []
    return np.where(beyond, 0, arr).astype(dt), [(beyond, out_of_range(datatype))]


def from_typed(arr: np.ndarray, datatype: str) -> np.ndarray:
    """Typed values (binary tensors, Arrow columns) as ``datatype``; ValueProblem on the first
    problem."""
    out, problems = check_typed(arr, datatype)
    for mask, problem in problems:
        if mask.any():
            raise ValueProblem(problem)
    return out


def rows_with_problems(problems: Problems, rows: int) -> dict[int, str]:
    """Row → its first problem, for arrays whose first dimension is rows."""
    found: dict[int, str] = {}
    for mask, problem in problems:
        per_row = mask.reshape(rows, -1).any(axis=1) if mask.ndim > 1 else mask
        for i in np.flatnonzero(per_row):
            found.setdefault(int(i), problem)
    return found


def from_buffer(raw: bytes | memoryview, datatype: str) -> np.ndarray:
    """Raw little-endian tensor bytes (the V2 binary extension) of ``datatype`` as a flat array.
    BOOL bytes must be 0 or 1; floats must be finite."""
    dt = to_numpy(datatype)
    if datatype == "BOOL":
        u8 = np.frombuffer(raw, dtype=np.uint8)
        if (u8 > 1).any():
            raise ValueProblem(belong("a byte other than 0 or 1", datatype))
        return u8.astype(np.bool_)
    arr = np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt, copy=False)
    return from_typed(arr, datatype) if dt.kind == "f" else arr


# -- JSON values ---------------------------------------------------------------------------------

def _has_bool(data: Any, ndim: int) -> bool:
    """Whether nested lists ``data`` (``ndim`` deep) hold true/false anywhere."""
    if ndim == 0:
        return type(data) is bool
    level = data
    for _ in range(ndim - 1):
        level = chain.from_iterable(level)
    return bool in set(map(type, level))


def _json_array(data: Any, dtype: Any = None) -> np.ndarray:
    try:
        return np.asarray(data, dtype=dtype)
    except ValueError as e:
        msg = str(e)
        if "maximum number of dimension" in msg or "depth" in msg:  # NumPy's own limit (64)
            raise ValueProblem(f"lists nested more than {MAX_DEPTH} levels deep") from None
        if "inhomogeneous" in msg or "sequence" in msg:
            raise ValueProblem("ragged nested lists (rows of different lengths)") from None
        raise ValueProblem(f"values that cannot be read: {msg[:200]}") from None
    except (TypeError, OverflowError, RecursionError) as e:
        raise ValueProblem(f"values that cannot be read: {str(e)[:200]}") from None


_FLOATS = frozenset({float})
_NUMBERS = frozenset({float, int})
_INTS = frozenset({int})


def _flat_numbers(data: list[Any], datatype: str) -> np.ndarray | None:
    """The common case without NumPy's type inference: a flat list of plain JSON numbers (no
    true/false, strings or nulls: ``type(True)`` is not ``int``), range-checked with the builtin
    min and max. None when the list is anything else (the general path decides)."""
    kinds = set(map(type, data))
    dt = to_numpy(datatype)
    if dt.kind == "f":
        if not kinds <= _NUMBERS:
            return None
        limit = _ROUNDS_TO_INFINITY[datatype]
        if not (-limit < min(data) and max(data) < limit):
            return None
        if kinds <= _FLOATS:  # a float is a 64-bit float: rounded to the datatype once
            return np.array(data, dtype=dt)
        return np.array(data, dtype=np.float64).astype(dt)  # every number is read as a 64-bit float
    if dt.kind in "iu" and kinds <= _INTS:
        info = np.iinfo(dt)
        if info.min <= min(data) and max(data) <= info.max:
            return np.array(data, dtype=dt)
    return None


def from_json(data: Any, datatype: str) -> np.ndarray:
    """JSON values (a scalar or nested lists) as an array of ``datatype``; ValueProblem if any
    value breaks the rules. The array keeps the nesting as its shape."""
    if type(data) is list and 0 < len(data) <= 4096 and datatype != "BYTES" and datatype != "BOOL":
        fast = _flat_numbers(data, datatype)
        if fast is not None:
            return fast
    if datatype == "BYTES":
        arr = _json_array(data, object)
        if arr.ndim > MAX_DEPTH:
            raise ValueProblem(f"lists nested more than {MAX_DEPTH} levels deep")
        if arr.dtype == object and any(isinstance(x, list) for x in arr.ravel()):
            raise ValueProblem("ragged nested lists (rows of different lengths)")
        return from_typed(arr, datatype)
    arr = _json_array(data)
    if arr.ndim > MAX_DEPTH:
        raise ValueProblem(f"lists nested more than {MAX_DEPTH} levels deep")
    kind = arr.dtype.kind
    if kind == "O":
        for x in arr.ravel():
            if not isinstance(x, int | float) or isinstance(x, bool):
                raise ValueProblem(belong(_found_object(x), datatype))
        if to_numpy(datatype).kind != "f":
            raise ValueProblem(out_of_range(datatype))  # Python integers past 64 bits
        arr = arr.astype(np.float64)  # read as 64-bit floats, like every number
        kind = "f"
    if kind in "iuf" and arr.size and datatype != "BOOL" and (
            arr.size <= 256 or ((arr == 0) | (arr == 1)).any()) and _has_bool(data, arr.ndim):
        # NumPy folds true/false among numbers into 1 and 0: the rule must not depend on neighbours.
        raise ValueProblem(belong("true/false", datatype))
    return from_typed(arr, datatype)
