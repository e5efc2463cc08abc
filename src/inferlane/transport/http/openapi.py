"""The OpenAPI 3.1 document for the HTTP API, generated from the pydantic models below.

The models document the wire format; the hot path parses with orjson and codec.py, which
enforces the same rules (tests/test_http_fuzz.py fuzzes the server with this document and fails
when a request the schema forbids is accepted, or a response does not match it).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema, models_json_schema

from inferlane import __version__
from inferlane.core.datatypes import DATATYPES

DatatypeName = Literal[DATATYPES]  # type: ignore[valid-type]
Dimension = Annotated[int, Field(ge=0)]

# Request models leave additionalProperties open: the server ignores fields it does not know,
# as Open Inference Protocol servers do. Everything declared is checked by codec.py.


class InputParameters(BaseModel):
    binary_data_size: int | None = Field(
        default=None, ge=0,
        description="Bytes of this tensor in the binary part of the body (binary tensor extension)")


class RequestInput(BaseModel):
    """One input tensor. ``data`` is row-major, flat or nested; omit it and set
    ``parameters.binary_data_size`` to send the tensor in the binary part of the body."""

    name: str = Field(min_length=1, max_length=256)
    shape: list[Dimension] = Field(min_length=1, max_length=16)
    datatype: DatatypeName
    parameters: InputParameters | None = None
    data: list[Any]


class OutputParameters(BaseModel):
    binary_data: bool | None = Field(default=None, description="Return this output in binary")


class RequestOutput(BaseModel):
    name: str
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    timeout: float | None = Field(
        default=None, ge=0, le=3.6e9,
        description="Deadline in microseconds (as Triton clients send it)")
    binary_data_output: bool | None = Field(default=None,
                                            description="Default for every output's binary_data")
    routing_key: str | None = Field(
        default=None, min_length=1, max_length=1024,
        description="Sticky routing: the same key always reaches the same model version during a rollout "
                    "(as the inferlane-routing-key header; the header wins)")
    key: Annotated[str, Field(min_length=1, max_length=1024)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(min_length=1)] | None = Field(
        default=None,
        description="Hybrid models (docs/hybrid.md): the key, or keys, whose precomputed answers to serve; with "
                    "inputs, one row per key, scored live where no fresh stored answer exists")


class InferenceRequest(BaseModel):
    """Output names must be unique; with ``outputs`` absent or empty, every output is returned. ``inputs``
    may be left out only when ``parameters.key`` names precomputed answers (a hybrid model)."""

    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] | None = Field(default=None, min_length=1)
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
    parameters: dict[str, Any] | None = None
    """The request's parameters, echoed back (except ``timeout``, ``binary_data_output``, ``routing_key`` and
    ``key``); a keyed request's answer adds ``source`` (precomputed, live or mixed), ``age_s`` and
    ``model_version``, and per key ``sources`` and ``ages_s`` when it named several."""
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
    """Rows (``instances``): each a list of features, or an object of named inputs. Or columns
    (``inputs``): an object of named inputs, or the one input's rows. At most one of the two, and one
    of them unless ``key`` names precomputed answers (a hybrid model)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["instances"]},
                                                           {"required": ["inputs"]}, {"required": ["key"]}],
                                                 "not": {"required": ["instances", "inputs"]}})
    # SkipJsonSchema: absent is fine, but null is not (the server refuses it).
    instances: Annotated[list[Any], Field(min_length=1)] | SkipJsonSchema[None] = None
    inputs: dict[str, Any] | list[Any] | SkipJsonSchema[None] = None
    signature_name: str | SkipJsonSchema[None] = Field(None, description="Accepted and ignored")
    routing_key: Annotated[str, Field(min_length=1, max_length=1024)] | SkipJsonSchema[None] = Field(
        None, description="Sticky routing: the same key always reaches the same model version during a rollout")
    key: str | list[str] | SkipJsonSchema[None] = Field(
        None, description="Hybrid models: the key(s) of precomputed answers, beside or instead of the instances")


class ServerReady(BaseModel):
    ready: bool
    error: str | None = Field(default=None, description="Why loading failed, if it did")
    stores: dict[str, dict[str, Any]] | None = Field(
        default=None, description="Hybrid and feature stores: whether each answers (a store that is down leaves the "
                                  "server ready; requests with inputs are scored live)")


class ModelReady(BaseModel):
    name: str
    ready: bool


class Live(BaseModel):
    live: bool


class V1PredictResponse(BaseModel):
    predictions: list[Any]


class JobSubmitRequest(BaseModel):
    """A V2 inference request run asynchronously. Give ``inputs`` or ``input_uri`` (an s3:// object
    under a prefix INFERLANE_JOBS_S3_ALLOW lists, or a file under INFERLANE_JOBS_LOCAL_ROOT, holding a
    V2 request body)."""

    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] | None = Field(default=None, min_length=1)
    outputs: list[RequestOutput] | None = None
    input_uri: str | None = Field(default=None, min_length=1, max_length=2048)
    callback_url: str | None = Field(default=None, min_length=1, max_length=2048,
                                     description="POSTed the outcome, signed with HMAC-SHA256 over the time, "
                                                 "job id, this URL and the body (Inferlane-Signature)")
    output_uri: str | None = Field(default=None, min_length=1, max_length=2048,
                                   description="Folder or s3:// prefix to write the result to instead of inline")


class JobCallback(BaseModel):
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    error: str | None


class JobSummary(BaseModel):
    """A job as a listing shows it: everything but its result (listings never read payloads)."""

    id: str
    model: str
    version: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
    attempts: int
    max_attempts: int
    error: str | None
    output_uri: str | None
    input_uri: str | None
    idempotency_key: str | None
    tenant: str | None = Field(description="The API key's tenant that owns the job (null without API keys)")
    callback_url: str | None
    callback: JobCallback | None = Field(description="Delivery of the callback, once the job finished")
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    available_at: float
    expires_at: float | None
    status_url: str


class Job(JobSummary):
    result: dict[str, Any] | None = Field(description="The V2 inference response, once succeeded")


class JobList(BaseModel):
    jobs: list[JobSummary]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


_ERRORS = {
    "400": "Malformed body, or a wrong tensor name, datatype or shape (the message names it)",
    "404": "Unknown model or version",
    "408": "The headers or body were not received in time (INFERLANE_HEADER_TIMEOUT_S, INFERLANE_BODY_TIMEOUT_S)",
    "409": "The job is not queued, so it cannot be cancelled",
    "413": "Body or tensor larger than the model's limit",
    "503": "Queue full (with Retry-After) or model not ready",
    "504": "Deadline passed before or during processing",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying (queue full)",
                                "schema": {"type": "integer", "minimum": 1}}}
_BINARY_HEADER = {
    "name": "Inference-Header-Content-Length", "in": "header", "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "Binary tensor extension: the body is this many bytes of JSON, then the raw "
                   "tensors that the inputs' parameters.binary_data_size describe",
}


def _path_params(params: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params]


def _op(summary: str, ok: str, body: str | None = None, errors: tuple[str, ...] = (),
        params: tuple[str, ...] = (), binary: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary,
                          "responses": {"200": {"description": "OK", "content": _content(ok)}}}
    for code in errors:
        op["responses"][code] = {"description": _ERRORS[code], "content": _content("Error")}
    if "503" in errors:
        op["responses"]["503"]["headers"] = _RETRY_AFTER
    parameters = _path_params(params)
    if body is not None:
        op["requestBody"] = {"required": True, "content": _content(body)}
        parameters.append({"name": "inferlane-timeout-ms", "in": "header", "required": False,
                           "schema": {"type": "number", "minimum": 0, "maximum": 3600000},
                           "description": "Deadline for this request in milliseconds"})
        parameters.append({"name": "inferlane-routing-key", "in": "header", "required": False,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
                           "description": "Sticky routing: the same key always reaches the same model version"})
    if binary:
        parameters.append(_BINARY_HEADER)
        op["responses"]["200"]["content"]["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary",
                       "description": "Binary tensor extension: Inference-Header-Content-Length "
                                      "bytes of InferenceResponse JSON, then the raw outputs"}}
    if parameters:
        op["parameters"] = parameters
    return op


def _ready_op(summary: str, ok: str, params: tuple[str, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "ready", "content": _content(ok)},
        "503": {"description": "not ready", "content": _content(ok)}}}
    if params:
        op["parameters"] = _path_params(params)
        op["responses"]["404"] = {"description": _ERRORS["404"], "content": _content("Error")}
    return op


@functools.cache
def openapi_document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        RequestInput, RequestOutput, InferenceRequest, ResponseOutput, InferenceResponse,
        TensorMetadata, ModelMetadata, ServerMetadata, Error, V1PredictRequest, V1PredictResponse,
        ServerReady, ModelReady, Live, JobSubmitRequest, JobCallback, JobSummary, Job, JobList]
    _, schema = models_json_schema([(m, "validation") for m in models],
                                   ref_template="#/components/schemas/{model}")
    infer_errors = ("400", "404", "408", "413", "503", "504")
    paths: dict[str, Any] = {
        "/v2": {"get": _op("Server metadata", "ServerMetadata")},
        "/v2/health/live": {"get": _op("Liveness", "Live")},
        "/v2/health/ready": {"get": _ready_op("Readiness: every model loaded and warmed up",
                                              "ServerReady")},
    }
    for prefix, params in (("/v2/models/{name}", ("name",)),
                           ("/v2/models/{name}/versions/{version}", ("name", "version"))):
        paths[prefix] = {"get": _op("Model metadata", "ModelMetadata", errors=("404",),
                                    params=params)}
        paths[prefix + "/ready"] = {"get": _ready_op("Model readiness", "ModelReady", params)}
        paths[prefix + "/infer"] = {"post": _op("Inference (Open Inference Protocol V2)",
                                                "InferenceResponse", "InferenceRequest",
                                                infer_errors, params, binary=True)}
    for path, params in (("/v1/models/{name}:predict", ("name",)),
                         ("/v1/models/{name}/versions/{version}:predict", ("name", "version"))):
        paths[path] = {"post": _op("Prediction, TF Serving / KServe V1 form", "V1PredictResponse",
                                   "V1PredictRequest", infer_errors, params)}
    for path, params in (("/v2/models/{name}/jobs", ("name",)),
                         ("/v2/models/{name}/versions/{version}/jobs", ("name", "version"))):
        op = _op("Submit an asynchronous job", "Job", "JobSubmitRequest", ("400", "404", "408", "413", "503"),
                 params, binary=False)
        op["responses"]["202"] = op["responses"].pop("200")
        op["responses"]["202"]["description"] = "Accepted: the job is durable; poll Location or wait for the callback"
        op["parameters"] = [p for p in op["parameters"]
                            if p["name"] not in ("inferlane-timeout-ms", "inferlane-routing-key")] + [
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "schema": {"type": "string", "minLength": 1, "maxLength": 256},
             "description": "The same key returns the same job, never a second one"}]
        paths[path] = {"post": op}
    paths["/v2/jobs"] = {"get": {
        "summary": "List jobs, newest first",
        "parameters": [
            {"name": "status", "in": "query", "required": False,
             "schema": {"enum": ["queued", "running", "succeeded", "failed", "cancelled", "expired"]}},
            {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
        "responses": {"200": {"description": "OK", "content": _content("JobList")},
                      "400": {"description": _ERRORS["400"], "content": _content("Error")}}}}
    job_param = _path_params(("job_id",))
    paths["/v2/jobs/{job_id}"] = {
        "get": {"summary": "A job's status, attempts, timings and result", "parameters": job_param,
                "responses": {"200": {"description": "OK", "content": _content("Job")},
                              "404": {"description": "No such job", "content": _content("Error")}}},
        "delete": {"summary": "Cancel a queued job", "parameters": job_param,
                   "responses": {"200": {"description": "Cancelled", "content": _content("Job")},
                                 "404": {"description": "No such job", "content": _content("Error")},
                                 "409": {"description": _ERRORS["409"], "content": _content("Error")}}}}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "responses": {"200": {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    paths["/openapi.json"] = {"get": {"summary": "This document", "responses": {"200": {
        "description": "OpenAPI 3.1",
        "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    paths["/docs"] = {"get": {"summary": "Swagger UI for this document", "responses": {"200": {
        "description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "inferlane", "version": __version__,
                 "description": "Open Inference Protocol V2 REST API with dynamic batching."},
        "paths": paths,
        "components": {"schemas": schema.get("$defs", {})},
    }


SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.35.0/"
"""Swagger UI for /docs, pinned to one release; each file is checked by the browser against its hash
below (Subresource Integrity). To update: ``npm pack swagger-ui-dist@VERSION``, then for each file
``openssl dgst -sha384 -binary package/FILE | openssl base64 -A``."""
SWAGGER_UI_SRI = {
    "swagger-ui.css": "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I",
    "swagger-ui-bundle.js": "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9",
}


def swagger_html(openapi_url: str) -> str:
    css, js = (f'{kind}="{SWAGGER_UI}{name}" integrity="{SWAGGER_UI_SRI[name]}" crossorigin="anonymous"'
               for kind, name in (("href", "swagger-ui.css"), ("src", "swagger-ui-bundle.js")))
    return f"""<!doctype html>
<html><head><title>inferlane API</title><meta charset="utf-8">
<link rel="stylesheet" {css}></head>
<body><div id="swagger-ui"></div>
<script {js}></script>
<script>SwaggerUIBundle({{url: "{openapi_url}", dom_id: "#swagger-ui"}});</script>
</body></html>"""
