"""Hostile and malformed requests against the running server (shared ``server`` fixture), over
real sockets: httpx where it can say it, raw sockets where it cannot (lying or absent
Content-Length, chunked bodies, half-closed connections, headers that are not ASCII).

Every refusal has an exact status and a JSON ``{"error": "..."}`` that names the problem; the
last tests check that the server is still healthy and logged no unexpected error.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.conftest import Server

pytestmark = pytest.mark.e2e

INFER = "/v2/models/fraud/infer"
PREDICT = "/v1/models/fraud:predict"
LIMIT = 1_048_576  # fraud's limits.max_request_bytes
ELEMENTS = 4_000_000  # the default limits.max_elements_per_input
X = np.linspace(-1, 1, 60, dtype=np.float32).reshape(2, 30)


def tensor(**over: Any) -> dict[str, Any]:
    """One valid `features` row, with fields replaced (or removed, with value ...)."""
    t: dict[str, Any] = {"name": "features", "datatype": "FP32", "shape": [1, 30],
                         "data": X[0].tolist()}
    t.update(over)
    return {k: v for k, v in t.items() if v is not ...}


def v2(*tensors: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(tensors) or [tensor()], **extra})


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module", autouse=True)
def log_start(server: Server) -> int:
    """Where the server log stood before these tests (the log is shared with other modules)."""
    return server.log.stat().st_size


def error(r: httpx.Response | RawResponse, status: int, *fragments: str) -> str:
    """Assert the status, a JSON error body, and that the message contains every fragment."""
    assert r.status_code == status, (r.status_code, r.content[:1000])
    assert r.headers["content-type"] == "application/json", r.headers
    message = orjson.loads(r.content)["error"]
    assert isinstance(message, str)
    for f in fragments:
        assert f in message, f"{f!r} not in {message!r}"
    return message


# -- raw sockets ----------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes


def _parse(buf: bytes) -> tuple[RawResponse | None, int]:
    """The first complete response in ``buf`` and its length, or (None, 0)."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None, 0
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    if len(rest) < length:
        return None, 0
    return RawResponse(int(lines[0].split()[1]), headers, rest[:length]), len(head) + 4 + length


def raw(server: Server, parts: Iterable[bytes], *, half_close: bool = False,
        timeout: float = 20.0) -> list[RawResponse]:
    """Send ``parts`` on one connection, then read responses until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        try:
            for p in parts:
                s.sendall(p)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything: read the answer
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    responses = []
    while True:
        r, used = _parse(buf)
        if r is None:
            return responses
        responses.append(r)
        buf = buf[used:]


def request_head(path: str, *headers: str, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- the body as a whole --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"inputs": [', b"", b"inputs", b"{'inputs': []}",
                                  b'{"inputs": [}', b"\xff\xfe{}", b'{"inputs": NaN}'])
def test_invalid_json(client: httpx.Client, body: bytes) -> None:
    error(client.post(INFER, content=body), 400, "body is not valid JSON")


@pytest.mark.parametrize("body", [b"[]", b'"inputs"', b"42", b"null", b"true", b"[{}]"])
def test_json_that_is_not_an_object(client: httpx.Client, body: bytes) -> None:
    error(client.post(INFER, content=body), 400, "the body must be a JSON object")


@pytest.mark.parametrize("inputs", ["absent", [], {}, None, "features", 0])
def test_inputs_missing_empty_or_not_a_list(client: httpx.Client, inputs: Any) -> None:
    body = {} if inputs == "absent" else {"inputs": inputs}
    error(client.post(INFER, content=orjson.dumps(body)), 400,
          "inputs must be a non-empty list of tensors")


@pytest.mark.parametrize("item", [1, "features", None, [tensor()]])
def test_input_that_is_not_an_object(client: httpx.Client, item: Any) -> None:
    error(client.post(INFER, content=orjson.dumps({"inputs": [tensor(), item]})), 400,
          "inputs[1] must be a JSON object")


def test_id_and_parameters_of_the_wrong_type(client: httpx.Client) -> None:
    error(client.post(INFER, content=v2(id=5)), 400, "id must be a string")
    error(client.post(INFER, content=v2(parameters=[])), 400, "parameters must be a JSON object")
    error(client.post(INFER, content=v2(parameters={"binary_data_output": "yes"})), 400,
          "parameters.binary_data_output must be true or false")
    error(client.post(INFER, content=v2(tensor(parameters=False))), 400,
          "input 'features': parameters must be a JSON object")


def test_nulls_for_optional_fields_are_absent_fields(client: httpx.Client) -> None:
    body = v2(tensor(parameters=None), id=None, parameters=None, outputs=None)
    r = client.post(INFER, content=body)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["label", "probabilities"]


# -- names ----------------------------------------------------------------------------------------


def test_unknown_input_name(client: httpx.Client) -> None:
    error(client.post(INFER, content=v2(tensor(name="feature"))), 400,
          "model fraud expects inputs ['features']", "missing ['features']",
          "unexpected ['feature']")


def test_extra_input_besides_the_right_one(client: httpx.Client) -> None:
    error(client.post(INFER, content=v2(tensor(), tensor(name="extra"))), 400,
          "unexpected ['extra']")


def test_duplicate_input_names(client: httpx.Client) -> None:
    error(client.post(INFER, content=v2(tensor(), tensor())), 400, "input 'features' appears twice")


@pytest.mark.parametrize("name", [None, "", 7, ["features"], "f" * 257, ...])
def test_bad_input_name(client: httpx.Client, name: Any) -> None:
    error(client.post(INFER, content=v2(tensor(name=name))), 400,
          "inputs[0].name must be a string of 1 to 256 characters")


def test_requested_outputs(client: httpx.Client) -> None:
    error(client.post(INFER, content=v2(outputs=[{"name": "nope"}])), 400,
          "unknown requested outputs ['nope']")
    error(client.post(INFER, content=v2(outputs=[{"name": "label"}, {"name": "label"}])), 400,
          "output 'label' is requested twice")
    error(client.post(INFER, content=v2(outputs={"name": "label"})), 400, "outputs must be a list")
    error(client.post(INFER, content=v2(outputs=[{"name": 3}])), 400,
          "outputs[0].name must be a string")
    error(client.post(INFER, content=v2(outputs=[{"name": "label",
                                                  "parameters": {"binary_data": 1}}])), 400,
          "outputs[0].parameters.binary_data must be true or false")


# -- datatype and shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["FLOAT32", "fp32", "FP32 ", 32, None, ["FP32"], ...])
def test_unknown_datatype(client: httpx.Client, datatype: Any) -> None:
    error(client.post(INFER, content=v2(tensor(datatype=datatype))), 400,
          "input 'features': datatype must be one of BOOL, UINT8")


def test_known_datatype_the_model_does_not_take(client: httpx.Client) -> None:
    error(client.post(INFER, content=v2(tensor(datatype="FP64"))), 400,
          "input 'features': datatype must be FP32")


@pytest.mark.parametrize("shape", [[-1, 30], [1, -30], [1.5, 30], ["1", 30], [True, 30], [],
                                   [1] * 17, "1,30", None, [[1], 30], [None, 30], ...])
def test_malformed_shape(client: httpx.Client, shape: Any) -> None:
    error(client.post(INFER, content=v2(tensor(shape=shape))), 400,
          "input 'features': shape must be a list of 1 to 16 non-negative integers")


def test_integral_floats_are_integers_in_a_shape(client: httpx.Client) -> None:
    r = client.post(INFER, content=v2(tensor(shape=[1.0, 3e1])))
    assert r.status_code == 200, r.text


def test_shape_the_model_does_not_take(client: httpx.Client) -> None:
    error(client.post(INFER, content=v2(tensor(shape=[1, 30, 1]))), 400,
          "input 'features': shape [1, 30, 1] does not match [-1, 30]")
    error(client.post(INFER, content=v2(tensor(shape=[0, 30], data=[]))), 400,
          "a request must have at least one row")


@pytest.mark.parametrize(("shape", "count"), [
    (b"[1e9, 30]", "30000000000"),
    (b"[1000000000, 30]", "30000000000"),
    (b"[4000001]", "4000001"),
    (b"[" + b", ".join([b"1099511627776"] * 16) + b"]", "1099511627776"),
    (b"[18446744073709551616, 30]", "553402322211286548480"),  # past 64 bits: a float to orjson
    # Empty, but with a dimension past the limit (numpy cannot even reshape an empty array to it).
    (b"[0, 18446744073709551615]", "has 0 elements"),
    (b"[0, 1000000000000000000000000000000]", "has 0 elements"),
    (b"[" + b", ".join([b"1e308"] * 16) + b"]", "has over 1e30 elements"),  # 4929 digits
])
def test_huge_claimed_shape_is_413_without_allocating(client: httpx.Client, shape: bytes,
                                                      count: str) -> None:
    body = (b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": ' + shape
            + b', "data": [0.5]}]}')
    t0 = time.monotonic()
    r = client.post(INFER, content=body)
    elapsed = time.monotonic() - t0
    error(r, 413, "input 'features': shape [", count, f"the limit is {ELEMENTS} per input")
    assert elapsed < 5, f"{elapsed:.1f} s: the claimed shape was not refused up front"


# -- data -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "shape"),
                         [(29, [1, 30]), (31, [1, 30]), (0, [1, 30]), (30, [2, 30])])
def test_data_length_not_matching_shape(client: httpx.Client, n: int, shape: list[int]) -> None:
    data = [0.25] * n
    error(client.post(INFER, content=v2(tensor(data=data, shape=shape))), 400,
          f"input 'features': data has {n} elements, shape {shape} needs {shape[0] * shape[1]}")


def test_nested_data_is_accepted_row_major(client: httpx.Client) -> None:
    flat = client.post(INFER, content=v2(tensor(shape=[2, 30], data=X.ravel().tolist())))
    nested = client.post(INFER, content=v2(tensor(shape=[2, 30], data=X.tolist())))
    assert flat.status_code == nested.status_code == 200, (flat.text, nested.text)
    assert flat.json()["outputs"] == nested.json()["outputs"]


@pytest.mark.parametrize("data", [
    [[0.5] * 30, [0.5] * 29],
    [[0.5] * 30, 0.5],
    [[[0.5] * 15, [0.5] * 15], [0.5] * 30],
])
def test_ragged_nested_data(client: httpx.Client, data: list[Any]) -> None:
    error(client.post(INFER, content=v2(tensor(shape=[2, 30], data=data))), 400,
          "input 'features': ragged nested lists (rows of different lengths)")


@pytest.mark.parametrize(("data", "found"), [
    (["0.5"] * 30, "a string"),
    ([0.5] * 29 + ["x"], "a string"),
    ([True] * 30, "true/false"),
    ([0.5] * 29 + [True], "true/false"),  # among numbers too (NumPy would make it 1.0)
    ([None] * 30, "null"),
    ([0.5] * 29 + [None], "null"),
    ([{}] * 30, "an object"),
])
def test_non_numbers_in_fp32_data(client: httpx.Client, data: list[Any], found: str) -> None:
    error(client.post(INFER, content=v2(tensor(data=data))), 400,
          f"input 'features': {found} where FP32 numbers belong")


@pytest.mark.parametrize("data", [None, 0.5, "0.5", {"0": 0.5}, ...])
def test_data_that_is_not_a_list(client: httpx.Client, data: Any) -> None:
    message = "data must be a list" if data is not ... else "missing 'data'"
    error(client.post(INFER, content=v2(tensor(data=data, shape=[1]))), 400,
          f"input 'features': {message}")


def test_floats_for_an_int_input(client: httpx.Client) -> None:
    # The codec refuses the data against the datatype the request declares, before the model's
    # signature is looked at.
    error(client.post(INFER, content=v2(tensor(datatype="INT64", data=[0.5] * 30))), 400,
          "input 'features': a float where INT64 integers belong")
    error(client.post(INFER, content=v2(tensor(datatype="INT32", data=[1] * 29 + [1.5]))), 400,
          "input 'features': a float where INT32 integers belong")


def test_numbers_for_a_bool_input(client: httpx.Client) -> None:
    error(client.post(INFER, content=v2(tensor(datatype="BOOL", data=[1] * 30))), 400,
          "input 'features': a number where BOOL values (true/false) belong")


@pytest.mark.parametrize(("datatype", "value"), [
    ("INT8", 128), ("INT8", -129), ("UINT8", -1), ("UINT8", 256), ("INT16", 40000),
    ("UINT32", 2**32), ("INT64", 2**63), ("INT64", 2**64), ("UINT64", -1), ("UINT64", 2**64),
    ("FP16", 70000.0), ("FP32", 1e39), ("FP32", 3.5e38),
])
def test_out_of_range_numbers(client: httpx.Client, datatype: str, value: float) -> None:
    body = (b'{"inputs": [{"name": "features", "datatype": "' + datatype.encode()
            + b'", "shape": [1, 30], "data": [' + b", ".join([str(value).encode()] * 30) + b"]}]}")
    error(client.post(INFER, content=body), 400,
          f"input 'features': a number out of range for {datatype}")


def test_in_range_extremes_reach_the_model(client: httpx.Client) -> None:
    # In range for the declared datatype: the codec passes them and the model's signature
    # check names the datatype it wants.
    for datatype, value in [("INT8", -128), ("UINT64", 2**64 - 1), ("FP16", 65504.0)]:
        body = orjson.dumps({"inputs": [tensor(datatype=datatype, data=[value] * 30)]})
        error(client.post(INFER, content=body), 400, "input 'features': datatype must be FP32")


def test_deeply_nested_json(client: httpx.Client) -> None:
    error(client.post(INFER, content=b"[" * 100_000), 400, "body is not valid JSON",
          "depth limit exceeded")
    error(client.post(INFER, content=b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
          400, "body is not valid JSON")
    deep: Any = 0.5
    for _ in range(100):
        deep = [deep]
    error(client.post(INFER, content=v2(tensor(shape=[1], data=deep))), 400,
          "input 'features': lists nested more than 32 levels deep")


@pytest.mark.parametrize("levels", [33, 300, 1000])
def test_deeply_nested_parameters_are_400_before_the_model_runs(client: httpx.Client, levels: int) -> None:
    # orjson reads up to 1024 levels but writes at most 254: past that the echo failed (500) after
    # the model ran.
    body = b'{"parameters": {"p": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b'}, "inputs": ['
    body += orjson.dumps(tensor()) + b"]}"
    error(client.post(INFER, content=body), 400, "parameters nest more than 32 levels deep")
    nested: Any = 1
    for _ in range(30):
        nested = [nested]
    r = client.post(INFER, content=v2(parameters={"p": nested}))
    assert r.status_code == 200, r.text
    assert r.json()["parameters"] == {"p": nested}


def test_slow_model_rows(client: httpx.Client) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                                     "data": [1.0] * 8}]})
    error(client.post("/v2/models/slow/infer", content=body), 400,
          "request has 2 rows; model slow takes at most 1 per request")


# -- body size and framing ------------------------------------------------------------------------


def test_body_over_the_limit_with_content_length_is_refused_before_it_is_sent(
        server: Server) -> None:
    # Only the head goes out: the server must answer from Content-Length alone.
    head = request_head(INFER, f"Content-Length: {LIMIT + 1}", "Content-Type: application/json")
    (r,) = raw(server, [head], timeout=10)
    error(r, 413, f"body of {LIMIT + 1} bytes exceeds the model's limit of {LIMIT} bytes")


def test_body_over_the_limit_with_content_length_sent_whole(client: httpx.Client) -> None:
    body = b'{"inputs": [' + b" " * LIMIT + b"]}"
    error(client.post(INFER, content=body), 413, f"exceeds the model's limit of {LIMIT} bytes")


def test_chunked_body_over_the_limit(server: Server) -> None:
    head = request_head(INFER, "Transfer-Encoding: chunked", "Content-Type: application/json")
    piece = b" " * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (LIMIT // len(piece) + 2)
    (r,) = raw(server, [head, b'c\r\n{"inputs": [\r\n', *chunks, b"0\r\n\r\n"])
    error(r, 413, f"body exceeds the model's limit of {LIMIT} bytes")


def test_chunked_body_under_the_limit_is_served(server: Server) -> None:
    body = v2()
    head = request_head(INFER, "Transfer-Encoding: chunked", "Content-Type: application/json")
    chunks = [b"%x\r\n%s\r\n" % (len(body[i:i + 100]), body[i:i + 100])
              for i in range(0, len(body), 100)]
    (r,) = raw(server, [head, *chunks, b"0\r\n\r\n"])
    assert r.status_code == 200, r.content


def test_content_length_shorter_than_the_body(server: Server) -> None:
    body = v2()
    head = request_head(INFER, "Content-Length: 40", "Content-Type: application/json")
    responses = raw(server, [head + body])
    # The first 40 bytes are the body; the rest is read as the next request, which is garbage.
    error(responses[0], 400, "body is not valid JSON")
    assert all(r.status_code == 400 for r in responses[1:]), responses


def test_content_length_longer_than_the_body_then_half_close(server: Server) -> None:
    # The server waits for bytes that never come; when the client gives up (half-close), it
    # must drop the request quietly: nothing to answer, no "unexpected error" in the log.
    body = v2()
    head = request_head(INFER, f"Content-Length: {len(body) + 500}",
                        "Content-Type: application/json")
    responses = raw(server, [head + body], half_close=True)
    assert [r.status_code for r in responses] in ([], [400]), responses


@pytest.mark.parametrize("value", ["abc", "-5", "1e3", "0x10"])
def test_malformed_content_length(server: Server, value: str) -> None:
    # The HTTP parser (uvicorn/httptools) refuses these before the app runs: 400, not JSON.
    head = request_head(INFER, f"Content-Length: {value}", "Content-Type: application/json")
    responses = raw(server, [head + b"{}"])
    assert [r.status_code for r in responses] == [400], responses


def test_unknown_model_with_a_body_over_the_limit_is_404(client: httpx.Client) -> None:
    error(client.post("/v2/models/nope/infer", content=b" " * (LIMIT + 10)), 404,
          "unknown model 'nope'")


# -- deadline header ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["soon", "", "nan", "Infinity", "0x10", "1_000", "5ms", "1,5",
                                   "\u00b2"])
def test_non_numeric_timeout_header(client: httpx.Client, value: str) -> None:
    r = client.post(INFER, content=v2(), headers={"inferlane-timeout-ms": value.encode("latin-1")})
    error(r, 400, "inferlane-timeout-ms must be a number of milliseconds")


@pytest.mark.parametrize("value", ["-5", "-0.5", "3600001", "1e12"])
def test_out_of_range_timeout_header(client: httpx.Client, value: str) -> None:
    error(client.post(INFER, content=v2(), headers={"inferlane-timeout-ms": value}), 400,
          "inferlane-timeout-ms must be between 0 and 3600000")


@pytest.mark.parametrize("value", ["soon", -1, True, 4e9, [1]])
def test_bad_timeout_parameter(client: httpx.Client, value: Any) -> None:
    error(client.post(INFER, content=v2(parameters={"timeout": value})), 400,
          "parameters.timeout must be microseconds between 0 and 3.6e9")


def test_zero_timeout_is_504(client: httpx.Client) -> None:
    error(client.post(INFER, content=v2(), headers={"inferlane-timeout-ms": "0"}), 504,
          "deadline passed")


# -- binary tensor extension ----------------------------------------------------------------------


def binary_request(rows: int = 1, *, size: Any = None, header_len: int | bytes | None = None,
                   extra: bytes = b"", cut: int = 0,
                   datatype: str = "FP32") -> tuple[bytes, dict[str, Any]]:
    raw_data = np.ascontiguousarray(X[:rows], dtype="<f4").tobytes()
    header = orjson.dumps({"inputs": [{
        "name": "features", "datatype": datatype, "shape": [rows, 30],
        "parameters": {"binary_data_size": len(raw_data) if size is None else size}}]})
    hl = header_len if header_len is not None else len(header)
    value = hl if isinstance(hl, bytes) else str(hl).encode()
    body = header + raw_data[:len(raw_data) - cut] + extra
    return body, {"Inference-Header-Content-Length": value,
                  "Content-Type": "application/octet-stream"}


def test_binary_request_is_served(client: httpx.Client) -> None:
    body, headers = binary_request(2)
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert {o["name"]: o["shape"] for o in r.json()["outputs"]} == {"label": [2],
                                                                     "probabilities": [2, 2]}


@pytest.mark.parametrize("value", [b"abc", b"-3", b"12a", b"", b"\xb2", b"\xd9\xa3", b"0x10"])
def test_binary_header_length_not_a_number(client: httpx.Client, value: bytes) -> None:
    body, headers = binary_request(header_len=value)
    error(client.post(INFER, content=body, headers=headers), 400,
          "inference-header-content-length must be a non-negative integer")


@pytest.mark.parametrize("value", [10_000, 10**17, b"9" * 5000])
def test_binary_header_length_larger_than_the_body(client: httpx.Client,
                                                   value: int | bytes) -> None:
    body, headers = binary_request(header_len=value)
    error(client.post(INFER, content=body, headers=headers), 400,
          "inference-header-content-length", "is outside the body")


def test_binary_header_length_cutting_the_json(client: httpx.Client) -> None:
    body, headers = binary_request(header_len=20)
    error(client.post(INFER, content=body, headers=headers), 400, "body is not valid JSON")


def test_binary_data_size_larger_than_the_body(client: httpx.Client) -> None:
    body, headers = binary_request(size=10_000)
    error(client.post(INFER, content=body, headers=headers), 400,
          "input 'features': binary_data_size 10000 runs past the end of the body "
          "(120 binary bytes left)")


def test_binary_data_size_not_matching_the_shape(client: httpx.Client) -> None:
    body, headers = binary_request(size=116, cut=4)
    error(client.post(INFER, content=body, headers=headers), 400,
          "input 'features': binary_data_size 116 is not 30 x 4 bytes for shape [1, 30]")


def test_binary_part_longer_than_the_inputs_claim(client: httpx.Client) -> None:
    body, headers = binary_request(extra=b"\x00" * 4)
    error(client.post(INFER, content=body, headers=headers), 400,
          "the binary part of the body has 124 bytes but the inputs' binary_data_size "
          "add up to 120")


@pytest.mark.parametrize("size", ["120", -1, True, 120.5, [120]])
def test_binary_data_size_not_an_integer(client: httpx.Client, size: Any) -> None:
    body, headers = binary_request(size=size)
    error(client.post(INFER, content=body, headers=headers), 400,
          "input 'features': parameters.binary_data_size must be a non-negative integer")


def test_binary_data_size_without_the_header(client: httpx.Client) -> None:
    body, headers = binary_request()
    del headers["Inference-Header-Content-Length"]
    header_only = body[:body.index(b"}]}") + 3]
    error(client.post(INFER, content=header_only, headers=headers), 400,
          "input 'features': parameters.binary_data_size needs the binary tensor extension")


def test_binary_bytes_elements_truncated(client: httpx.Client) -> None:
    header = orjson.dumps({"inputs": [{"name": "features", "datatype": "BYTES", "shape": [1, 1],
                                       "parameters": {"binary_data_size": 6}}]})
    headers = {"Inference-Header-Content-Length": str(len(header))}
    error(client.post(INFER, content=header + b"\x05\x00\x00\x00ab", headers=headers), 400,
          "BYTES element runs past the end of the data")
    header = header.replace(b'"binary_data_size":6', b'"binary_data_size":2')
    headers = {"Inference-Header-Content-Length": str(len(header))}
    error(client.post(INFER, content=header + b"\x05\x00", headers=headers), 400,
          "truncated BYTES element length")


# -- V1 :predict ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "fragments"), [
    ({"instances": 5}, ["instances must be a non-empty list of rows"]),
    ({"instances": []}, ["instances must be a non-empty list of rows"]),
    ({"instances": None}, ["instances must be a non-empty list of rows"]),
    ({"instances": [[0.5] * 30, [0.5] * 29]}, ["input 'features': ragged nested lists"]),
    ({"instances": [["0.5"] * 30]}, ["input 'features': a string where FP32 numbers belong"]),
    ({"instances": [[True] * 30]}, ["input 'features': true/false where FP32 numbers belong"]),
    ({"instances": [[None] * 30]}, ["input 'features': null where FP32 numbers belong"]),
    ({"instances": [[0.5] * 29]}, ["input 'features': shape [1, 29] does not match [-1, 30]"]),
    ({"instances": [[1e39] * 30]}, ["input 'features': a number out of range for FP32"]),
    ({"instances": [{"x": [0.5] * 30}]}, ["instances[0]: missing input 'features'"]),
    ({"instances": [[0.5] * 30, {"features": [0.5] * 30}]},
     ["input 'features': ragged nested lists"]),
    ({"instances": [[0.5] * 30], "inputs": [[0.5] * 30]},
     ["body must have either 'instances' or 'inputs', not both"]),
    ({"rows": [[0.5] * 30]}, ["body must have 'instances' (a list of rows) or 'inputs' (columns)"]),
    ({"inputs": {"x": [[0.5] * 30]}}, ["missing input 'features'"]),
    ({"instances": [[0.5] * 30], "signature_name": 1}, ["signature_name must be a string"]),
])
def test_v1_predict_bad_instances(client: httpx.Client, body: dict[str, Any],
                                  fragments: list[str]) -> None:
    error(client.post(PREDICT, content=orjson.dumps(body)), 400, *fragments)


@pytest.mark.parametrize("body", [b"[[0.5]]", b"{", b"null"])
def test_v1_predict_body_not_an_object(client: httpx.Client, body: bytes) -> None:
    error(client.post(PREDICT, content=body), 400, "the body must be a JSON object"
          if body != b"{" else "body is not valid JSON")


def test_v1_predict_columns_and_signature_name(client: httpx.Client) -> None:
    r = client.post(PREDICT, content=orjson.dumps({"signature_name": "serving_default",
                                                   "inputs": {"features": X.tolist()}}))
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


def test_v1_predict_over_the_limit(client: httpx.Client) -> None:
    error(client.post(PREDICT, content=b'{"instances": [' + b" " * LIMIT + b"]}"), 413,
          f"exceeds the model's limit of {LIMIT} bytes")


# -- routing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/models/nope/infer"), ("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"),
    ("POST", "/v1/models/nope:predict"), ("POST", "/v2/models/nope/versions/1/infer"),
])
def test_unknown_model(client: httpx.Client, method: str, path: str) -> None:
    error(client.request(method, path, content=v2()), 404, "unknown model 'nope'")


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/models/fraud/versions/9/infer"), ("GET", "/v2/models/fraud/versions/9"),
    ("GET", "/v2/models/fraud/versions/9/ready"), ("POST", "/v1/models/fraud/versions/9:predict"),
    ("POST", "/v2/models/fraud/versions/01/infer"),
])
def test_unknown_version(client: httpx.Client, method: str, path: str) -> None:
    version = path.split("/versions/")[1].split("/")[0].split(":")[0]
    error(client.request(method, path, content=v2()), 404,
          f"model 'fraud' has no version '{version}' (versions: ['1'])")


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", INFER, "POST"), ("PUT", INFER, "POST"), ("DELETE", "/v2/health/ready", "GET"),
    ("POST", "/v2/models/fraud", "GET"), ("PATCH", PREDICT, "POST"), ("POST", "/metrics", "GET"),
])
def test_wrong_method_is_405_json(client: httpx.Client, method: str, path: str,
                                  allowed: str) -> None:
    r = client.request(method, path)
    error(r, 405, f"method {method} is not allowed on {path!r}; allowed: ", allowed)
    assert allowed in r.headers["allow"]


def test_unknown_route_is_404_json(client: httpx.Client) -> None:
    error(client.get("/v2/model/fraud"), 404, "no route '/v2/model/fraud'")
    error(client.post("/v2/models/fraud/infer/extra", content=v2()), 404, "no route")


# -- afterwards -----------------------------------------------------------------------------------


def test_server_is_healthy_afterwards(client: httpx.Client, server: Server, log_start: int) -> None:
    assert server.proc.poll() is None, "the server exited"
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    r = client.post(INFER, content=v2(tensor(shape=[2, 30], data=X.tolist()), id="after"))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "after"
    with server.log.open("rb") as f:
        f.seek(log_start)
        log = f.read().decode(errors="replace")
    assert "Traceback" not in log and "unexpected error" not in log, log[-5000:]
