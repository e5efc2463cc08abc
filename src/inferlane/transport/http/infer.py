"""The inference hot path: ``POST /v2/models/{name}[/versions/{v}]/infer`` on raw ASGI.

NOTE: profiling the online lane showed a third of the server's time in Starlette's router (every
route's regex tried in turn), its middleware, and its Request and Response objects. This route
needs none of them: it reads the three headers it uses in one pass over the raw header list,
reads the body from ``receive``, and sends the answer as two ASGI messages. Every error is an
InferlaneError, mapped to its status by ``error_parts``. Other routes keep Starlette.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from inferlane.core import codec, tracing
from inferlane.core.batcher import Prediction
from inferlane.core.errors import InferlaneError, InvalidInput, ModelError, QueueFull
from inferlane.lanes.online import OnlineLane, OnlineResult
from inferlane.lanes.online.hybrid import KeyedLane, KeyedResult, route_request
from inferlane.transport.http.body import check_body_length, check_host, int_header, receive_body, wanted_headers
from inferlane.transport.http.protocol import Headers, Parts

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "inferlane-timeout-ms"
ROUTING_KEY_HEADER = "inferlane-routing-key"
VERSION_HEADER = "inferlane-model-version"
"""Response header: the model version that answered."""
SOURCE_HEADER = "inferlane-source"
"""Response header of a keyed request: ``precomputed``, ``live`` or ``mixed`` (lanes/online/hybrid.py)."""
AGE_HEADER = "inferlane-age-s"
"""Response header of a precomputed answer: seconds since it was computed (the oldest key's)."""
_CONTENT_LENGTH = b"content-length"
_HEADER_LENGTH = codec.HEADER_LENGTH.encode()
_TIMEOUT = TIMEOUT_HEADER.encode()
_ROUTING_KEY = ROUTING_KEY_HEADER.encode()
_VERSION = VERSION_HEADER.encode()
_SOURCE = SOURCE_HEADER.encode()
_AGE = AGE_HEADER.encode()
_HOST = b"host"
_TRACEPARENT = tracing.TRACEPARENT.encode()
_TRACESTATE = tracing.TRACESTATE.encode()
_WANTED = frozenset({_CONTENT_LENGTH, _HEADER_LENGTH, _TIMEOUT, _ROUTING_KEY, _HOST, _TRACEPARENT, _TRACESTATE})
_JSON_TYPE = (b"content-type", b"application/json")
_BINARY_TYPE = (b"content-type", b"application/octet-stream")
_MILLISECONDS = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")

def timeout_s(header: str | None, parameters: dict[str, Any]) -> float | None:
    """Header ``inferlane-timeout-ms`` (milliseconds) or parameter ``timeout`` (microseconds,
    as Triton clients send it); the smaller wins."""
    found: list[float] = []
    if header is not None:
        if not _MILLISECONDS.fullmatch(header):
            raise InvalidInput(f"{TIMEOUT_HEADER} must be a number of milliseconds, not {header[:40]!r}")
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


def server_timing(r: OnlineResult) -> bytes:
    """``Server-Timing``: queue, forward and total milliseconds, and the rows of the batch."""
    p = r.prediction
    return b'queue;dur=%.3f, forward;dur=%.3f, total;dur=%.3f, batch;desc="%d rows"' % (
        p.queue_s * 1e3, p.forward_s * 1e3, r.total_s * 1e3, p.batch_rows)


def keyed_timing(r: KeyedResult) -> bytes:
    """``Server-Timing`` of a keyed request: the store and feature lookups, then the live part's."""
    head = b"store;dur=%.3f" % (r.lookup_s * 1e3)
    if r.features_s:
        head += b", features;dur=%.3f" % (r.features_s * 1e3)
    if r.live is None:
        return head + b", total;dur=%.3f" % (r.total_s * 1e3)
    p = r.live.prediction
    return head + b', queue;dur=%.3f, forward;dur=%.3f, total;dur=%.3f, batch;desc="%d rows"' % (
        p.queue_s * 1e3, p.forward_s * 1e3, r.total_s * 1e3, p.batch_rows)


def keyed_headers(r: KeyedResult) -> list[tuple[bytes, bytes]]:
    """The answer's Server-Timing, source and age headers."""
    headers = [(b"server-timing", keyed_timing(r)), (_SOURCE, r.source.encode())]
    age = r.age_s
    if age is not None:
        headers.append((_AGE, b"%.3f" % age))
    return headers


def hidden_error(what: str, detail: str) -> str:
    """A short message for the client with a fresh request id; ``detail`` (file paths, the model's own
    exception text) goes to the server log under that id only."""
    request_id = uuid.uuid4().hex[:16]
    log.error("request %s: %s", request_id, detail)
    return f"{what} (request id {request_id}; the server log has the details)"


def error_parts(e: InferlaneError) -> Parts:
    """The answer to an error: its status, ``{"error": message}``, and Retry-After when the queue is full.
    A model's own failure is logged, and the client gets a request id instead of its text."""
    message = hidden_error("the model failed on this request", e.message) if isinstance(e, ModelError) else e.message
    body = orjson.dumps({"error": message, **e.details} if e.details else {"error": message})
    headers = [_JSON_TYPE, (b"content-length", str(len(body)).encode())]
    if isinstance(e, QueueFull):
        headers.append((b"retry-after", str(e.retry_after).encode()))
    return e.http_status, headers, body


def match(scope: Scope) -> tuple[str, str | None] | None:
    """(model, version) when ``scope`` is a POST to an infer route, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    return match_path(scope["path"])


def match_path(path: str) -> tuple[str, str | None] | None:
    """(model, version) when ``path`` is an infer route, else None."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[len("/v2/models/"):-len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


class InferRoute:
    """Answers one V2 inference request through the online lane."""

    def __init__(self, lane: OnlineLane, body_timeout_s: float, hosts: frozenset[bytes] | None = None,
                 keyed: KeyedLane | None = None) -> None:
        self.lane = lane
        self.keyed = keyed
        """Requests with ``parameters.key`` to models with ``hybrid:`` or ``features:``."""
        self.body_timeout_s = body_timeout_s
        self.hosts = hosts
        """Host header names answered (None: any); see body.loopback_hosts."""

    async def parts(self, name: str, version: str | None, scope: Scope, receive: Receive) -> Parts:
        """The answer to a request that came through ASGI (InferlaneError raised)."""
        return await self._traced(name, version, scope["path"], scope["headers"], receive, b"")

    async def answer(self, name: str, version: str | None, path: str, headers: Headers, body: bytes,
                     receive: Receive | None = None) -> Parts:
        """The answer, every error included: to a request the HTTP protocol read whole itself
        (transport/http/protocol.py), or, with ``receive``, to one whose body ASGI delivers."""
        try:
            return await self._traced(name, version, path, headers, receive, body)
        except InferlaneError as e:
            return error_parts(e)
        except Exception as e:
            log.exception("unexpected error on POST %s", path[:200])
            return error_parts(InferlaneError(hidden_error("internal error", repr(e))))

    async def _traced(self, name: str, version: str | None, path: str, raw_headers: Headers,
                      receive: Receive | None, body: bytes) -> Parts:
        if not tracing.on():
            return await self._parts(name, version, raw_headers, receive, body, None)
        spans = _Traced()
        start = time.time_ns()
        answer = await self._parts(name, version, raw_headers, receive, body, spans)
        status, _, out = answer
        _trace(path, name, start, status, out, spans)
        return answer

    async def _parts(self, name: str, version: str | None, raw_headers: Headers, receive: Receive | None,
                     body: bytes, spans: _Traced | None) -> Parts:
        """The answer; the body is read from ``receive``, or is ``body`` when ``receive`` is None. With
        traces on, ``spans`` gets the headers, version, lane and prediction to record."""
        headers = wanted_headers(raw_headers, _WANTED)
        if spans is not None:
            spans.headers = headers
        if self.hosts is not None:
            check_host(headers.get(_HOST), self.hosts)
        key = codec.routing_key(headers.get(_ROUTING_KEY) or None, ROUTING_KEY_HEADER)  # empty: no key
        registry = self.lane.registry
        mv = registry.get(name, version, key)
        try:
            limits = mv.config.limits
            if receive is None:  # the protocol read it, its Content-Length checked
                check_body_length(len(body), limits.max_request_bytes)
            else:
                length = int_header(headers.get(_CONTENT_LENGTH), "content-length")
                body = await receive_body(receive, length, limits.max_request_bytes, self.body_timeout_s)
            req = codec.parse_infer_request(body, int_header(headers.get(_HEADER_LENGTH), codec.HEADER_LENGTH),
                                            limits.max_elements_per_input)
            routing = route_request(self.lane, self.keyed is not None, mv, req.inputs, req.parameters,
                                    pinned=version is not None, key=key)
            mv = routing.model
            codec.check_requested_outputs(req, mv.config)
            timeout = timeout_s(headers.get(_TIMEOUT), req.parameters)
            if routing.keys is not None:
                assert self.keyed is not None
                keyed = await self.keyed.infer(mv, req.inputs or None, routing.keys, timeout, routed=version is None,
                                               key=routing.key)
                if spans is not None:
                    spans.answered(keyed.model.version, "hybrid", keyed.live.prediction if keyed.live else None)
                return self._answer(keyed.model.name, keyed.model.version, keyed.outputs, req,
                                    keyed_headers(keyed), keyed.parameters())
            result = await self.lane.infer_on(mv, req.inputs, timeout, routed=version is None, key=routing.key)
        except InferlaneError as e:  # the answer still names the version the request went to
            status, error_headers, error_body = error_parts(e)
            error_headers.append((_VERSION, mv.version.encode()))
            if spans is not None:
                spans.answered(mv.version, "online", None)
            return status, error_headers, error_body
        if spans is not None:
            spans.answered(result.model.version, "online", result.prediction)
        return self._answer(result.model.name, result.model.version, result.prediction.outputs, req,
                            [(b"server-timing", server_timing(result))])

    @staticmethod
    def _answer(name: str, version: str, outputs: dict[str, Any], req: codec.InferRequest,
                extra: list[tuple[bytes, bytes]], parameters: dict[str, Any] | None = None) -> Parts:
        out, out_header_length = codec.encode_infer_response(name, version, outputs, req, parameters)
        answer = [_JSON_TYPE if out_header_length is None else _BINARY_TYPE,
                  (b"content-length", b"%d" % len(out)), *extra, (_VERSION, version.encode())]
        if out_header_length is not None:
            answer.append((_HEADER_LENGTH, str(out_header_length).encode()))
        return 200, answer, out

    async def __call__(self, name: str, version: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        await send_parts(send, *await self.answer(name, version, scope["path"], scope["headers"], b"", receive))


@dataclass(slots=True)
class _Traced:
    """What a traced request's span records, filled in while it is answered."""

    headers: dict[bytes, str] = field(default_factory=dict)
    version: str | None = None
    lane: str = "online"
    prediction: Prediction | None = None

    def answered(self, version: str, lane: str, prediction: Prediction | None) -> None:
        self.version, self.lane, self.prediction = version, lane, prediction


def _trace(path: str, name: str, start_ns: int, status: int, body: bytes, spans: _Traced) -> None:
    """The request as a span under the caller's ``traceparent``, with its queue and forward spans."""
    end = time.time_ns()
    prediction = spans.prediction
    attributes: dict[str, object] = {"http.request.method": "POST", "url.path": path,
                                     "http.response.status_code": status, "inferlane.model": name,
                                     "inferlane.lane": spans.lane}
    if spans.version is not None:
        attributes["inferlane.version"] = spans.version
    phases = []
    if prediction is not None:
        attributes["inferlane.batch_rows"] = prediction.batch_rows
        forward_end = end  # splitting and encoding the answer take microseconds: the span ends with it
        forward_start = forward_end - int(prediction.forward_s * 1e9)
        phases = [("queue", forward_start - int(prediction.queue_s * 1e9), forward_start),
                  ("forward", forward_start, forward_end)]
    error = None
    if status >= 500:
        error = str(orjson.loads(body).get("error", status)) if body[:1] == b"{" else str(status)
    tracing.record("POST /v2/models/{model}/infer", parent=spans.headers.get(_TRACEPARENT),
                   tracestate=spans.headers.get(_TRACESTATE), start_ns=start_ns, end_ns=end,
                   attributes=attributes, phases=phases, error=error)


async def send_parts(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
