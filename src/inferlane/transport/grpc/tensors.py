"""gRPC tensors: a ``ModelInferRequest`` into the request the lanes take, outputs into a ``ModelInferResponse``.

    req = decode_request(message, max_elements=config.limits.max_elements_per_input)  # codec.InferRequest
    answer = encode_response("fraud", "1", outputs, req)                             # outputs in raw contents

Inputs come as ``raw_input_contents`` (one entry per input, the encoding of the V2 binary extension,
decoded by core/codec.py) or as typed ``contents`` (the repeated field of the datatype). Both go
through the one set of value rules (core/inputs/values.py): a value refused over HTTP is refused
here with the same words. Outputs always travel in ``raw_output_contents``, as Triton answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from inferlane.core import codec
from inferlane.core.datatypes import DATATYPES, from_numpy
from inferlane.core.errors import InvalidInput
from inferlane.core.inputs.values import ValueProblem, from_typed, invalid
from inferlane.transport.grpc.proto import grpc_service_pb2 as pb

_TYPED: dict[str, tuple[str, type[np.generic]]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32), "INT16": ("int_contents", np.int32), "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32), "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32), "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", np.object_),
}
"""Each datatype's field of InferTensorContents and the type its values arrive as. FP16 has none:
it travels as raw contents only."""
_CONTENT_FIELDS = sorted({f for f, _ in _TYPED.values()})
_INT64_MAX = 2**63 - 1


def parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` (or ModelRepositoryParameter) as plain values; a parameter
    with no value set is None."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(p, which)
    return out


def _typed(t: pb.ModelInferRequest.InferInputTensor, datatype: str, count: int, name: str) -> np.ndarray:
    if datatype not in _TYPED:
        raise InvalidInput(f"input {name!r}: {datatype} has no typed contents field; send it as raw_input_contents")
    field, arrives_as = _TYPED[datatype]
    contents = t.contents
    for other in _CONTENT_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise InvalidInput(f"input {name!r}: {datatype} values belong in contents.{field}, not contents.{other}")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: contents.{field} has {len(values)} elements, the shape needs {count}")
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr
    try:
        return from_typed(np.array(values, dtype=arrives_as), datatype)
    except ValueProblem as e:
        raise invalid(name, e) from None


def decode_request(message: pb.ModelInferRequest, max_elements: int) -> codec.InferRequest:
    """The inputs, id, parameters and requested outputs of a ModelInferRequest; InvalidInput names
    the field at fault, PayloadTooLarge a tensor over ``max_elements``."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs "
                           "(one per input, in the order of inputs)")
    params = parameters(message.parameters)
    if not message.inputs and "key" not in params:  # with a key: answered from precomputed answers
        raise InvalidInput("inputs must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(message.inputs):
        name = t.name
        if not name or len(name) > codec.MAX_NAME_LENGTH:
            raise InvalidInput(f"inputs[{i}].name must be a string of 1 to {codec.MAX_NAME_LENGTH} characters")
        datatype = t.datatype
        if datatype not in DATATYPES:
            raise InvalidInput(f"input {name!r}: datatype must be one of {', '.join(DATATYPES)}")
        shape, count = codec.tensor_shape(list(t.shape), f"input {name!r}", max_elements)
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input {name!r}: contents and raw_input_contents are exclusive; send one")
            arr = codec.decode_raw(raw[i], datatype, shape, count, name, "raw_input_contents size")
        else:
            arr = _typed(t, datatype, count, name).reshape(shape)
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        inputs[name] = arr
    wanted: dict[str, bool] = {}
    for o in message.outputs:
        if o.name in wanted:
            raise InvalidInput(f"output {o.name[:256]!r} is requested twice")
        wanted[o.name] = True
    return codec.InferRequest(inputs, message.id or None, params, wanted, True)


def _parameter(value: Any) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value) if value <= _INT64_MAX else pb.InferParameter(uint64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def encode_response(name: str, version: str, outputs: Mapping[str, np.ndarray], req: codec.InferRequest,
                    parameters: Mapping[str, Any] | None = None) -> pb.ModelInferResponse:
    """The ModelInferResponse: the requested outputs (all when none were named) in raw contents, the
    request's id, and its parameters echoed (those the protocol consumes left out) with ``parameters``."""
    answer = pb.ModelInferResponse(model_name=name, model_version=version, id=req.id or "")
    raw = []
    for out_name in req.binary_outputs or outputs:
        arr = outputs[out_name]
        answer.outputs.add(name=out_name, datatype=from_numpy(arr.dtype), shape=arr.shape)
        raw.append(codec.encode_raw(arr))
    answer.raw_output_contents.extend(raw)
    echoed = {k: v for k, v in req.parameters.items() if k not in codec.RESERVED_PARAMETERS and v is not None}
    if parameters:
        echoed.update((k, v) for k, v in parameters.items() if v is not None)
    for key, value in echoed.items():
        answer.parameters[key].CopyFrom(_parameter(value))
    return answer
