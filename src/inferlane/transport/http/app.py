"""HTTP routes: Open Inference Protocol V2 REST, the V1 ``:predict`` form, health, metrics, docs.

Routes parse and encode only; the online lane does the work and raises InferlaneError, which
one handler maps to the status in DESIGN.md ("Error semantics") with ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from inferlane import __version__
from inferlane.core import codec
from inferlane.core.errors import InferlaneError
from inferlane.core.repository import ModelEntry
from inferlane.core.spec import ModelConfig
from inferlane.lanes.jobs import JobsLane
from inferlane.lanes.online import OnlineLane
from inferlane.lanes.online.hybrid import KeyedLane, max_keys, request_keys
from inferlane.transport.http.body import JSON, check_host, read_body, scope_headers
from inferlane.transport.http.body import json_response as _json
from inferlane.transport.http.infer import (
    ROUTING_KEY_HEADER,
    TIMEOUT_HEADER,
    VERSION_HEADER,
    InferRoute,
    error_parts,
    hidden_error,
    keyed_headers,
    match,
    match_path,
    send_parts,
    server_timing,
    timeout_s,
)
from inferlane.transport.http.jobs import job_routes
from inferlane.transport.http.openapi import openapi_document, swagger_html
from inferlane.transport.http.protocol import Headers, Parts

log = logging.getLogger(__name__)

_HOST = frozenset({b"host"})

EXTENSIONS = ["binary_tensor_data", "parameters", "statistics", "model_repository"]
"""Only extensions this server implements (``model_repository`` needs the admin token; see
transport/http/extensions.py)."""


def error_response(e: InferlaneError) -> Response:
    status, headers, body = error_parts(e)
    return Response(body, status, headers={k.decode(): v.decode() for k, v in headers if k != b"content-length"})


def _metadata(name: str, versions: list[str], config: ModelConfig) -> dict[str, Any]:
    return {
        "name": name,
        "versions": versions,
        "platform": {"onnx": "onnxruntime_onnx", "torch": "pytorch"}.get(config.runtime, config.runtime),
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                   for s in config.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                    for s in config.outputs],
    }


class FastInferApp:
    """The ASGI app: ``POST .../infer`` goes straight to its handler (transport/http/infer.py);
    everything else to Starlette, with its routing, 404/405 handling and middleware."""

    def __init__(self, app: Starlette, infer: InferRoute) -> None:
        self.app = app
        self.state = app.state
        self._infer = infer
        self._hosts = infer.hosts
        self._entries = infer.lane.registry.entries

    def direct_target(self, path: str, length: int) -> tuple[str, str | None] | None:
        """The (model, version) of an infer request the HTTP protocol may answer without ASGI
        (transport/http/protocol.py): a known model whose limit the body fits, else None (ASGI answers,
        with its 404 or its 413 before the body is read)."""
        target = match_path(path)
        if target is None:
            return None
        entry = self._entries.get(target[0])
        if entry is None or length > entry.config.limits.max_request_bytes:
            return None
        return target

    def serve_direct(self, target: object, path: str, headers: Headers, body: bytes) -> Awaitable[Parts]:
        name, version = cast(tuple[str, str | None], target)
        return self._infer.answer(name, version, path, headers, body)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # NOTE: not a coroutine itself: it hands back the handler's, one frame less on every resume.
        target = match(scope)
        if target is None:
            if self._hosts is not None and scope["type"] == "http":
                try:
                    check_host(scope_headers(scope, _HOST).get(b"host"), self._hosts)
                except InferlaneError as e:
                    return send_parts(send, *error_parts(e))
            return self.app(scope, receive, send)
        return self._infer(target[0], target[1], scope, receive, send)


def build_http_app(lane: OnlineLane,
                   lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]]
                   | None = None, *, body_timeout_s: float = 30.0, jobs: JobsLane | None = None,
                   hosts: frozenset[bytes] | None = None, admin: list[Route] | None = None,
                   keyed: KeyedLane | None = None, extensions: list[Route] | None = None) -> FastInferApp:
    """``hosts``: the Host header names answered, None for any (body.loopback_hosts). ``admin``: the
    /v2/admin routes (transport/http/admin.py), None while no admin token is set (their paths answer 404).
    ``extensions``: the statistics and model repository routes (transport/http/extensions.py)."""
    registry = lane.registry
    metrics = lane.metrics

    def entry(request: Request) -> ModelEntry:
        e, _ = registry.resolve(request.path_params["name"], request.path_params.get("version"))
        return e

    async def server_metadata(request: Request) -> Response:
        return _json({"name": "inferlane", "version": __version__, "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return _json({"live": True})

    load_error: dict[str, str] = {}  # the registry's load error -> what clients are told (logged once)

    async def ready(request: Request) -> Response:
        doc: dict[str, Any] = {"ready": registry.ready}
        if registry.load_error:
            if registry.load_error not in load_error:
                load_error[registry.load_error] = hidden_error("model loading failed", registry.load_error)
            doc["error"] = load_error[registry.load_error]
        elif jobs is not None and jobs.worker_problem is not None:  # e.g. the job store is failing
            doc = {"ready": False, "error": jobs.worker_problem}
        if keyed is not None and keyed.health():  # a store that is down leaves the server ready: live fallback
            doc["stores"] = keyed.health()
        return _json(doc, 200 if doc["ready"] else 503)

    async def model_metadata(request: Request) -> Response:
        e = entry(request)
        v = request.path_params.get("version")
        return _json(_metadata(e.name, [v] if v else list(e.versions), e.config))

    async def model_ready(request: Request) -> Response:
        e = entry(request)
        ok = registry.is_ready(e.name, request.path_params.get("version"))
        return _json({"name": e.name, "ready": ok}, 200 if ok else 503)

    route = InferRoute(lane, body_timeout_s, hosts, keyed)

    async def infer(request: Request) -> Response:
        """Only reached for paths the fast match does not take (Starlette answers 405 and 404 around it)."""
        status, headers, body = await route.parts(request.path_params["name"], request.path_params.get("version"),
                                                  request.scope, request.receive)
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers if k != b"content-length"})

    async def v1_predict(request: Request) -> Response:
        e = entry(request)
        body = await read_body(request, e.config.limits.max_request_bytes, body_timeout_s)
        v1 = codec.parse_v1_keyed(body, e.config) if keyed is not None and e.config.hybrid is not None \
            else codec.V1Request(*codec.parse_v1_request(body, e.config), None)
        key = codec.routing_key(request.headers.get(ROUTING_KEY_HEADER) or None, ROUTING_KEY_HEADER) or v1.routing_key
        version = request.path_params.get("version")
        timeout = timeout_s(request.headers.get(TIMEOUT_HEADER), {})
        if v1.key is not None:
            assert keyed is not None and e.config.hybrid is not None
            keys = request_keys({"key": v1.key}, max_keys(e.config))
            assert keys is not None
            if key is None and len(keys) == 1:
                key = keys[0]
            mv = registry.get(e.name, version, key)
            kr = await keyed.infer(mv, v1.inputs or None, keys, timeout, routed=version is None, key=key)
            headers = {k.decode(): v.decode() for k, v in keyed_headers(kr)}
            return Response(codec.encode_v1_predictions(kr.outputs, kr.parameters()),
                            headers={**headers, VERSION_HEADER: kr.model.version}, media_type=JSON)
        result = await lane.infer(e.name, version, v1.inputs, timeout, key)
        return Response(codec.encode_v1_predictions(result.prediction.outputs),
                        headers={"Server-Timing": server_timing(result).decode(),
                                 VERSION_HEADER: result.model.version}, media_type=JSON)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.scrape()), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return _json(openapi_document())

    async def docs(request: Request) -> Response:
        return HTMLResponse(swagger_html("/openapi.json"))

    routes = [
        *(extensions or []),  # the statistics and repository routes (transport/http/extensions.py), first
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v1/models/{name}:predict", v1_predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:predict", v1_predict, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]

    if jobs is not None:
        routes += job_routes(jobs, body_timeout_s)
    if admin is not None:
        routes += admin

    async def inferlane_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InferlaneError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        message = exc.detail
        path = request.url.path[:200]
        if exc.status_code == 404:
            message = f"no route {path!r} (see /openapi.json)"
        elif exc.status_code == 405:
            message = (f"method {request.method} is not allowed on {path!r}; "
                       f"allowed: {headers.get('Allow', '')}")
        return _json({"error": message}, exc.status_code, headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _json({"error": hidden_error("internal error", repr(exc))}, 500)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={InferlaneError: inferlane_error, HTTPException: http_error,
                            Exception: unexpected},
    )
    return FastInferApp(app, route)


