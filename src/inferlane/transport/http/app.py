"""HTTP routes: Open Inference Protocol V2 REST, the V1 ``:predict`` form, health, metrics, docs.

Routes parse and encode only; the online lane does the work and raises InferlaneError, which
one handler maps to the status in DESIGN.md ("Error semantics") with ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from inferlane import __version__
from inferlane.core import codec
from inferlane.core.errors import InferlaneError, InvalidInput, QueueFull
from inferlane.core.repository import ModelEntry
from inferlane.core.spec import ModelConfig
from inferlane.lanes.jobs import JobsLane
from inferlane.lanes.online import OnlineLane, OnlineResult
from inferlane.transport.http.body import JSON, header_int, read_body
from inferlane.transport.http.body import json_response as _json
from inferlane.transport.http.jobs import job_routes
from inferlane.transport.http.openapi import openapi_document, swagger_html

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "inferlane-timeout-ms"
EXTENSIONS = ["binary_tensor_data", "parameters", "statistics"]


def error_response(e: InferlaneError) -> Response:
    headers = {"Retry-After": str(e.retry_after)} if isinstance(e, QueueFull) else None
    return _json({"error": e.message}, e.http_status, headers)


_MILLISECONDS = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _timeout_s(request: Request, parameters: dict[str, Any]) -> float | None:
    """Header ``inferlane-timeout-ms`` (milliseconds) or parameter ``timeout`` (microseconds,
    as Triton clients send it); the smaller wins."""
    found: list[float] = []
    header = request.headers.get(TIMEOUT_HEADER)
    if header is not None:
        if not _MILLISECONDS.fullmatch(header):
            raise InvalidInput(f"{TIMEOUT_HEADER} must be a number of milliseconds, "
                               f"not {header[:40]!r}")
        ms = float(header)
        if not 0 <= ms <= 3_600_000:
            raise InvalidInput(f"{TIMEOUT_HEADER} must be between 0 and 3600000, not {header[:40]}")
        found.append(ms / 1000.0)
    t = parameters.get("timeout")
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 3.6e9:
            raise InvalidInput("parameters.timeout must be microseconds between 0 and 3.6e9")
        found.append(t / 1e6)
    return min(found) if found else None


def _server_timing(r: OnlineResult) -> str:
    p = r.prediction
    return (f"queue;dur={p.queue_s * 1e3:.3f}, forward;dur={p.forward_s * 1e3:.3f}, "
            f"total;dur={r.total_s * 1e3:.3f}, batch;desc=\"{p.batch_rows} rows\"")


def _metadata(name: str, versions: list[str], config: ModelConfig) -> dict[str, Any]:
    return {
        "name": name,
        "versions": versions,
        "platform": {"onnx": "onnxruntime_onnx", "sklearn": "sklearn",
                     "python": "python"}[config.runtime],
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                   for s in config.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                    for s in config.outputs],
    }


class FastInferApp:
    """The ASGI app: ``POST .../infer`` goes straight to its handler; everything else to Starlette.

    NOTE: profiling the online hot path showed about a third of the server's time in Starlette's
    router (every route's regex tried in turn) and middleware layers. The inference route needs
    neither: its errors are all InferlaneError, mapped by ``error_response``. Other routes keep
    Starlette's routing, 404/405 handling and middleware.
    """

    def __init__(self, app: Starlette, infer: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = app
        self.state = app.state
        self._infer = infer

    def _match(self, scope: Scope) -> dict[str, str] | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if not (path.startswith("/v2/models/") and path.endswith("/infer")):
            return None
        parts = path[len("/v2/models/"):-len("/infer")].split("/")
        if len(parts) == 1 and parts[0]:
            return {"name": parts[0]}
        if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
            return {"name": parts[0], "version": parts[2]}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = self._match(scope)
        if params is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await self._infer(request)
        except InferlaneError as e:
            response = error_response(e)
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            response = _json({"error": "internal error"}, 500)
        await response(scope, receive, send)


def build_http_app(lane: OnlineLane,
                   lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]]
                   | None = None, *, body_timeout_s: float = 30.0, jobs: JobsLane | None = None) -> FastInferApp:
    registry = lane.registry
    metrics = lane.metrics

    def entry(request: Request) -> ModelEntry:
        e, _ = registry.resolve(request.path_params["name"], request.path_params.get("version"))
        return e

    async def server_metadata(request: Request) -> Response:
        return _json({"name": "inferlane", "version": __version__, "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        doc: dict[str, Any] = {"ready": registry.ready}
        if registry.load_error:
            doc["error"] = registry.load_error
        return _json(doc, 200 if registry.ready else 503)

    async def model_metadata(request: Request) -> Response:
        e = entry(request)
        v = request.path_params.get("version")
        return _json(_metadata(e.name, [v] if v else list(e.versions), e.config))

    async def model_ready(request: Request) -> Response:
        e = entry(request)
        ok = registry.is_ready(e.name, request.path_params.get("version"))
        return _json({"name": e.name, "ready": ok}, 200 if ok else 503)

    async def infer(request: Request) -> Response:
        e = entry(request)
        header_len = header_int(request, codec.HEADER_LENGTH)
        body = await read_body(request, e.config.limits.max_request_bytes, body_timeout_s)
        req = codec.parse_infer_request(body, header_len, e.config.limits.max_elements_per_input)
        codec.check_requested_outputs(req, e.config)
        result = await lane.infer(e.name, request.path_params.get("version"), req.inputs,
                                  _timeout_s(request, req.parameters))
        out, out_header_len = codec.encode_infer_response(
            result.model.name, result.model.version, result.prediction.outputs, req)
        headers = {"Server-Timing": _server_timing(result)}
        if out_header_len is not None:
            headers[codec.HEADER_LENGTH] = str(out_header_len)
            return Response(out, headers=headers, media_type="application/octet-stream")
        return Response(out, headers=headers, media_type=JSON)

    async def v1_predict(request: Request) -> Response:
        e = entry(request)
        body = await read_body(request, e.config.limits.max_request_bytes, body_timeout_s)
        inputs = codec.parse_v1_instances(body, e.config)
        result = await lane.infer(e.name, request.path_params.get("version"), inputs,
                                  _timeout_s(request, {}))
        return Response(codec.encode_v1_predictions(result.prediction.outputs),
                        headers={"Server-Timing": _server_timing(result)}, media_type=JSON)

    async def prometheus(request: Request) -> Response:
        for mv in registry.loaded():
            if mv.batcher is not None:
                depth = mv.batcher.queue_depth
                metrics.queue_depth.labels(mv.name, mv.version, "online").set(depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return _json(openapi_document())

    async def docs(request: Request) -> Response:
        return HTMLResponse(swagger_html("/openapi.json"))

    routes = [
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
        return _json({"error": f"internal error: {type(exc).__name__}"}, 500)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={InferlaneError: inferlane_error, HTTPException: http_error,
                            Exception: unexpected},
    )
    return FastInferApp(app, infer)


