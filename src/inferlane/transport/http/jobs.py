"""HTTP routes of the jobs lane: submit (202), status, list, cancel.

With API keys configured every route needs ``Authorization: Bearer KEY`` (401 without a valid one)
and sees only the jobs of the key's tenant: another tenant's job is 404, like a missing one."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferlane.core import codec, tracing
from inferlane.core.errors import Conflict, InvalidInput, NotFound
from inferlane.lanes.jobs import JobsLane
from inferlane.lanes.jobs.lane import RawRequest
from inferlane.store.jobs import JobRecord, JobStatus
from inferlane.transport.http.body import header_int, int_header, read_body
from inferlane.transport.http.body import json_response as _json

IDEMPOTENCY_HEADER = "idempotency-key"


def _public(job: JobRecord, *, with_result: bool = True) -> dict[str, Any]:
    return {**job.to_public(with_result=with_result), "status_url": f"/v2/jobs/{job.id}"}


def _optional_str(doc: dict[str, Any], key: str) -> str | None:
    v = doc.get(key)
    if v is not None and (not isinstance(v, str) or not v or len(v) > 2048):
        raise InvalidInput(f"{key} must be a non-empty string of at most 2048 characters")
    return v


def job_routes(lane: JobsLane, body_timeout_s: float) -> list[Route]:

    def tenant(request: Request) -> str:
        return lane.tenant(request.headers.get("authorization"))

    async def submit(request: Request) -> Response:
        owner = tenant(request)
        name = request.path_params["name"]
        entry, _ = lane.registry.resolve(name, request.path_params.get("version"))
        body = await read_body(request, entry.config.limits.max_request_bytes, body_timeout_s)
        header_length = header_int(request, codec.HEADER_LENGTH)
        try:
            doc = orjson.loads(body[:header_length] if header_length is not None else body)
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"body is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidInput("the body must be a JSON object")
        inputs = request_id = parameters = raw = None
        if doc.get("inputs") is not None:
            req = codec.parse_infer_request(body, header_length, entry.config.limits.max_elements_per_input)
            inputs, request_id, parameters = req.inputs, req.id, req.parameters
            raw = RawRequest(body, header_length)  # stored as received: the worker parses what online would
        job, created = await lane.submit(
            name, request.path_params.get("version"), inputs=inputs, input_uri=_optional_str(doc, "input_uri"),
            request_id=request_id, parameters=parameters,
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
            callback_url=_optional_str(doc, "callback_url"), output_uri=_optional_str(doc, "output_uri"),
            tenant=owner, raw=raw, trace_parent=request.headers.get(tracing.TRACEPARENT))
        headers = {"Location": f"/v2/jobs/{job.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return _json(_public(job), 202, headers)

    async def status(request: Request) -> Response:
        job = await lane.get(request.path_params["job_id"], tenant(request))
        if job is None:
            raise NotFound(f"no job {request.path_params['job_id']!r}")
        return _json(_public(job))

    async def cancel(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = await lane.cancel(job_id, tenant(request))
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if job.status != JobStatus.CANCELLED:
            raise Conflict(f"job {job_id} is {job.status.value}; only queued jobs can be cancelled")
        return _json(_public(job))

    async def listing(request: Request) -> Response:
        owner = tenant(request)
        q = request.query_params
        raw_status = q.get("status")
        try:
            status_filter = None if raw_status is None else JobStatus(raw_status)  # "?status=" is a mistake
        except ValueError:
            raise InvalidInput(f"status must be one of {[s.value for s in JobStatus]}") from None
        limit = int_header(q.get("limit", "100"), "limit")
        if limit is None or not 1 <= limit <= 1000:
            raise InvalidInput("limit must be an integer from 1 to 1000")
        jobs = await lane.list(status_filter, limit, q.get("model"), owner)
        return _json({"jobs": [_public(j, with_result=False) for j in jobs]})

    return [
        Route("/v2/models/{name}/jobs", submit, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/jobs", submit, methods=["POST"]),
        Route("/v2/jobs", listing, methods=["GET"]),
        Route("/v2/jobs/{job_id}", status, methods=["GET"]),
        Route("/v2/jobs/{job_id}", cancel, methods=["DELETE"]),
    ]
