"""The input contract's rules (core/inputs), datatype by datatype and source by source.

The end-to-end check that every lane applies them alike is tests/test_cross_lane.py; here the
rules themselves: JSON values, typed arrays (binary tensors, Arrow columns), CSV text, keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from inferlane.core.errors import ConfigError, InvalidInput
from inferlane.core.inputs import RecordDecoder, ValueProblem, from_buffer, from_json, from_typed, invalid
from inferlane.core.inputs.columns import ColumnDecoder, column_values
from inferlane.core.inputs.values import check_typed, rows_with_problems
from inferlane.core.spec import ModelConfig

OK = None


@pytest.mark.parametrize(("value", "datatype", "problem"), [
    ([0.5, 1], "FP32", OK),
    ([1e-50, -0.0], "FP32", OK),
    ([3.4028234663852886e38], "FP32", OK),
    ([1e39], "FP32", "a number out of range for FP32"),
    ([65504.0], "FP16", OK),
    ([70000.0], "FP16", "a number out of range for FP16"),
    ([1e300], "FP64", OK),
    ([True, 0.5], "FP32", "true/false where FP32 numbers belong"),
    ([[0.5, 0.5], [0.5, False]], "FP64", "true/false where FP64 numbers belong"),
    ([0.0] * 300 + [True], "FP32", "true/false where FP32 numbers belong"),  # past the small-array shortcut
    (["1.5"], "FP32", "a string where FP32 numbers belong"),
    ([None], "FP32", "null where FP32 numbers belong"),
    ([{}], "FP32", "an object where FP32 numbers belong"),
    ([[1, 2], [3]], "FP32", "ragged nested lists (rows of different lengths)"),
    ([2**70], "FP32", OK),
    ([7], "INT8", OK),
    ([-128, 127], "INT8", OK),
    ([128], "INT8", "a number out of range for INT8"),
    ([3.0], "INT64", "a float where INT64 integers belong"),
    ([1e3], "INT32", "a float where INT32 integers belong"),
    ([2**63], "INT64", "a number out of range for INT64"),
    ([2**64 - 1], "UINT64", OK),
    ([-1], "UINT64", "a number out of range for UINT64"),
    ([2**64], "UINT64", "a number out of range for UINT64"),
    ([True, False], "INT32", "true/false where INT32 integers belong"),
    ([True, False], "BOOL", OK),
    ([1, 0], "BOOL", "a number where BOOL values (true/false) belong"),
    (["yes"], "BOOL", "a string where BOOL values (true/false) belong"),
    (["a", "é"], "BYTES", OK),
    ([1], "BYTES", "a number where BYTES values (strings) belong"),
    ([None], "BYTES", "null where BYTES values (strings) belong"),
    ([True], "BYTES", "true/false where BYTES values (strings) belong"),
    ([[["a"]], ["b"]], "BYTES", "ragged nested lists (rows of different lengths)"),
])
def test_json_values(value: Any, datatype: str, problem: str | None) -> None:
    if problem is None:
        arr = from_json(value, datatype)
        assert arr.shape == np.asarray(value, dtype=object).shape
    else:
        with pytest.raises(ValueProblem) as info:
            from_json(value, datatype)
        assert info.value.problem == problem


def test_json_numbers_are_read_as_64_bit_floats_then_rounded_once() -> None:
    # 16777217 = 2**24 + 1 is not an FP32: it rounds to 2**24 whether it came alone or among floats.
    alone = from_json([16777217], "FP32")
    among = from_json([16777217, 0.5], "FP32")
    assert alone[0] == among[0] == np.float32(2**24)
    assert np.signbit(from_json([-0.0], "FP32")[0])
    assert from_json([1e-45], "FP32")[0] == np.float32(1.4e-45)  # the smallest subnormal


def test_deep_nesting_is_refused() -> None:
    deep: Any = 0.5
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ValueProblem, match="nested more than 32 levels"):
        from_json(deep, "FP32")
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ValueProblem, match="nested more than 32 levels"):
        from_json(deep, "FP32")


def test_typed_values_nan_infinity_and_overflow() -> None:
    with pytest.raises(ValueProblem, match="NaN or infinity where FP32 numbers belong"):
        from_typed(np.asarray([1.0, np.nan]), "FP32")
    with pytest.raises(ValueProblem, match="NaN or infinity where FP64 numbers belong"):
        from_typed(np.asarray([np.inf]), "FP64")
    with pytest.raises(ValueProblem, match="a number out of range for FP16"):
        from_typed(np.asarray([1e5], np.float32), "FP16")
    with pytest.raises(ValueProblem, match="true/false where FP32 numbers belong"):
        from_typed(np.asarray([True]), "FP32")
    with pytest.raises(ValueProblem, match="a string where FP32 numbers belong"):
        from_typed(np.asarray(["1"]), "FP32")
    np.testing.assert_array_equal(from_typed(np.asarray([1, 2], np.int64), "FP32"), [1.0, 2.0])
    np.testing.assert_array_equal(from_typed(np.asarray([200], np.int64), "UINT8"), [200])


def test_typed_problems_are_masked_per_element_and_reduced_per_row() -> None:
    arr = np.asarray([[1.0, np.nan], [2.0, 3.0], [np.inf, 1e39]])
    out, problems = check_typed(arr, "FP32")
    assert rows_with_problems(problems, 3) == {0: "NaN or infinity where FP32 numbers belong",
                                               2: "NaN or infinity where FP32 numbers belong"}
    np.testing.assert_array_equal(out[1], [2.0, 3.0])
    _, problems = check_typed(np.asarray([1.5, np.nan, 1e30, 3.0]), "INT32")
    assert rows_with_problems(problems, 4) == {0: "a float where INT32 integers belong",
                                               1: "NaN or infinity where INT32 integers belong",
                                               2: "a number out of range for INT32",
                                               3: "a float where INT32 integers belong"}


def test_binary_tensors() -> None:
    assert from_buffer(np.asarray([1.5, -0.0], "<f4").tobytes(), "FP32").tolist() == [1.5, -0.0]
    with pytest.raises(ValueProblem, match="NaN or infinity"):
        from_buffer(np.asarray([np.nan], "<f4").tobytes(), "FP32")
    assert from_buffer(b"\x00\x01", "BOOL").tolist() == [False, True]
    with pytest.raises(ValueProblem, match="a byte other than 0 or 1 where BOOL"):
        from_buffer(b"\x00\x02", "BOOL")


def test_invalid_names_the_input_and_the_field() -> None:
    e = invalid("features", ValueProblem("null where FP32 numbers belong"), "f3")
    assert isinstance(e, InvalidInput) and e.http_status == 400
    assert e.message == "input 'features' (field f3): null where FP32 numbers belong"
    assert invalid("x", "a problem", "x").message == "input 'x': a problem"


# -- columns (Parquet, CSV) ---------------------------------------------------------------------

def verdicts(col: pa.Array, datatype: str, *, text: bool) -> list[str | None]:
    _, problems = column_values(col, datatype, text=text)
    found = rows_with_problems(problems, len(col))
    return [found.get(i) for i in range(len(col))]


def test_csv_cells_are_read_as_json_scalars() -> None:
    cells = ["0.5", "-0.0", "1e3", "1E-5", "7", "+1", ".5", "1.", "nan", "inf", "true", "", "abc", "[0.5]", " 1",
             "1e400"]
    col = pa.array([c if c else None for c in cells], pa.string())
    got = dict(zip(cells, verdicts(col, "FP32", text=True), strict=True))
    accepted = {"0.5", "-0.0", "1e3", "1E-5", "7", " 1"}  # JSON reads " 1" as 1 (surrounding space is allowed)
    assert {c for c, v in got.items() if v is None} == accepted
    assert got["+1"] == got[".5"] == got["1."] == got["nan"] == got["abc"] == "a string where FP32 numbers belong"
    assert got["true"] == "true/false where FP32 numbers belong"
    assert got[""] == "null where FP32 numbers belong"
    assert got["[0.5]"] == "a string where FP32 numbers belong"
    assert got["1e400"] == "NaN or infinity where FP32 numbers belong"
    out, _ = column_values(col, "FP32", text=True)
    assert np.signbit(out[1]) and out[2] == 1000.0


def test_csv_and_json_agree_cell_by_cell() -> None:
    cells = ["0.5", "7", "-0.0", "1e-50", "3.4028234663852886e38", "1e39", "true", "false", "null", "-3", "2.5"]
    for datatype in ("FP32", "FP16", "INT8", "INT64", "UINT8", "BOOL"):
        csv = verdicts(pa.array(cells, pa.string()), datatype, text=True)
        for cell, verdict in zip(cells, csv, strict=True):
            try:
                from_json(orjson.loads(cell), datatype)
                want = None
            except ValueProblem as e:
                want = e.problem
            if cell == "null":
                want = f"null where {datatype} " + ("values (true/false)" if datatype == "BOOL" else
                                                    "integers" if "INT" in datatype else "numbers") + " belong"
            assert verdict == want, (datatype, cell)


def test_csv_integers_past_64_bits_and_floats_for_integer_inputs() -> None:
    col = pa.array(["7", "7.0", "99999999999999999999", "-1"], pa.string())
    assert verdicts(col, "INT64", text=True) == [None, "a float where INT64 integers belong",
                                                  "a number out of range for INT64", None]
    assert verdicts(col, "UINT64", text=True)[3] == "a number out of range for UINT64"


def test_typed_columns_are_not_parsed() -> None:
    assert verdicts(pa.array(["0.5"], pa.string()), "FP32", text=False) == ["a string where FP32 numbers belong"]
    assert verdicts(pa.array([True]), "FP32", text=False) == ["true/false where FP32 numbers belong"]
    assert verdicts(pa.array([1.5, None, float("nan")]), "FP64", text=False) == [
        None, "null where FP64 numbers belong", "NaN or infinity where FP64 numbers belong"]
    assert verdicts(pa.array([300, 5], pa.int64()), "UINT8", text=False) == ["a number out of range for UINT8", None]
    assert verdicts(pa.array([[1.0]]), "FP32", text=False) == ["a list where FP32 numbers belong"]
    assert verdicts(pa.array(["a", None]), "BYTES", text=False) == [None, "null where BYTES values (strings) belong"]
    import decimal

    assert verdicts(pa.array([decimal.Decimal("1.25")]), "FP32", text=False) == [None]


def config(inputs: list[dict[str, Any]]) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "runtime": "python", "inputs": inputs,
                                       "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]})


def test_column_decoder_gathers_fields_and_names_the_field_at_fault() -> None:
    cfg = config([{"name": "x", "datatype": "FP32", "shape": [-1, 3]}])
    dec = ColumnDecoder.create(cfg, ["id"])  # one 2-D input: every non-key column, in order
    batch = pa.record_batch({"id": pa.array([1, 2, 3]), "a": [1.0, 2.0, 3.0], "b": [1.0, None, 3.0],
                             "c": pa.array([True, False, True])})
    decoded = dec.decode(batch, text=False)
    assert decoded.index == []
    assert decoded.rejects == [(0, "input 'x' (field c): true/false where FP32 numbers belong"),
                               (1, "input 'x' (field b): null where FP32 numbers belong"),
                               (2, "input 'x' (field c): true/false where FP32 numbers belong")]
    batch = pa.record_batch({"id": pa.array(["7", "8"]), "a": ["1", "2"], "b": ["3", "4"], "c": ["5", "x"]})
    decoded = dec.decode(batch, text=True)
    assert decoded.index == [0] and decoded.keys["id"].to_pylist() == [7]  # CSV keys that are all integers
    np.testing.assert_array_equal(decoded.inputs["x"], [[1, 3, 5]])


def test_column_decoder_list_columns_and_keys() -> None:
    cfg = config([{"name": "x", "datatype": "FP32", "shape": [-1, 2]}])
    dec = ColumnDecoder.create(cfg, ["id"], {"x": ["x"]})
    batch = pa.record_batch({"id": pa.array([1.5, 2.0, 3.0, 4.0, None]).cast(pa.float64()),
                             "x": pa.array([[1.0, 2.0], [1.0], None, [1.0, float("nan")], [0.0, 0.0]])})
    decoded = dec.decode(batch, text=False)
    reasons = dict(decoded.rejects)
    assert set(reasons) == {0, 1, 2, 3, 4}
    assert reasons[0] == reasons[4] == "key field 'id' is missing or not a string/integer"  # a float key column
    keyed = ColumnDecoder.create(cfg, ["k"], {"x": ["x"]})
    batch = pa.record_batch({"k": pa.array(["a", "b", "c", "d"]),
                             "x": pa.array([[1.0, 2.0], [1.0], None, [1.0, float("nan")]])})
    reasons = dict(keyed.decode(batch, text=False).rejects)
    assert reasons == {1: "input 'x': shape [1] does not match [2]",
                       2: "input 'x': null where FP32 numbers belong",
                       3: "input 'x': NaN or infinity where FP32 numbers belong"}
    with pytest.raises(ConfigError, match="--key id: the input has no column 'id'"):
        dec.decode(pa.record_batch({"x": pa.array([[1.0, 2.0]])}), text=False)


# -- records (stream events, JSONL lines) --------------------------------------------------------

def test_records_with_several_keys_and_every_other_field() -> None:
    cfg = config([{"name": "x", "datatype": "INT64", "shape": [-1, 2]}])
    dec = RecordDecoder.create(cfg, ["a", "b"], what="line", globs=True, every_other_field=True)
    lines = [orjson.dumps({"a": 1, "b": "u", "p": 3, "q": 4}), orjson.dumps({"a": 2, "b": "v", "p": 5, "q": 6.5}),
             orjson.dumps({"a": None, "b": "w", "p": 1, "q": 2}), None]
    decoded = dec.decode(lines)
    assert decoded.index == [0]
    assert decoded.keys == {"a": [1], "b": ["u"]}
    np.testing.assert_array_equal(decoded.inputs["x"], [[3, 4]])
    assert decoded.rejects == [(1, "input 'x' (field q): a float where INT64 integers belong"),
                               (2, "key field 'a' is missing or not a string/integer"),
                               (3, "empty line (no value)")]
