"""Open Inference Protocol V2 REST bodies <-> NumPy, including the binary tensor extension.

JSON tensors: ``{"name", "datatype", "shape", "data"}`` with ``data`` flat (row-major) or nested.
Binary extension (used by tritonclient by default): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw tensors, each input carrying
``parameters.binary_data_size``; BYTES elements are 4-byte little-endian length-prefixed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from inferlane.core.datatypes import DATATYPES, from_numpy, to_numpy
from inferlane.core.errors import InvalidInput, PayloadTooLarge
from inferlane.core.inputs.values import ValueProblem, from_buffer, from_json, invalid
from inferlane.core.spec import ModelConfig

HEADER_LENGTH = "inference-header-content-length"
RESERVED_PARAMETERS = frozenset({"timeout", "binary_data_output", "routing_key", "key"})
"""Request parameters the protocol consumes; every other request parameter is echoed back."""
MAX_ROUTING_KEY = 1024
"""Longest routing key (which user, say, so that one key always reaches one model version)."""


def routing_key(value: object, where: str) -> str | None:
    """A request's routing key (header ``inferlane-routing-key``, V2 ``parameters.routing_key``, V1
    ``routing_key``): a string of 1 to MAX_ROUTING_KEY characters, or None when absent."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ROUTING_KEY:
        raise InvalidInput(f"{where} must be a string of 1 to {MAX_ROUTING_KEY} characters")
    return value


@dataclass(slots=True)
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    """Requested outputs (empty: all), each with whether to return it in binary."""
    binary_default: bool = False


def json_body(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object; InvalidInput (400) otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"body is not valid JSON: {e}") from None
    return _obj(doc, "the body")


def _obj(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    return v


def _decode_bytes_elements(raw: bytes, where: str) -> list[bytes]:
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise InvalidInput(f"{where}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise InvalidInput(f"{where}: BYTES element runs past the end of the data")
        out.append(raw[pos:pos + n])
        pos += n
    return out


def decode_raw(raw: bytes | memoryview, datatype: str, shape: list[int], count: int, name: str,
               size_field: str = "raw contents") -> np.ndarray:
    """One tensor in the raw encoding shared by the V2 binary extension and gRPC's
    ``raw_input_contents``: little-endian elements without padding, BYTES elements each prefixed by
    its length (4 bytes, little-endian). ``count`` is the element count of ``shape``; InvalidInput
    when the size does not match it or a value breaks the rules (core/inputs/values.py)."""
    where = f"input {name!r}"
    if datatype == "BYTES":
        elems = _decode_bytes_elements(bytes(raw), where)
        if len(elems) != count:
            raise InvalidInput(f"{where}: {len(elems)} BYTES elements for shape {shape}")
        arr = np.empty(count, dtype=object)
        arr[:] = elems
        return arr.reshape(shape)
    itemsize = to_numpy(datatype).itemsize
    if len(raw) != count * itemsize:
        raise InvalidInput(f"{where}: {size_field} {len(raw)} is not {count} x {itemsize} bytes for shape {shape}")
    try:
        return from_buffer(raw, datatype).reshape(shape)
    except ValueProblem as e:
        raise invalid(name, e) from None


def encode_raw(arr: np.ndarray) -> bytes:
    """An output tensor in the raw encoding (see :func:`decode_raw`)."""
    if arr.dtype == object:
        return _encode_bytes_elements(arr)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


MAX_NAME_LENGTH = 256
"""Longest tensor name accepted (as in model.yaml); longer names are refused before any echo."""


def _params(v: Any, where: str) -> dict[str, Any]:
    """A ``parameters`` member: absent or null is empty, anything but an object is refused."""
    if v is None:
        return {}
    return _obj(v, where)


MAX_PARAMETER_DEPTH = 32
"""Deepest nesting of request ``parameters`` (they are echoed back, and JSON encoders have limits)."""


def _check_depth(params: dict[str, Any], where: str) -> None:
    for v in params.values():
        if isinstance(v, dict | list):
            break
    else:
        return  # flat, as parameters nearly always are
    stack: list[tuple[Any, int]] = [(params, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > MAX_PARAMETER_DEPTH:
                raise InvalidInput(f"{where} nest more than {MAX_PARAMETER_DEPTH} levels deep")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))


def _flag(params: dict[str, Any], key: str, default: bool, where: str) -> bool:
    v = params.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise InvalidInput(f"{where}.{key} must be true or false")
    return v


def _shape(shape: Any, where: str, max_elements: int) -> tuple[list[int], int]:
    """The claimed shape and its element count, refused (413) before anything is allocated.

    Dimensions are JSON integers; an integral number such as ``1e9`` is an integer too, as in
    JSON Schema.
    """
    if type(shape) is not list or not 1 <= len(shape) <= 16:
        raise InvalidInput(f"{where}: shape must be a list of 1 to 16 non-negative integers")
    dims = shape
    for d in shape:
        if type(d) is not int or d < 0:  # the rare forms (1e9, true, -1, "2") the slow way
            dims = []
            for d in shape:
                if isinstance(d, float) and d.is_integer():
                    d = int(d)
                if not isinstance(d, int) or isinstance(d, bool) or d < 0:
                    raise InvalidInput(f"{where}: shape must be a list of 1 to 16 non-negative integers, "
                                       f"not {str(shape)[:200]}")
                dims.append(d)
            break
    count = math.prod(dims)
    if count > max_elements or max(dims) > max_elements:
        # 1e308 is an integer too: keep the message short (and under Python's 4300-digit limit).
        big = 10**30
        shown = [d if d < big else "1e30+" for d in dims]
        raise PayloadTooLarge(f"{where}: shape {shown} has {count if count < big else 'over 1e30'} "
                              f"elements; the limit is {max_elements} per input")
    return dims, count


def tensor_shape(shape: Any, where: str, max_elements: int) -> tuple[list[int], int]:
    """A tensor's claimed shape and element count, for any transport: InvalidInput for a malformed
    shape, PayloadTooLarge (413) past ``max_elements``, both before anything is allocated."""
    return _shape(shape, where, max_elements)


def _values(data: Any, datatype: str, name: str) -> np.ndarray:
    """JSON tensor data as ``datatype`` under the one set of value rules (core/inputs/values.py)."""
    try:
        return from_json(data, datatype)
    except ValueProblem as e:
        raise invalid(name, e) from None


def _tensor_from_json(t: dict[str, Any], i: int, max_elements: int, binary: memoryview | None,
                      offset: int) -> tuple[str, np.ndarray, int]:
    name = t.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"inputs[{i}].name must be a string of 1 to {MAX_NAME_LENGTH} characters")
    where = f"input {name!r}"
    datatype = t.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"{where}: datatype must be one of {', '.join(DATATYPES)}")
    shape, count = _shape(t.get("shape"), where, max_elements)
    raw_params = t.get("parameters")
    size = None if raw_params is None else _params(raw_params, f"{where}: parameters").get("binary_data_size")
    if size is not None:
        if binary is None:
            raise InvalidInput(f"{where}: parameters.binary_data_size needs the binary tensor "
                               f"extension (the {HEADER_LENGTH} header)")
        if isinstance(size, float) and size.is_integer():
            size = int(size)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{where}: parameters.binary_data_size must be a "
                               "non-negative integer")
        if offset + size > len(binary):
            raise InvalidInput(f"{where}: binary_data_size {size} runs past the end of the body "
                               f"({len(binary) - offset} binary bytes left)")
        raw = binary[offset:offset + size]
        offset += size
        return name, decode_raw(raw, datatype, shape, count, name, "binary_data_size"), offset
    if "data" not in t:
        raise InvalidInput(f"{where}: missing 'data' (or parameters.binary_data_size)")
    data = t["data"]
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: data must be a list (flat or nested)")
    arr = _values(data, datatype, name)
    if arr.size != count:
        raise InvalidInput(f"{where}: data has {arr.size} elements, shape {shape} needs {count}")
    return name, arr.reshape(shape), offset


def parse_infer_request(body: bytes, header_length: int | None, max_elements: int) -> InferRequest:
    """Parse a V2 infer body; InvalidInput (400) names the field at fault."""
    binary: memoryview | None = None
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {header_length} is outside the body")
        binary = memoryview(body)[header_length:]
        body = body[:header_length]
    doc = json_body(body)
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidInput("id must be a string")
    params = _params(doc.get("parameters"), "parameters")
    if params:
        _check_depth(params, "parameters")
    raw_inputs = doc.get("inputs")
    if raw_inputs in (None, []) and "key" in params:
        raw_inputs = []  # answered by key from precomputed answers (lanes/online/hybrid.py)
    elif not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        name, arr, offset = _tensor_from_json(_obj(t, f"inputs[{i}]"), i, max_elements, binary,
                                              offset)
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        inputs[name] = arr
    if binary is not None and offset != len(binary):
        raise InvalidInput(f"the binary part of the body has {len(binary)} bytes but the inputs' "
                           f"binary_data_size add up to {offset}")
    binary_outputs: dict[str, bool] = {}
    binary_default = _flag(params, "binary_data_output", False, "parameters")
    outs = doc.get("outputs")
    if outs is not None:
        if not isinstance(outs, list):
            raise InvalidInput("outputs must be a list")
        for i, o in enumerate(outs):
            o = _obj(o, f"outputs[{i}]")
            oname = o.get("name")
            if not isinstance(oname, str):
                raise InvalidInput(f"outputs[{i}].name must be a string")
            if oname in binary_outputs:
                raise InvalidInput(f"output {oname!r} is requested twice")
            op = _params(o.get("parameters"), f"outputs[{i}].parameters")
            binary_outputs[oname] = _flag(op, "binary_data", binary_default,
                                          f"outputs[{i}].parameters")
    return InferRequest(inputs, rid, params, binary_outputs, binary_default)


def _encode_bytes_elements(arr: np.ndarray) -> bytes:
    parts = []
    for x in arr.ravel():
        b = x if isinstance(x, bytes) else str(x).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _json_data(arr: np.ndarray) -> Any:
    if arr.dtype == object:
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                for x in arr.ravel()]
    return np.ascontiguousarray(arr).ravel()


def encode_infer_response(model: str, version: str, outputs: Mapping[str, np.ndarray],
                          req: InferRequest, parameters: Mapping[str, Any] | None = None) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header length. ``parameters``: the
    server's own response parameters (beside the echoed request parameters)."""
    wanted = req.binary_outputs or {name: req.binary_default for name in outputs}
    tensors = []
    chunks: list[bytes] = []
    for name, binary in wanted.items():
        arr = outputs[name]
        t: dict[str, Any] = {"name": name, "datatype": from_numpy(arr.dtype),
                             "shape": list(arr.shape)}
        if binary:
            raw = encode_raw(arr)
            t["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            t["data"] = _json_data(arr)
        tensors.append(t)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if req.id is not None:
        doc["id"] = req.id
    echoed = {k: v for k, v in req.parameters.items() if k not in RESERVED_PARAMETERS}
    if parameters:
        echoed.update(parameters)
    if echoed:
        doc["parameters"] = echoed
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def check_requested_outputs(req: InferRequest, config: ModelConfig) -> None:
    if not req.binary_outputs:
        return
    declared = {s.name for s in config.outputs}
    unknown = sorted(set(req.binary_outputs) - declared)
    if unknown:
        raise InvalidInput(f"unknown requested outputs {unknown}; model {config.name} has "
                           f"{sorted(declared)}")


def parse_v1_instances(body: bytes, config: ModelConfig) -> dict[str, np.ndarray]:
    """``{"instances": [...]}`` (rows) or ``{"inputs": {...}}`` (columns), as TF Serving and
    KServe V1 take them."""
    return parse_v1_request(body, config)[0]


@dataclass(slots=True)
class V1Request:
    inputs: dict[str, np.ndarray]
    """Empty when the body has only a ``key`` (answered from precomputed answers)."""
    routing_key: str | None
    key: Any
    """The body's ``key`` beside ``instances`` as sent (lanes/online/hybrid.py checks it), None when absent."""


def parse_v1_keyed(body: bytes, config: ModelConfig) -> V1Request:
    """:func:`parse_v1_request` for a body that may carry ``key`` (one or a list) beside or instead of
    ``instances``."""
    doc = json_body(body)
    key = doc.get("key")
    if key is not None and "instances" not in doc and "inputs" not in doc:
        return V1Request({}, routing_key(doc.get("routing_key"), "routing_key"), key)
    inputs, rkey = _v1_parsed(doc, config)
    return V1Request(inputs, rkey, key)


def parse_v1_request(body: bytes, config: ModelConfig) -> tuple[dict[str, np.ndarray], str | None]:
    """:func:`parse_v1_instances` and the body's top-level ``routing_key`` (None when absent)."""
    return _v1_parsed(json_body(body), config)


def _v1_parsed(doc: dict[str, Any], config: ModelConfig) -> tuple[dict[str, np.ndarray], str | None]:
    key = routing_key(doc.get("routing_key"), "routing_key")
    specs = config.inputs
    if not isinstance(doc.get("signature_name", ""), str):
        raise InvalidInput("signature_name must be a string")
    if "instances" in doc and "inputs" in doc:
        raise InvalidInput("body must have either 'instances' or 'inputs', not both")
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidInput("instances must be a non-empty list of rows")
        if len(specs) == 1 and not isinstance(rows[0], dict):
            columns: dict[str, Any] = {specs[0].name: rows}
        else:
            columns = {s.name: [] for s in specs}
            for i, r in enumerate(rows):
                r = _obj(r, f"instances[{i}]")
                for s in specs:
                    if s.name not in r:
                        raise InvalidInput(f"instances[{i}]: missing input {s.name!r}")
                    columns[s.name].append(r[s.name])
    elif "inputs" in doc:
        cols = doc["inputs"]
        if len(specs) == 1 and not isinstance(cols, dict):
            cols = {specs[0].name: cols}
        columns = _obj(cols, "inputs")
    else:
        raise InvalidInput("body must have 'instances' (a list of rows) or 'inputs' (columns)")
    out: dict[str, np.ndarray] = {}
    limit = config.limits.max_elements_per_input
    for s in specs:
        if s.name not in columns:
            raise InvalidInput(f"missing input {s.name!r}")
        arr = _values(columns[s.name], s.datatype, s.name)
        if arr.size > limit:
            raise PayloadTooLarge(f"input {s.name!r}: {arr.size} elements; the limit is {limit}")
        out[s.name] = arr
    return out, key


def encode_v1_predictions(outputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None) -> bytes:
    """``{"predictions": ...}``, with the server's ``parameters`` beside them when given (a keyed answer's
    source and age)."""
    extra = {"parameters": parameters} if parameters else {}
    if len(outputs) == 1:
        (arr,) = outputs.values()
        return orjson.dumps({"predictions": _v1(arr), **extra}, option=orjson.OPT_SERIALIZE_NUMPY)
    rows = next(iter(outputs.values())).shape[0]
    preds = [{name: _v1(arr[i]) for name, arr in outputs.items()} for i in range(rows)]
    return orjson.dumps({"predictions": preds, **extra}, option=orjson.OPT_SERIALIZE_NUMPY)


def _v1(arr: Any) -> Any:
    if isinstance(arr, np.generic):  # orjson does not take every numpy scalar type (longlong)
        return arr.item()
    if isinstance(arr, np.ndarray):
        if arr.dtype == object:
            return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x
                    for x in arr.ravel()]
        return np.ascontiguousarray(arr)
    return arr


def encode_infer_request(inputs: Mapping[str, np.ndarray], request_id: str | None = None,
                         parameters: Mapping[str, Any] | None = None) -> bytes:
    """A V2 JSON request body (how the jobs lane stores a request, whatever form it came in)."""
    doc: dict[str, Any] = {"inputs": [
        {"name": name, "datatype": from_numpy(arr.dtype), "shape": list(arr.shape), "data": _json_data(arr)}
        for name, arr in inputs.items()]}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
