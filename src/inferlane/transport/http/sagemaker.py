"""The SageMaker container contract: ``GET /ping`` and ``POST /invocations`` (``serve --sagemaker``).

    routes = sagemaker_routes(lane, model_for_sagemaker(registry.entries, None), ready, body_timeout_s=30)

SageMaker runs the image as ``docker run IMAGE serve``, sends traffic to port 8080 and mounts the
model under /opt/ml/model (server/settings.py sets those defaults). It knows one model per
container: ``/invocations`` goes to the repository's only model, or to the one named by
``SAGEMAKER_INFERLANE_MODEL`` / ``--sagemaker-model``.

Bodies (``Content-Type``):

- ``application/json``: a V2 request (``{"inputs": [{"name", "datatype", "shape", "data"}]}``) or a V1
  one (``{"instances": [...]}`` or ``{"inputs": {...}}``).
- ``text/csv``: rows of numbers, no header, for a model with one numeric input; each row is one
  request row, with as many fields as the input has elements per row.

Answers (``Accept``): ``application/json`` (the default; a V2 request gets a V2 answer, the others
``{"predictions": ...}``) or ``text/csv`` (one line per row: every output's values of that row).
The work goes through the same online lane as ``/v2`` (batcher, limits, deadlines), and errors are
the same table (transport/http/infer.py ``error_parts``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferlane.core import codec
from inferlane.core.errors import ConfigError, InvalidInput, PayloadTooLarge
from inferlane.core.inputs.values import ValueProblem, from_json, invalid
from inferlane.core.repository import ModelEntry
from inferlane.core.spec import ModelConfig
from inferlane.lanes.online import OnlineLane
from inferlane.transport.http.body import JSON, read_body
from inferlane.transport.http.infer import TIMEOUT_HEADER, VERSION_HEADER, server_timing, timeout_s

CSV = "text/csv"
MODEL_ENV = "SAGEMAKER_INFERLANE_MODEL"
"""Environment variable naming the model that /invocations serves when the repository holds several."""
_MAX_CSV_FIELD = 1024
"""Longest field of a CSV body, in characters (a number is far shorter)."""
_NUMERIC = ("FP", "INT", "UINT")


def model_for_sagemaker(entries: Mapping[str, ModelEntry], chosen: str | None) -> str:
    """The model /invocations serves: ``chosen`` (which must exist), else the repository's only one."""
    if chosen:
        if chosen not in entries:
            raise ConfigError(f"SageMaker model {chosen!r} is not in the repository (it has {sorted(entries)}); "
                              f"set {MODEL_ENV} or --sagemaker-model to one of them")
        return chosen
    if len(entries) != 1:
        raise ConfigError(f"SageMaker mode serves one model and the repository has {len(entries)} "
                          f"({sorted(entries)}): choose one with {MODEL_ENV} or --sagemaker-model")
    return next(iter(entries))


def _media(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _accept(value: str | None) -> str:
    """The answer's media type: the first of ``Accept`` that is JSON or CSV (``*/*`` or none: JSON)."""
    if not value:
        return JSON
    for part in value.split(","):
        media = _media(part)
        if media in (JSON, CSV):
            return media
        if media in ("*/*", "application/*"):
            return JSON
        if media == "text/*":
            return CSV
    raise InvalidInput(f"Accept {value[:100]!r} is not served: ask for {JSON} or {CSV}")


def _number(field: str, datatype: str) -> float | int:
    text = field.strip()
    if datatype.startswith("FP"):
        value = float(text)  # "nan", "inf" parse; the value rules below refuse them
        return value
    return int(text)


def parse_csv(body: bytes, config: ModelConfig) -> dict[str, np.ndarray]:
    """Rows of numbers (no header) for a model with one numeric input; InvalidInput naming the row and
    field at fault, PayloadTooLarge past ``max_elements_per_input``."""
    if len(config.inputs) != 1 or not config.inputs[0].datatype.startswith(_NUMERIC):
        raise InvalidInput(f"text/csv bodies are for a model with one numeric input; model {config.name} has "
                           f"{[(s.name, s.datatype) for s in config.inputs]}: send application/json")
    spec = config.inputs[0]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"the CSV body is not UTF-8 (byte {e.start})") from None
    per_row = spec.shape[1:]
    fixed = all(d >= 0 for d in per_row)
    width = math.prod(per_row) if fixed else None
    if not fixed and len(per_row) != 1:
        raise InvalidInput(f"input {spec.name!r} has shape {list(spec.shape)}: CSV rows fit only a fixed "
                           "or one-dimensional row; send application/json")
    limit = config.limits.max_elements_per_input
    rows: list[list[float | int]] = []
    count = 0
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for line in reader:
            if not line or (len(line) == 1 and not line[0].strip()):
                continue  # blank lines (a trailing newline)
            n = len(rows) + 1
            if width is not None and len(line) != width:
                raise InvalidInput(f"CSV row {n} has {len(line)} fields; input {spec.name!r} takes {width} per row")
            if rows and len(line) != len(rows[0]):
                raise InvalidInput(f"CSV row {n} has {len(line)} fields; row 1 has {len(rows[0])}")
            count += len(line)
            if count > limit:
                raise PayloadTooLarge(f"input {spec.name!r}: more than {limit} elements in the CSV body; "
                                      f"the limit is {limit}")
            values: list[float | int] = []
            for j, field in enumerate(line, 1):
                if len(field) > _MAX_CSV_FIELD:
                    raise InvalidInput(f"CSV row {n} field {j} is {len(field)} characters long; "
                                       f"a number is at most {_MAX_CSV_FIELD}")
                try:
                    values.append(_number(field, spec.datatype))
                except ValueError:
                    raise InvalidInput(f"CSV row {n} field {j}: {field[:40]!r} is not a number of "
                                       f"{spec.datatype}") from None
            rows.append(values)
    except csv.Error as e:
        raise InvalidInput(f"the body is not valid CSV (line {reader.line_num}): {e}") from None
    if not rows:
        raise InvalidInput("the CSV body has no rows: send one line of numbers per row")
    try:
        arr = from_json(rows, spec.datatype)
    except ValueProblem as e:
        raise invalid(spec.name, e) from None
    if fixed:
        arr = arr.reshape((len(rows), *per_row))
    return {spec.name: arr}


def _is_v2(doc: Any) -> bool:
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    return isinstance(inputs, list) and bool(inputs) and all(isinstance(t, dict) and "name" in t for t in inputs)


def _csv_rows(outputs: Mapping[str, np.ndarray]) -> bytes:
    """One line per row: the values of every output of that row, in the model's output order."""
    arrays = [a.reshape((a.shape[0], -1)) if a.ndim > 1 else a.reshape((-1, 1)) for a in outputs.values()]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for i in range(arrays[0].shape[0]):
        writer.writerow([_plain(v) for a in arrays for v in a[i]])
    return out.getvalue().encode()


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.floating):
        return str(v)  # the shortest decimal that reads back as the same FP32/FP64 value, as JSON answers have it
    return v.item() if isinstance(v, np.generic) else v


def sagemaker_routes(lane: OnlineLane, model: str, ready: Callable[[], bool], *,
                     body_timeout_s: float = 30.0) -> list[Route]:
    """``/ping`` (200 when ``ready()``, else 503) and ``/invocations`` on ``model``."""
    registry = lane.registry

    async def ping(request: Request) -> Response:
        ok = ready()
        return Response(orjson.dumps({"ready": ok}), 200 if ok else 503, media_type=JSON)

    async def invocations(request: Request) -> Response:
        answer_type = _accept(request.headers.get("accept"))
        mv = registry.get(model, None)
        config = mv.config
        content_type = _media(request.headers.get("content-type")) or JSON
        if content_type not in (JSON, CSV):
            raise InvalidInput(f"Content-Type {content_type[:100]!r} is not served: send {JSON} or {CSV}")
        body = await read_body(request, config.limits.max_request_bytes, body_timeout_s)
        v2: codec.InferRequest | None = None
        if content_type == CSV:
            inputs = parse_csv(body, config)
        else:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise InvalidInput(f"body is not valid JSON: {e}") from None
            if _is_v2(doc):
                v2 = codec.parse_infer_request(body, None, config.limits.max_elements_per_input)
                codec.check_requested_outputs(v2, config)
                inputs = v2.inputs
            else:
                inputs = codec.parse_v1_instances(body, config)
        timeout = timeout_s(request.headers.get(TIMEOUT_HEADER), v2.parameters if v2 is not None else {})
        result = await lane.infer(model, None, inputs, timeout)
        outputs = result.prediction.outputs
        headers = {"Server-Timing": server_timing(result).decode(), VERSION_HEADER: result.model.version}
        if answer_type == CSV:
            return Response(_csv_rows(outputs), headers=headers, media_type=CSV)
        if v2 is not None:
            v2.binary_default = False
            v2.binary_outputs = dict.fromkeys(v2.binary_outputs, False)  # JSON was asked for: no binary part
            out, _ = codec.encode_infer_response(result.model.name, result.model.version, outputs, v2)
            return Response(out, headers=headers, media_type=JSON)
        return Response(codec.encode_v1_predictions(outputs), headers=headers, media_type=JSON)

    return [Route("/ping", ping, methods=["GET"]), Route("/invocations", invocations, methods=["POST"])]

