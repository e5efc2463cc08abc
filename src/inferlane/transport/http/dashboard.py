"""HTTP routes of the live dashboard (the numbers: transport/dashboard.py; the page: static/).

    GET /dashboard                    the page: HTML, one script and one stylesheet, no CDN, no build step
    GET /dashboard/data               the JSON snapshot the page polls every second
    GET /dashboard/advise?model=...   the pattern advisor on the profile measured while serving (docs/choosing.md)
    GET /dashboard/static/{name}      the page's own files (a fixed list read at start; anything else 404)

Public like ``/metrics``: the page shows what the Prometheus series already tell anyone who can reach
the port (rates, latencies, queues, traffic weights, rollout steps, backlogs, lanes' lag and progress),
never tokens, API keys, job contents or a rollout's check details. Like every route but inference, it
answers only to the Host names the server accepts (loopback by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferlane.advise.advisor import advise
from inferlane.advise.live import profile_from_stats, workload_from_query
from inferlane.core.errors import ConfigError, InvalidInput
from inferlane.core.metrics import Metrics
from inferlane.rollout.controller import RolloutController
from inferlane.rollout.registry import ModelRegistry
from inferlane.store.lanes import read_reports
from inferlane.transport.dashboard import DashboardView, read_series, rollout_rows
from inferlane.transport.http.body import json_response as _json

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".txt": "text/plain; charset=utf-8"}
_HEADERS = {
    # Only this server's own files: the page keeps working, and leaks nothing, with no network access.
    "content-security-policy": "default-src 'self'; img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _assets() -> dict[str, tuple[bytes, str]]:
    """Every file of static/ by name, with its content type, read once."""
    folder = resources.files("inferlane.transport.http") / "static"
    found = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1] if "." in item.name else ""
        if item.is_file() and suffix in _TYPES:
            found[item.name] = (item.read_bytes(), _TYPES[suffix])
    return found


def dashboard_routes(registry: ModelRegistry, metrics: Metrics, controller: RolloutController,
                     lanes: Callable[[str, float], list[dict[str, Any]]] = read_reports) -> list[Route]:
    """The three routes. ``lanes(kind, now)``: the recent stream and batch reports (store/lanes.py)."""
    assets = _assets()
    view = DashboardView(lambda: read_series(metrics.scrape()))

    def snapshot() -> dict[str, Any]:  # store reads (rollouts, lane reports): off the event loop
        now = time.time()
        return view.data({"ready": registry.ready, "rollouts": rollout_rows(controller.statuses()),
                          "streams": lanes("stream", now), "batches": lanes("batch", now)})

    async def page(request: Request) -> Response:
        body, kind = assets["dashboard.html"]
        return Response(body, media_type=kind, headers={**_HEADERS, "cache-control": "no-cache"})

    async def data(request: Request) -> Response:
        return _json(await run_in_threadpool(snapshot), headers={**_HEADERS, "cache-control": "no-store"})

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return _json({"error": f"no dashboard file {request.path_params['name'][:100]!r}"}, 404)
        return Response(found[0], media_type=found[1], headers={**_HEADERS, "cache-control": "no-cache"})

    def advice_for(query: dict[str, str]) -> dict[str, Any]:  # the statistics files: off the event loop
        name = query.get("model")
        if not name:
            raise InvalidInput("model is required (the model to advise on)")
        mv = registry.get(name, query.get("version") or None)  # ModelNotFound: 404
        try:
            workload = workload_from_query(query)
            prof = profile_from_stats(mv.name, mv.version, mv.config.runtime, metrics.stats_doc(mv.name, mv.version),
                                      threads=mv.threads.threads if mv.threads is not None else 0)
            return advise(workload, prof, model_folder=f"./models/{mv.name}").to_dict()
        except ConfigError as e:
            raise InvalidInput(e.message) from None

    async def advice(request: Request) -> Response:
        """The pattern advisor (docs/choosing.md) on the profile this server measured while serving."""
        return _json(await run_in_threadpool(advice_for, dict(request.query_params)),
                     headers={**_HEADERS, "cache-control": "no-store"})

    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/data", data, methods=["GET"]),
        Route("/dashboard/advise", advice, methods=["GET"]),
        Route("/dashboard/static/{name:path}", asset, methods=["GET"]),
    ]
