"""The OpenAPI 3.1 document for the HTTP API, generated from the pydantic models below.

The models document the wire format; the hot path parses with orjson and codec.py, which
enforces the same rules (tests check both agree).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from inferlane import __version__
from inferlane.core.datatypes import DATATYPES

DatatypeName = Literal[DATATYPES]  # type: ignore[valid-type]


class RequestInput(BaseModel):
    """One input tensor. ``data`` is row-major, flat or nested; omit it and set
    ``parameters.binary_data_size`` to send the tensor in the binary part of the body."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    shape: list[int] = Field(min_length=1, max_length=16)
    datatype: DatatypeName
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """``parameters.timeout`` is a deadline in microseconds (as Triton clients send it)."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: DatatypeName
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: DatatypeName
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Error(BaseModel):
    error: str


class V1PredictRequest(BaseModel):
    """Rows (``instances``), each a list of features or an object of named inputs."""

    model_config = ConfigDict(extra="forbid")
    instances: list[Any] = Field(min_length=1)


class V1PredictResponse(BaseModel):
    predictions: list[Any]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


_ERRORS = {
    "400": "Malformed body, or a wrong tensor name, datatype or shape",
    "404": "Unknown model or version",
    "413": "Body or tensor larger than the model's limit",
    "503": "Queue full (with Retry-After) or model not ready",
    "504": "Deadline passed before or during processing",
}


def _op(summary: str, ok: str, body: str | None = None, errors: tuple[str, ...] = (),
        params: tuple[str, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": _content(ok)}}}
    for code in errors:
        op["responses"][code] = {"description": _ERRORS[code], "content": _content("Error")}
    parameters = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    if body is not None:
        op["requestBody"] = {"required": True, "content": _content(body)}
        parameters.append({"name": "inferlane-timeout-ms", "in": "header", "required": False,
                           "schema": {"type": "number", "minimum": 0, "maximum": 3600000},
                           "description": "Deadline for this request in milliseconds"})
    if parameters:
        op["parameters"] = parameters
    return op


@functools.cache
def openapi_document() -> dict[str, Any]:
    models = [RequestInput, RequestOutput, InferenceRequest, ResponseOutput, InferenceResponse,
              TensorMetadata, ModelMetadata, ServerMetadata, Error, V1PredictRequest, V1PredictResponse]
    _, schema = models_json_schema([(m, "validation") for m in models],
                                   ref_template="#/components/schemas/{model}")
    infer_errors = ("400", "404", "413", "503", "504")
    paths: dict[str, Any] = {
        "/v2": {"get": _op("Server metadata", "ServerMetadata")},
        "/v2/health/live": {"get": {"summary": "Liveness", "responses": {"200": {"description": "live"}}}},
        "/v2/health/ready": {"get": {"summary": "Readiness: every model loaded and warmed up",
                                     "responses": {"200": {"description": "ready"},
                                                   "503": {"description": "not ready"}}}},
    }
    for prefix, params in (("/v2/models/{name}", ("name",)),
                           ("/v2/models/{name}/versions/{version}", ("name", "version"))):
        paths[prefix] = {"get": _op("Model metadata", "ModelMetadata", errors=("404",), params=params)}
        paths[prefix + "/ready"] = {"get": {
            "summary": "Model readiness",
            "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                           for p in params],
            "responses": {"200": {"description": "ready"}, "404": {"description": _ERRORS["404"]},
                          "503": {"description": "not ready"}}}}
        paths[prefix + "/infer"] = {"post": _op("Inference (Open Inference Protocol V2)",
                                                "InferenceResponse", "InferenceRequest",
                                                infer_errors, params)}
    paths["/v1/models/{name}:predict"] = {"post": _op("Prediction, TF Serving / KServe V1 form",
                                                      "V1PredictResponse", "V1PredictRequest",
                                                      infer_errors, ("name",))}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition format"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "inferlane", "version": __version__,
                 "description": "Open Inference Protocol V2 REST API with dynamic batching."},
        "paths": paths,
        "components": {"schemas": schema.get("$defs", {})},
    }


def swagger_html(openapi_url: str) -> str:
    return f"""<!doctype html>
<html><head><title>inferlane API</title><meta charset="utf-8">
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "{openapi_url}", dom_id: "#swagger-ui"}});</script>
</body></html>"""
