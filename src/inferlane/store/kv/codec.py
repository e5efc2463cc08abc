"""The stored value of one key: a model's outputs for one row, with the model, its version and when
they were computed. Raw little-endian bytes with their dtype and row shape, so a value read back is
bit for bit what the model returned (no float text round trip).

    values = encode_rows("fraud", "3", time.time(), {"label": labels, "probabilities": probs})  # one per row
    stored = decode(values[0])        # Stored(model="fraud", version="3", computed_at=..., arrays={...})

Layout of a value (integers little-endian)::

    17 ASCII digits   computed_at in microseconds since the epoch, zero-padded. First, so a store
                      compares two values' ages without decoding them (the Redis script, SQLite)
    b"KV1"            format and version
    u16 + UTF-8       model name
    u16 + UTF-8       model version
    u8                number of arrays, then per array:
      u16 + UTF-8       name
      u8                datatype (DATATYPE_CODES)
      u8 + u32 each     row shape
    payloads          per array in the same order: the row's elements, row-major; a BYTES element
                      is a u32 length (high bit set: the element was a str, UTF-8) and its bytes

Everything before the payloads is the same for every row of a call, so ``encode_rows`` builds it
once and a numeric row costs one slice of one buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferlane.core.errors import InvalidInput

MAX_KEY_BYTES = 1024
"""Longest key, in UTF-8 bytes."""

TIME_DIGITS = 17
"""Width of computed_at (microseconds) at the start of every value."""

MAGIC = b"KV1"

DATATYPE_CODES: tuple[str, ...] = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                                   "FP16", "FP32", "FP64", "BYTES")
"""A stored array names its datatype by position here: append, never reorder."""

_NUMPY: tuple[np.dtype[Any] | None, ...] = tuple(
    None if d == "BYTES" else np.dtype({"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
                                        "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
                                        "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}[d])
    for d in DATATYPE_CODES)
_BYTES = DATATYPE_CODES.index("BYTES")
_STR_FLAG = 0x8000_0000
_MAX_NDIM = 32
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Stored:
    """One decoded value."""

    model: str
    version: str
    computed_at: float
    """Epoch seconds (microsecond resolution)."""
    arrays: dict[str, np.ndarray]
    """Output name → ONE row: shape = the output's row shape, dtype as written (BYTES: an object
    array of ``str`` and ``bytes`` elements, as they were written)."""


def check_key(key: object, what: str) -> str:
    """``key`` when it is a str of 1 to MAX_KEY_BYTES UTF-8 bytes without NUL; InvalidInput naming
    ``what`` otherwise."""
    if not isinstance(key, str):
        raise InvalidInput(f"{what}: a key is a string, not {type(key).__name__}")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise InvalidInput(f"{what}: the key is not valid Unicode (a lone surrogate)") from None
    if not 0 < size <= MAX_KEY_BYTES:
        raise InvalidInput(f"{what}: a key is 1 to {MAX_KEY_BYTES} UTF-8 bytes, not {size}")
    if "\x00" in key:
        raise InvalidInput(f"{what}: a key may not contain NUL")
    return key


def invalid_keys(keys: Sequence[object]) -> list[tuple[int, str]]:
    """(position, reason) of each key :func:`check_key` refuses. A bulk write's hot path: the usual
    ASCII keys are checked all at once, in C loops."""
    try:
        joined = "".join(keys)  # type: ignore[arg-type]  # a non-str raises TypeError: the slow path
    except TypeError:
        joined = None
    if (joined is not None and joined.isascii() and "\x00" not in joined
            and (not keys or (min(map(len, keys)) > 0 and max(map(len, keys)) <= MAX_KEY_BYTES))):  # type: ignore[arg-type]
        return []
    bad = []
    for i, k in enumerate(keys):
        try:
            check_key(k, "key")
        except InvalidInput as e:
            bad.append((i, e.message))
    return bad


def check_keys(keys: Sequence[object], what: str) -> None:
    """:func:`check_key` for every key, fast (see :func:`invalid_keys`)."""
    bad = invalid_keys(keys)
    if bad:
        check_key(keys[bad[0][0]], what)


def time_digits(computed_at: float) -> bytes:
    """computed_at (epoch seconds) as the 17-digit microsecond prefix of a value."""
    us = round(computed_at * 1_000_000)
    if not 0 <= us < 10 ** TIME_DIGITS:
        raise ValueError(f"computed_at {computed_at!r} is not a time after 1970")
    return b"%017d" % us


def computed_at_us(raw: bytes) -> int:
    """When the value was computed, in microseconds since the epoch; ValueError when ``raw`` does
    not start like a value."""
    head = bytes(raw[:TIME_DIGITS])
    if len(head) != TIME_DIGITS or not head.isdigit():
        raise ValueError("not a stored value: it does not start with 17 digits of computed_at")
    return int(head)


def _text(value: str, what: str) -> bytes:
    raw = value.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"{what} is longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def _code(arr: np.ndarray, name: str) -> int:
    kind = arr.dtype.kind
    if kind in "USO":
        return _BYTES
    for i, dt in enumerate(_NUMPY):
        if dt is not None and dt.kind == kind and dt.itemsize == arr.dtype.itemsize:
            return i
    raise ValueError(f"output {name!r}: dtype {arr.dtype} cannot be stored")


def _bytes_element(v: object, name: str) -> bytes:
    if isinstance(v, str):
        raw = v.encode()
        flag = _STR_FLAG
    elif isinstance(v, bytes | bytearray | memoryview):
        raw = bytes(v)
        flag = 0
    else:
        raise ValueError(f"output {name!r}: a BYTES element is a str or bytes, not {type(v).__name__}")
    if len(raw) >= _STR_FLAG:
        raise ValueError(f"output {name!r}: an element is larger than 2 GiB")
    return _U32.pack(len(raw) | flag) + raw


def encode_rows(model: str, version: str, computed_at: float, arrays: Mapping[str, np.ndarray]) -> list[bytes]:
    """One value per row of ``arrays`` (name → [N, ...]); row i holds ``arrays[name][i]`` bit for bit."""
    if len(arrays) > 255:
        raise ValueError(f"{len(arrays)} outputs: at most 255 can be stored")
    head = [time_digits(computed_at), MAGIC, _text(model, "the model name"), _text(version, "the model version"),
            bytes([len(arrays)])]
    rows: int | None = None
    columns: list[np.ndarray] = []
    codes: list[int] = []
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.ndim > _MAX_NDIM + 1:
            raise ValueError(f"output {name!r} has shape {arr.shape}: 1 to {_MAX_NDIM + 1} dimensions, rows first")
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            raise ValueError(f"output {name!r} has {arr.shape[0]} rows, another has {rows}")
        code = _code(arr, name)
        if any(d > 0xFFFF_FFFF for d in arr.shape[1:]):
            raise ValueError(f"output {name!r}: a dimension over 2**32-1")
        head += [_text(name, "an output name"), bytes([code, arr.ndim - 1]),
                 b"".join(_U32.pack(d) for d in arr.shape[1:])]
        columns.append(arr)
        codes.append(code)
    prefix = b"".join(head)
    if not rows:
        return []
    if _BYTES in codes:
        return _encode_rows_with_bytes(prefix, list(arrays), columns, codes, rows)
    # Every row is the prefix then fixed-width bytes: one matrix, one buffer, one slice per row.
    widths = [int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize for a in columns]
    width = len(prefix) + sum(widths)
    mat = np.empty((rows, width), np.uint8)
    mat[:, :len(prefix)] = np.frombuffer(prefix, np.uint8)
    at = len(prefix)
    for arr, code, w in zip(columns, codes, widths, strict=True):
        dt = _NUMPY[code]
        assert dt is not None
        mat[:, at:at + w] = np.ascontiguousarray(arr, dtype=dt).reshape(rows, -1).view(np.uint8)
        at += w
    buf = mat.tobytes()
    return [buf[i:i + width] for i in range(0, rows * width, width)]


def _encode_rows_with_bytes(prefix: bytes, names: list[str], columns: list[np.ndarray], codes: list[int],
                            rows: int) -> list[bytes]:
    """The general path: a row at a time (outputs of strings or bytes have variable sizes)."""
    per_array: list[list[bytes]] = []
    for name, arr, code in zip(names, columns, codes, strict=True):
        flat = arr.reshape(rows, -1)
        if code == _BYTES:
            per_array.append([b"".join(_bytes_element(v, name) for v in row) for row in flat])
        else:
            dt = _NUMPY[code]
            assert dt is not None
            raw = np.ascontiguousarray(flat, dtype=dt).view(np.uint8)
            per_array.append([r.tobytes() for r in raw])
    return [b"".join((prefix, *parts)) for parts in zip(*per_array, strict=True)]


class _Reader:
    """Bounds-checked reads over a value (every read past the end is a ValueError)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = memoryview(raw).cast("B")
        self.at = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.at + n > len(self.raw):
            raise ValueError(f"truncated value: {n} bytes wanted at offset {self.at} of {len(self.raw)}")
        out = self.raw[self.at:self.at + n]
        self.at += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def text(self) -> str:
        return bytes(self.take(self.u16())).decode()


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a numeric value's header says, once parsed: the values written by one ``encode_rows`` call
    (a batch shard, a stream micro-batch) share it, so a server reading them parses it once."""

    header: bytes
    """The bytes after the time digits up to the first payload."""
    model: str
    version: str
    arrays: tuple[tuple[str, np.dtype[Any], tuple[int, ...], int, int], ...]
    """(name, dtype, row shape, payload offset from the value's start, payload bytes) per array."""
    size: int
    """The whole value's length."""


_LAYOUTS: dict[bytes, _Layout] = {}
_LAYOUTS_MAX = 64
"""Headers remembered (a store holds values of a few models and versions at a time)."""


def decode(raw: bytes) -> Stored:
    """The value ``raw``; ValueError (and nothing else) when it is not one."""
    if type(raw) is bytes:
        for layout in _LAYOUTS.values():  # a handful of entries: cheaper than parsing a header
            if len(raw) == layout.size and raw.startswith(layout.header, TIME_DIGITS):
                us = computed_at_us(raw)
                return Stored(layout.model, layout.version, us / 1_000_000,
                              {name: np.frombuffer(raw, dt, count=n // dt.itemsize, offset=at).reshape(shape).copy()
                               for name, dt, shape, at, n in layout.arrays})
    try:
        return _decode(raw)
    except ValueError:
        raise
    except Exception as e:  # struct, numpy and type errors of hostile bytes: all "not a value"
        raise ValueError(f"not a stored value: {type(e).__name__}: {e}") from e


def _remember(raw: bytes, header_end: int, stored: Stored, specs: list[tuple[str, int, tuple[int, ...]]]) -> None:
    """Keep the layout of a numeric value whose header ends at ``header_end`` (a BOOL array is left
    out: its payload needs a check per value)."""
    arrays = []
    at = header_end
    for name, code, shape in specs:
        dt = _NUMPY[code]
        if dt is None or dt.kind == "b":
            return
        n = stored.arrays[name].size * dt.itemsize
        arrays.append((name, dt, shape, at, n))
        at += n
    if len(_LAYOUTS) >= _LAYOUTS_MAX:
        _LAYOUTS.pop(next(iter(_LAYOUTS)))
    header = bytes(raw[TIME_DIGITS:header_end])
    _LAYOUTS[header] = _Layout(header, stored.model, stored.version, tuple(arrays), len(raw))


def _decode(raw: bytes) -> Stored:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise ValueError(f"a stored value is bytes, not {type(raw).__name__}")
    us = computed_at_us(raw)
    r = _Reader(raw)
    r.take(TIME_DIGITS)
    if bytes(r.take(len(MAGIC))) != MAGIC:
        raise ValueError("not a stored value of this format (no KV1 marker)")
    model, version = r.text(), r.text()
    specs: list[tuple[str, int, tuple[int, ...]]] = []
    for _ in range(r.u8()):
        name = r.text()
        code, ndim = r.u8(), r.u8()
        if code >= len(DATATYPE_CODES) or ndim > _MAX_NDIM:
            raise ValueError(f"array {name!r}: datatype code {code} or {ndim} dimensions out of range")
        specs.append((name, code, tuple(r.u32() for _ in range(ndim))))
    header_end = r.at
    arrays: dict[str, np.ndarray] = {}
    for name, code, shape in specs:
        count = 1
        for d in shape:
            count *= d
        left = len(r.raw) - r.at
        dt = _NUMPY[code]
        if dt is None:
            if count * 4 > left:  # checked before the loop: a hostile count allocates nothing
                raise ValueError(f"array {name!r}: {count} elements do not fit in {left} bytes")
            out = np.empty(count, dtype=object)
            for i in range(count):
                n = r.u32()
                data = bytes(r.take(n & ~_STR_FLAG))
                out[i] = data.decode() if n & _STR_FLAG else data
            arrays[name] = out.reshape(shape)
        else:
            if count * dt.itemsize > left:
                raise ValueError(f"array {name!r}: {count} elements do not fit in {left} bytes")
            payload = r.take(count * dt.itemsize)
            if dt.kind == "b" and bytes(payload).translate(None, b"\x00\x01"):
                raise ValueError(f"array {name!r}: a BOOL element is neither 0 nor 1")
            arrays[name] = np.frombuffer(payload, dtype=dt).reshape(shape).copy()
    if r.at != len(r.raw):
        raise ValueError(f"{len(r.raw) - r.at} bytes after the last array")
    stored = Stored(model, version, us / 1_000_000, arrays)
    if type(raw) is bytes:
        _remember(raw, header_end, stored, specs)
    return stored
