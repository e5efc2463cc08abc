"""The admin HTTP API: hot load and unload of versions, the traffic routes, rollouts, drift.

    routes = admin_routes(registry, controller, AdminToken(settings.admin_token))
    # POST /v2/admin/models/fraud/versions/3/load      Authorization: Bearer <INFERLANE_ADMIN_TOKEN>

Every route needs ``Authorization: Bearer TOKEN``: 401 without one, 403 with a wrong one (compared
in constant time, never logged). Without ``INFERLANE_ADMIN_TOKEN`` the server mounts none of these
routes, so every ``/v2/admin`` path answers 404 as if it did not exist. Routes parse and encode
only: the registry and the rollout controller do the work and raise InferlaneError, which the
app's one handler maps to its status.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferlane.core.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated
from inferlane.rollout.controller import RolloutController
from inferlane.rollout.drift import DriftMonitor
from inferlane.rollout.registry import ModelRegistry
from inferlane.store.rollout import RolloutEvent, RolloutSpec, RolloutStatus
from inferlane.transport.http.body import int_header, read_json_object
from inferlane.transport.http.body import json_response as _json

PREFIX = "/v2/admin"
MAX_BODY_BYTES = 64 * 1024
TOKEN_ENV = "INFERLANE_ADMIN_TOKEN"

Endpoint = Callable[[Request], Awaitable[Response]]


class AdminToken:
    """The admin bearer token, kept only as its SHA-256 digest.

        token = AdminToken("s3cret-admin-token-0123")
        token.check(request.headers.get("authorization"))   # Unauthenticated (401) / PermissionDenied (403)
    """

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()

    def check(self, authorization: str | None) -> None:
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated(f"the admin API needs Authorization: Bearer <the server's {TOKEN_ENV}>")
        # Digests of equal length: compare_digest's time does not depend on the token's length or content.
        if not hmac.compare_digest(hashlib.sha256(value.strip().encode()).digest(), self._digest):
            raise PermissionDenied(f"the admin token is not this server's {TOKEN_ENV}")


# ---- the rollout body: {"to": "3", "canary": 5, "steps": [5, 25, 50, 100], ...} ---------------------------

_NUMBER_FIELDS = {  # body field -> (RolloutSpec field, lowest, highest, lowest allowed itself)
    "canary": ("canary_pct", 0.0, 100.0, False),
    "window_s": ("window_s", 0.0, 86_400.0, False),
    "max_error_rate": ("max_error_rate", 0.0, 1.0, True),
    "max_p99_ratio": ("max_p99_ratio", 0.0, 1_000.0, False),
    "max_psi": ("max_psi", 0.0, 1_000.0, True),
    "shadow": ("shadow_pct", 0.0, 100.0, True),
    "drain_s": ("drain_s", 0.0, 3_600.0, True),
}
ROLLOUT_FIELDS = ("to", "steps", "min_samples", *_NUMBER_FIELDS)


def _number(doc: dict[str, Any], key: str, low: float, high: float, low_ok: bool) -> float:
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise InvalidInput(f"{key} must be a number, not {orjson.dumps(v).decode()[:40]}")
    if not (low <= v if low_ok else low < v) or v > high:
        allowed = f"from {low:g} to {high:g}" if low_ok else f"above {low:g} and at most {high:g}"
        raise InvalidInput(f"{key} must be {allowed}, not {v:g}")
    return float(v)


def _steps(v: Any) -> tuple[float, ...]:
    if not isinstance(v, list) or not v:
        raise InvalidInput("steps must be a non-empty list of percentages, e.g. [5, 25, 50, 100]")
    steps: list[float] = []
    for i, s in enumerate(v):
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or not 0 < s <= 100:
            raise InvalidInput(f"steps[{i}] must be a percentage above 0 and at most 100, "
                               f"not {orjson.dumps(s).decode()[:40]}")
        if steps and s <= steps[-1]:
            raise InvalidInput(f"steps must increase: steps[{i}] = {s:g} follows {steps[-1]:g}")
        steps.append(float(s))
    if steps[-1] != 100:
        raise InvalidInput(f"steps must end at 100 (the promotion step), not {steps[-1]:g}")
    return tuple(steps)


def rollout_spec(model: str, doc: Any) -> RolloutSpec:
    """The RolloutSpec a POST /v2/admin/rollouts/{model} body asks for; InvalidInput names the field
    at fault. Absent fields keep RolloutSpec's defaults. ``canary`` is the first step, then every
    step above it; with ``steps`` and no ``canary`` the first step is ``steps[0]``."""
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be a JSON object, e.g. {\"to\": \"3\", \"canary\": 5}")
    unknown = sorted(set(doc) - set(ROLLOUT_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r} (known: {', '.join(ROLLOUT_FIELDS)})")
    to = doc.get("to")
    if isinstance(to, int) and not isinstance(to, bool):
        to = str(to)
    if not isinstance(to, str) or not to.isdigit() or int(to) < 1:
        raise InvalidInput("to must name the version to roll out, a positive integer such as \"3\"")
    values: dict[str, Any] = {"model": model, "to_version": to}
    for key, (field, low, high, low_ok) in _NUMBER_FIELDS.items():
        if doc.get(key) is not None:
            values[field] = _number(doc, key, low, high, low_ok)
    if doc.get("min_samples") is not None:
        n = doc["min_samples"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000_000:
            raise InvalidInput("min_samples must be an integer from 1 to 100000000, "
                               f"not {orjson.dumps(n).decode()[:40]}")
        values["min_samples"] = n
    if doc.get("steps") is not None:
        values["steps"] = _steps(doc["steps"])
        values.setdefault("canary_pct", values["steps"][0])
    return RolloutSpec(**values)  # its own rules raise InvalidInput naming the field


# ---- answers --------------------------------------------------------------------------------------------

def status_doc(status: RolloutStatus) -> dict[str, Any]:
    return dataclasses.asdict(status)


def event_doc(event: RolloutEvent) -> dict[str, Any]:
    return dataclasses.asdict(event)


async def _json_body(request: Request, body_timeout_s: float, example: str) -> dict[str, Any]:
    return await read_json_object(request, MAX_BODY_BYTES, body_timeout_s, example)


def admin_routes(registry: ModelRegistry, controller: RolloutController, token: AdminToken,
                 body_timeout_s: float = 30.0, drift: DriftMonitor | None = None) -> list[Route]:
    """The ``/v2/admin`` routes, each behind ``token``; ``drift`` answers ``/models/{name}/drift``."""

    def guarded(endpoint: Endpoint) -> Endpoint:
        async def call(request: Request) -> Response:
            token.check(request.headers.get("authorization"))
            return await endpoint(request)
        call.__name__ = endpoint.__name__
        return call

    def model(request: Request) -> str:
        name: str = request.path_params["name"]
        registry.resolve(name)  # ModelNotFound (404) for an unknown model
        return name

    async def load(request: Request) -> Response:  # the registry answers 404 for a missing folder
        name, version = request.path_params["name"], request.path_params["version"]
        await controller.orders.load(name, version)  # here, then in every process sharing the rollout store
        return _json({"model": name, "version": version, "loaded": True, "versions": registry.versions(name)})

    async def unload(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        raw = request.query_params.get("drain_timeout_s")
        drain = 30.0
        if raw is not None:
            try:
                drain = float(raw)
            except ValueError:
                drain = -1.0
            if not 0 <= drain <= 3600:
                raise InvalidInput(f"drain_timeout_s must be seconds from 0 to 3600, not {raw[:40]!r}")
        await controller.orders.unload(name, version, drain_timeout_s=drain)
        return _json({"model": name, "version": version, "loaded": False, "versions": registry.versions(name)})

    async def routes(request: Request) -> Response:
        return _json({"routes": {name: dataclasses.asdict(r) for name, r in registry.router.routes().items()}})

    async def start(request: Request) -> Response:
        name = model(request)
        spec = rollout_spec(name, await _json_body(request, body_timeout_s, '{"to": "3", "canary": 5}'))
        return _json(status_doc(await controller.start(spec)), 201)

    async def statuses(request: Request) -> Response:
        return _json({"rollouts": [status_doc(s) for s in await controller.read_statuses()]})

    async def status(request: Request) -> Response:
        name = model(request)
        found = await controller.read_status(name)
        if found is None:
            raise NotFound(f"no rollout for model {name!r} (start one: POST {PREFIX}/rollouts/{name})")
        return _json(status_doc(found))

    async def promote(request: Request) -> Response:
        return _json(status_doc(await controller.promote(model(request))))

    async def abort(request: Request) -> Response:
        name = model(request)
        doc = await _json_body(request, body_timeout_s, '{"reason": "<at most 500 characters>"}')
        reason = doc.get("reason")
        if set(doc) - {"reason"} or (
                reason is not None and (not isinstance(reason, str) or not 0 < len(reason) <= 500)):
            raise InvalidInput("the abort body is empty or {\"reason\": \"<at most 500 characters>\"}")
        if reason is None:
            return _json(status_doc(await controller.abort(name)))
        return _json(status_doc(await controller.abort(name, reason)))

    async def history(request: Request) -> Response:
        name = model(request)
        limit = int_header(request.query_params.get("limit", "100"), "limit")
        if limit is None or not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be an integer from 1 to 10000")
        return _json({"model": name, "events": [event_doc(e) for e in await controller.read_history(name, limit)]})

    async def drift_report(request: Request) -> Response:
        name = model(request)
        if drift is None:
            raise NotFound("drift monitoring is not running in this server")
        return _json(drift.report(name))

    table: list[tuple[str, Endpoint, str]] = [
        ("/models/{name}/versions/{version}/load", load, "POST"),
        ("/models/{name}/versions/{version}/unload", unload, "POST"),
        ("/models/{name}/drift", drift_report, "GET"),
        ("/routes", routes, "GET"),
        ("/rollouts", statuses, "GET"),
        ("/rollouts/{name}", start, "POST"),
        ("/rollouts/{name}", status, "GET"),
        ("/rollouts/{name}/promote", promote, "POST"),
        ("/rollouts/{name}/abort", abort, "POST"),
        ("/rollouts/{name}/history", history, "GET"),
    ]
    return [Route(PREFIX + path, guarded(endpoint), methods=[method]) for path, endpoint, method in table]
