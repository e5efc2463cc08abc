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
from inferlane.core.spec import ModelConfig

HEADER_LENGTH = "inference-header-content-length"


@dataclass(slots=True)
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    """Requested outputs (empty: all), each with whether to return it in binary."""
    binary_default: bool = False


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


def _tensor_from_json(t: dict[str, Any], i: int, max_elements: int, binary: memoryview | None,
                      offset: int) -> tuple[str, np.ndarray, int]:
    where = f"inputs[{i}]"
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name must be a non-empty string")
    where = f"input {name!r}"
    datatype = t.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidInput(f"{where}: datatype must be one of {', '.join(DATATYPES)}")
    shape = t.get("shape")
    if (not isinstance(shape, list) or not shape or len(shape) > 16
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidInput(f"{where}: shape must be a list of 1 to 16 non-negative integers")
    count = math.prod(shape)
    if count > max_elements:
        raise PayloadTooLarge(f"{where}: shape {shape} has {count} elements; the limit is {max_elements}")
    dt = to_numpy(datatype)
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}.parameters must be a JSON object")
    size = params.get("binary_data_size")
    if size is not None:
        if binary is None or not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"{where}: binary_data_size does not fit the binary part of the body")
        raw = binary[offset:offset + size]
        offset += size
        if datatype == "BYTES":
            elems = _decode_bytes_elements(bytes(raw), where)
            if len(elems) != count:
                raise InvalidInput(f"{where}: {len(elems)} BYTES elements for shape {shape}")
            arr = np.empty(count, dtype=object)
            arr[:] = elems
        else:
            if size != count * dt.itemsize:
                raise InvalidInput(f"{where}: binary_data_size {size} is not {count} x {dt.itemsize} bytes")
            arr = np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt, copy=False)
        return name, arr.reshape(shape), offset
    if "data" not in t:
        raise InvalidInput(f"{where}: missing 'data'")
    data = t["data"]
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).ravel()
            if not all(isinstance(x, str | bytes) for x in flat):
                raise InvalidInput(f"{where}: BYTES data must be strings")
            arr = np.empty(flat.size, dtype=object)
            arr[:] = [x.encode() if isinstance(x, str) else x for x in flat]
        elif datatype == "BOOL":
            arr = np.asarray(data)
            if arr.dtype != np.bool_ and arr.size:
                raise InvalidInput(f"{where}: BOOL data must be true/false")
            arr = arr.astype(np.bool_)
        else:
            arr = np.asarray(data)
            if arr.size and arr.dtype.kind not in "iufb" or (dt.kind in "iu" and arr.dtype.kind == "f"):
                raise InvalidInput(f"{where}: data is not {datatype} numbers")
            arr = arr.astype(dt, casting="unsafe") if dt.kind == "f" else _to_int(arr, dt, where)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f"{where}: data cannot be read as {datatype}: {e}") from None
    if arr.size != count:
        raise InvalidInput(f"{where}: data has {arr.size} elements, shape {shape} needs {count}")
    return name, arr.reshape(shape), offset


def _to_int(arr: np.ndarray, dt: np.dtype, where: str) -> np.ndarray:
    if arr.size:
        info = np.iinfo(dt)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidInput(f"{where}: values out of range for {dt}")
    return arr.astype(dt)


def parse_infer_request(body: bytes, header_length: int | None, max_elements: int) -> InferRequest:
    """Parse a V2 infer body; InvalidInput (400) names the field at fault."""
    binary: memoryview | None = None
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {header_length} is outside the body")
        binary = memoryview(body)[header_length:]
        body = body[:header_length]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"body is not valid JSON: {e}") from None
    doc = _obj(doc, "the body")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidInput("id must be a string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("parameters must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        name, arr, offset = _tensor_from_json(_obj(t, f"inputs[{i}]"), i, max_elements, binary, offset)
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        inputs[name] = arr
    binary_outputs: dict[str, bool] = {}
    binary_default = bool(params.get("binary_data_output", False))
    outs = doc.get("outputs")
    if outs is not None:
        if not isinstance(outs, list):
            raise InvalidInput("outputs must be a list")
        for i, o in enumerate(outs):
            o = _obj(o, f"outputs[{i}]")
            name = o.get("name")
            if not isinstance(name, str):
                raise InvalidInput(f"outputs[{i}].name must be a string")
            op = o.get("parameters") or {}
            if not isinstance(op, dict):
                raise InvalidInput(f"outputs[{i}].parameters must be a JSON object")
            binary_outputs[name] = bool(op.get("binary_data", binary_default))
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
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel()]
    return np.ascontiguousarray(arr).ravel()


def encode_infer_response(model: str, version: str, outputs: Mapping[str, np.ndarray],
                          req: InferRequest) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header length."""
    wanted = req.binary_outputs or {name: req.binary_default for name in outputs}
    tensors = []
    chunks: list[bytes] = []
    for name, binary in wanted.items():
        arr = outputs[name]
        t: dict[str, Any] = {"name": name, "datatype": from_numpy(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = (_encode_bytes_elements(arr) if arr.dtype == object
                   else np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
            t["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            t["data"] = _json_data(arr)
        tensors.append(t)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if req.id is not None:
        doc["id"] = req.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def check_requested_outputs(req: InferRequest, config: ModelConfig) -> None:
    declared = {s.name for s in config.outputs}
    unknown = sorted(set(req.binary_outputs) - declared)
    if unknown:
        raise InvalidInput(f"unknown requested outputs {unknown}; model {config.name} has {sorted(declared)}")


def parse_v1_instances(body: bytes, config: ModelConfig) -> dict[str, np.ndarray]:
    """``{"instances": [...]}`` (rows) or ``{"inputs": {...}}`` (columns), as TF Serving/KServe V1."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"body is not valid JSON: {e}") from None
    doc = _obj(doc, "the body")
    specs = config.inputs
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidInput("instances must be a non-empty list")
        if len(specs) == 1 and not isinstance(rows[0], dict):
            columns: dict[str, list[Any]] = {specs[0].name: rows}
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
        raise InvalidInput("body must have 'instances' (a list of rows) or 'inputs'")
    out: dict[str, np.ndarray] = {}
    limit = config.limits.max_elements_per_input
    for s in specs:
        if s.name not in columns:
            raise InvalidInput(f"missing input {s.name!r}")
        col = columns[s.name]
        try:
            arr = np.asarray(col)
            if arr.dtype.kind not in "iufb" and s.datatype != "BYTES":
                raise InvalidInput(f"input {s.name!r}: values are not {s.datatype} numbers")
            arr = arr.astype(to_numpy(s.datatype))
        except (ValueError, TypeError, OverflowError) as e:
            raise InvalidInput(f"input {s.name!r}: cannot read as {s.datatype}: {e}") from None
        if arr.size > limit:
            raise PayloadTooLarge(f"input {s.name!r}: {arr.size} elements; the limit is {limit}")
        out[s.name] = arr
    return out


def encode_v1_predictions(outputs: Mapping[str, np.ndarray]) -> bytes:
    if len(outputs) == 1:
        (arr,) = outputs.values()
        return orjson.dumps({"predictions": _v1(arr)}, option=orjson.OPT_SERIALIZE_NUMPY)
    rows = next(iter(outputs.values())).shape[0]
    preds = [{name: _v1(arr[i]) for name, arr in outputs.items()} for i in range(rows)]
    return orjson.dumps({"predictions": preds}, option=orjson.OPT_SERIALIZE_NUMPY)


def _v1(arr: Any) -> Any:
    if isinstance(arr, np.ndarray):
        if arr.dtype == object:
            return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in arr.ravel()]
        return np.ascontiguousarray(arr)
    return arr
