"""HTTP routes of the statistics and model repository extensions (the logic: transport/extensions.py).

    GET  /v2/models/stats                                   every loaded version of every model
    GET  /v2/models/{name}[/versions/{version}]/stats        one model, or one version
    POST /v2/repository/index                               {"ready": true} for the ready versions only
    POST /v2/repository/models/{name}/load                  {"parameters": {"version": "2"}} for one version
    POST /v2/repository/models/{name}/unload                (repository routes: Authorization: Bearer TOKEN)

The repository routes exist only while the admin token is set (``INFERLANE_ADMIN_TOKEN``), like
the admin API: without it their paths answer 404. The statistics routes are always on.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferlane.core.errors import InvalidInput
from inferlane.core.metrics import Metrics
from inferlane.rollout.registry import ModelRegistry
from inferlane.rollout.versions import VersionOrders
from inferlane.transport.extensions import (
    load_model,
    repository_index,
    repository_version,
    statistics,
    unload_model,
)
from inferlane.transport.http.admin import MAX_BODY_BYTES, AdminToken
from inferlane.transport.http.body import json_response as _json
from inferlane.transport.http.body import read_json_object


async def _body(request: Request, body_timeout_s: float) -> dict[str, Any]:
    """The JSON object a repository call carries (an empty body is ``{}``)."""
    return await read_json_object(request, MAX_BODY_BYTES, body_timeout_s, '{"parameters": {"version": "2"}}')


def _parameters(doc: dict[str, Any]) -> dict[str, Any]:
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("parameters must be a JSON object")
    return params


def extension_routes(registry: ModelRegistry, metrics: Metrics, orders: VersionOrders, token: AdminToken | None,
                     body_timeout_s: float = 30.0) -> list[Route]:
    """The statistics routes, and the repository routes when ``token`` is set. They go before the
    ``/v2/models/{name}`` route, which would take ``stats`` for a model's name."""

    async def stats(request: Request) -> Response:
        return _json(statistics(registry, metrics, request.path_params.get("name", ""),
                                request.path_params.get("version", "")))

    routes = [
        Route("/v2/models/stats", stats, methods=["GET"]),
        Route("/v2/models/{name}/stats", stats, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/stats", stats, methods=["GET"]),
    ]
    if token is None:
        return routes

    async def index(request: Request) -> Response:
        token.check(request.headers.get("authorization"))
        ready = (await _body(request, body_timeout_s)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("ready must be true or false")
        return _json(repository_index(registry, ready))

    async def load(request: Request) -> Response:
        token.check(request.headers.get("authorization"))
        name = request.path_params["name"]
        version = repository_version(_parameters(await _body(request, body_timeout_s)))
        loaded = await load_model(orders, registry, name, version)
        return _json({"model": name, "loaded": loaded, "versions": registry.versions(name)})

    async def unload(request: Request) -> Response:
        token.check(request.headers.get("authorization"))
        name = request.path_params["name"]
        version = repository_version(_parameters(await _body(request, body_timeout_s)))
        unloaded = await unload_model(orders, registry, name, version)
        return _json({"model": name, "unloaded": unloaded, "versions": registry.versions(name)})

    return [
        *routes,
        Route("/v2/repository/index", index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", unload, methods=["POST"]),
    ]
