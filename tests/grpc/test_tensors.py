"""gRPC tensors in process: typed and raw contents of every datatype decode under the one set of value
rules, refusals name the field at fault, and outputs encode as Triton's raw contents."""

from __future__ import annotations

import numpy as np
import pytest

from inferlane.core import codec
from inferlane.core.errors import InvalidInput, PayloadTooLarge
from inferlane.transport.grpc.proto import grpc_service_pb2 as pb
from inferlane.transport.grpc.tensors import decode_request, encode_response

TYPED = {  # datatype -> values that arrive in its contents field
    "BOOL": [True, False], "INT8": [-128, 127], "INT16": [-5, 7], "INT32": [-(2**31), 2**31 - 1],
    "INT64": [-(2**63), 2**63 - 1], "UINT8": [0, 255], "UINT16": [0, 65535], "UINT32": [0, 2**32 - 1],
    "UINT64": [0, 2**64 - 1], "FP32": [1.5, -0.25], "FP64": [1e300, -1e-300], "BYTES": [b"a", b"\xff\x00"],
}


def typed(datatype: str, values: list[object], shape: list[int] | None = None) -> pb.ModelInferRequest:
    from inferlane.transport.grpc.tensors import _TYPED

    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype=datatype, shape=shape or [1, len(values)])
    getattr(t.contents, _TYPED[datatype][0]).extend(values)
    return req


def raw(datatype: str, data: bytes, shape: list[int]) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m", raw_input_contents=[data])
    req.inputs.add(name="x", datatype=datatype, shape=shape)
    return req


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_typed_and_raw_contents_decode_to_the_same_array(datatype: str) -> None:
    values = TYPED[datatype]
    from_typed = decode_request(typed(datatype, values), 1000).inputs["x"]
    arr = np.array(values, dtype=object if datatype == "BYTES" else from_typed.dtype).reshape(1, -1)
    from_raw = decode_request(raw(datatype, codec.encode_raw(arr), [1, len(values)]), 1000).inputs["x"]
    assert from_typed.dtype == from_raw.dtype and from_typed.shape == from_raw.shape == (1, 2)
    assert from_typed.tolist() == from_raw.tolist() == arr.tolist()


@pytest.mark.parametrize(("datatype", "values", "words"), [
    ("INT8", [128, 0], "out of range for INT8"),
    ("UINT16", [70000, 0], "out of range for UINT16"),
    ("FP32", [float("nan"), 0.0], "NaN or infinity where FP32 numbers belong"),
    ("FP64", [float("inf"), 0.0], "NaN or infinity"),
])
def test_typed_values_follow_the_value_rules(datatype: str, values: list[object], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        decode_request(typed(datatype, values), 1000)


def test_fp16_travels_raw_only() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP16", shape=[1, 1])
    with pytest.raises(InvalidInput, match="FP16 has no typed contents field"):
        decode_request(req, 10)
    half = np.array([[0.5, -2.0]], np.float16)
    assert decode_request(raw("FP16", half.tobytes(), [1, 2]), 10).inputs["x"].tolist() == half.tolist()


@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda: typed("FP32", [1.0], [1, 2]), InvalidInput, "has 1 elements, the shape needs 2"),
    (lambda: raw("FP32", b"\0" * 4, [1, 2]), InvalidInput, "raw_input_contents size 4 is not 2 x 4 bytes"),
    (lambda: raw("BYTES", b"\x05\0\0\0ab", [1, 1]), InvalidInput, "runs past the end"),
    (lambda: raw("FP32", b"", [10**6, 10**6]), PayloadTooLarge, "the limit is 1000 per input"),
    (lambda: raw("COMPLEX", b"", [1]), InvalidInput, "datatype must be one of"),
    (lambda: raw("FP32", b"", [-1]), InvalidInput, "non-negative integers"),
    (lambda: pb.ModelInferRequest(model_name="m"), InvalidInput, "inputs must be a non-empty list"),
])
def test_refusals_name_the_field(make: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        decode_request(make(), 1000)  # type: ignore[operator]


def test_raw_contents_count_must_match_the_inputs() -> None:
    req = raw("FP32", b"\0" * 4, [1, 1])
    req.inputs.add(name="y", datatype="FP32", shape=[1, 1])
    with pytest.raises(InvalidInput, match="raw_input_contents has 1 entries for 2 inputs"):
        decode_request(req, 10)


def test_response_carries_raw_outputs_the_id_and_echoed_parameters() -> None:
    req = raw("FP32", b"\0" * 4, [1, 1])
    req.id = "r-1"
    req.parameters["tenant"].string_param = "t"
    req.parameters["timeout"].int64_param = 5000  # consumed by the protocol
    req.outputs.add(name="b")
    decoded = decode_request(req, 10)
    outputs = {"a": np.array([[1.0]], np.float32), "b": np.array([b"yes"], dtype=object)}
    answer = encode_response("m", "3", outputs, decoded, {"source": "live", "age": 1.5, "n": 2, "ok": True})
    assert (answer.model_name, answer.model_version, answer.id) == ("m", "3", "r-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [("b", "BYTES", [1])]
    assert list(answer.raw_output_contents) == [b"\x03\0\0\0yes"]
    params = {k: v.WhichOneof("parameter_choice") for k, v in answer.parameters.items()}
    assert params == {"tenant": "string_param", "source": "string_param", "age": "double_param",
                      "n": "int64_param", "ok": "bool_param"}
