"""One structured log line per request, for ``--log-format json`` (core/logs.py).

    app = RequestLog(create_app(settings))     # only when JSON logging is on: off, it is not there at all

NOTE: the server keeps uvicorn's access log off because formatting a text line per request costs
the hot path more than batching saves. This wrapper exists only in JSON mode, so a server that does
not ask for request lines pays nothing. It sees the request line, the answer's status and headers
(``inferlane-model-version``, ``Server-Timing``, ``inferlane-source``) and its own clock, and logs::

    {"ts": ..., "level": "info", "logger": "inferlane.request", "msg": "POST /v2/models/fraud/infer 200",
     "request_id": "5f0c...", "method": "POST", "path": "/v2/models/fraud/infer", "model": "fraud",
     "version": "3", "lane": "online", "status": 200, "duration_ms": 2.41, "queue_ms": 0.8, "forward_ms": 1.1}

Model requests (inference, V1 predict, SageMaker invocations, jobs) log at INFO; everything else
(health, /metrics, /dashboard/data polled every second) at DEBUG. The request id is the client's
``x-request-id`` when it is a short token, else a fresh one; the answer carries it back.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("inferlane.request")

REQUEST_ID_HEADER = b"x-request-id"
_GOOD_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
_TIMING = re.compile(r"(queue|forward|store|features);dur=([0-9.]+)")
_MODEL_PATH = re.compile(r"/v[12]/models/([^/:]+)(?:/versions/([^/:]+))?(/infer|:predict|/jobs)$")


def route_of(path: str) -> tuple[str | None, str | None, str | None]:
    """(model, version, lane) a path names; lane None: not a model request."""
    m = _MODEL_PATH.match(path)
    if m is not None:
        return m.group(1), m.group(2), "jobs" if m.group(3) == "/jobs" else "online"
    if path.startswith("/v2/jobs"):
        return None, None, "jobs"
    if path == "/invocations":
        return None, None, "online"
    return None, None, None


def _request_id(scope: Scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            return value if _GOOD_ID.fullmatch(value) else uuid.uuid4().hex[:16].encode()
    return uuid.uuid4().hex[:16].encode()


class RequestLog:
    """ASGI wrapper: times each HTTP request and logs it as one record with structured fields."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state = getattr(app, "state", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        answer: dict[str, Any] = {"status": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = message.get("headers", [])
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _log(scope, request_id.decode(), answer, time.perf_counter() - start)


def _log(scope: Scope, request_id: str, answer: dict[str, Any], seconds: float) -> None:
    path: str = scope["path"]
    model, version, lane = route_of(path)
    level = logging.INFO if lane is not None else logging.DEBUG
    if not log.isEnabledFor(level):
        return
    fields: dict[str, Any] = {"request_id": request_id, "method": scope["method"], "path": path[:200],
                              "model": model, "version": version, "lane": lane, "status": answer["status"],
                              "duration_ms": round(seconds * 1e3, 3)}
    for name, value in answer.get("headers", ()):
        if name == b"inferlane-model-version":
            fields["version"] = value.decode("latin-1")
        elif name == b"server-timing":
            for stage, ms in _TIMING.findall(value.decode("latin-1")):
                fields[f"{stage}_ms"] = float(ms)
        elif name == b"inferlane-source":
            fields["source"] = value.decode("latin-1")
    # NOTE: makeRecord + handle rather than log.log: the caller's file and line (a stack walk, a third of
    # the cost of a line) say nothing here; it is always this function.
    log.handle(log.makeRecord(log.name, level, __file__, 0, "%s %s %d", (scope["method"], path[:200], answer["status"]),
                              None, extra=fields))
