"""The stored value (store/kv/codec.py): bit for bit for every datatype, and ValueError, never
anything else, for bytes that are not a value."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest

from inferlane.core.errors import InvalidInput
from inferlane.store.kv import MAX_KEY_BYTES, check_key, computed_at_us, decode, encode_rows

NOW = 1_764_000_000.123456


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "uint64",
                                   "bool"])
@pytest.mark.parametrize("row", [(), (2,), (3, 4)])
def test_numeric_rows_round_trip_bit_for_bit(dtype: str, row: tuple[int, ...]) -> None:
    rng = np.random.default_rng(7)
    n = 50
    if dtype == "bool":
        arr = rng.random((n, *row)) > 0.5
    elif dtype.startswith("float"):
        arr = rng.standard_normal((n, *row)).astype(dtype)
        flat = arr.reshape(-1)
        if flat.size >= 4:  # values a text round trip would lose: NaN payloads, -0.0, inf, subnormals
            flat[:4] = np.array([np.nan, -0.0, np.inf, np.finfo(dtype).smallest_subnormal], dtype=dtype)
            flat.view(np.dtype(f"u{arr.itemsize}"))[0] |= 1  # a NaN with a payload bit set
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, size=(n, *row), dtype=dtype, endpoint=True)
    values = encode_rows("fraud", "3", NOW, {"y": arr, "label": np.arange(n, dtype=np.int64)})
    assert len(values) == n
    for i, raw in enumerate(values):
        got = decode(raw)
        assert (got.model, got.version) == ("fraud", "3")
        assert got.computed_at == NOW
        assert computed_at_us(raw) == 1_764_000_000_123_456
        assert got.arrays["y"].dtype == arr.dtype and got.arrays["y"].shape == row
        assert bits(got.arrays["y"]) == bits(arr[i])
        assert got.arrays["label"].shape == () and int(got.arrays["label"]) == i
        assert got.arrays["y"].flags.writeable


def test_big_endian_and_strided_inputs_are_stored_by_value() -> None:
    arr = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2]
    got = [decode(v).arrays["x"] for v in encode_rows("m", "1", NOW, {"x": arr})]
    assert [g.tolist() for g in got] == arr.tolist()
    assert all(g.dtype == np.float32 for g in got)


def test_bytes_and_strings_keep_their_type() -> None:
    arr = np.array([["a", "é€"], [b"\x00\xff", b""], ["", "x" * 1000]], dtype=object)
    nums = np.array([[1.5], [2.5], [3.5]], dtype=np.float32)
    values = encode_rows("m", "1", NOW, {"s": arr, "n": nums})
    for i, raw in enumerate(values):
        got = decode(raw)
        assert got.arrays["s"].dtype == object and got.arrays["s"].tolist() == arr[i].tolist()
        assert [type(v) for v in got.arrays["s"]] == [type(v) for v in arr[i]]
        assert bits(got.arrays["n"]) == bits(nums[i])
    unicode = np.array(["ab", "çd"])
    assert [decode(v).arrays["u"].tolist() for v in encode_rows("m", "1", NOW, {"u": unicode})] == ["ab", "çd"]


def test_encode_refuses_what_it_cannot_store() -> None:
    with pytest.raises(ValueError, match="rows"):
        encode_rows("m", "1", NOW, {"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="cannot be stored"):
        encode_rows("m", "1", NOW, {"c": np.zeros(3, dtype=np.complex64)})
    with pytest.raises(ValueError, match="str or bytes"):
        encode_rows("m", "1", NOW, {"o": np.array([1, None], dtype=object)})
    with pytest.raises(ValueError, match="after 1970"):
        encode_rows("m", "1", -1.0, {"a": np.zeros(3)})
    assert encode_rows("m", "1", NOW, {"a": np.zeros((0, 2))}) == []


def test_garbage_truncated_and_hostile_bytes_raise_value_error_only() -> None:
    good = encode_rows("fraud", "1", NOW, {"p": np.zeros((1, 2), np.float32), "s": np.array(["xy"], object)})[0]
    cases: list[object] = [b"", b"x", b"0" * 17, good[:17] + b"KV2" + good[20:], "text", None, 12,
                           good + b"\x00"]
    cases += [good[:n] for n in range(len(good))]  # every truncation
    # A huge element count: refused before anything is allocated.
    huge = (b"%017d" % 1 + b"KV1" + b"\x00\x00" + b"\x00\x00" + b"\x01" + b"\x01\x00a" + bytes([10, 4])
            + b"\xff\xff\xff\xff" * 4)
    cases += [huge, huge[:-16] + bytes([12, 4]) + b"\xff\xff\xff\xff" * 4]
    cases.append(good[:17] + b"KV1" + b"\x00\x00" * 2 + b"\x01\x01\x00b" + bytes([0, 0]) + b"\x02")  # BOOL 2
    rng = random.Random(3)
    for _ in range(3000):  # flipped bytes and random tails
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cases.append(bytes(b) if rng.random() < 0.8 else bytes(b[:rng.randrange(len(b))]) + rng.randbytes(9))
    for raw in cases:
        with contextlib.suppress(ValueError):
            decode(raw)  # type: ignore[arg-type]
    for raw in cases[:8]:
        with pytest.raises(ValueError):
            decode(raw)  # type: ignore[arg-type]


def test_check_key() -> None:
    for ok in ["a", "u-123", "*", "a:b", "with space", "ключ", "🔑" * 256, "x" * MAX_KEY_BYTES]:
        assert check_key(ok, "key") == ok
    for bad in ["", "x" * (MAX_KEY_BYTES + 1), "é" * 513, "a\x00b", "\ud800", 12, None, b"k"]:
        with pytest.raises(InvalidInput, match="key"):
            check_key(bad, "key")


def test_values_sharing_a_header_decode_alike_through_the_remembered_layout() -> None:
    """The second value of one encode_rows call takes the remembered-header path: same arrays, its own time."""
    probs = np.random.default_rng(3).random((3, 2)).astype(np.float32)
    labels = np.array([0, 1, 7], np.int64)
    first, second, third = encode_rows("m-layout", "4", 1_700_000_000.25, {"label": labels, "probabilities": probs})
    assert decode(first).arrays["label"].tobytes() == labels[0].tobytes()  # parsed, remembered
    later = encode_rows("m-layout", "4", 1_700_000_999.5, {"label": labels, "probabilities": probs})[1]
    for raw, row, at in ((second, 1, 1_700_000_000.25), (third, 2, 1_700_000_000.25), (later, 1, 1_700_000_999.5)):
        got = decode(raw)
        assert (got.model, got.version, got.computed_at) == ("m-layout", "4", at)
        assert got.arrays["probabilities"].tobytes() == probs[row].tobytes()
        assert got.arrays["label"].shape == () and int(got.arrays["label"]) == labels[row]
        assert got.arrays["probabilities"].flags.writeable
    with pytest.raises(ValueError):
        decode(second + b"x")  # the header matches, the size does not: parsed, and refused
    with pytest.raises(ValueError):
        decode(second[:-1])
