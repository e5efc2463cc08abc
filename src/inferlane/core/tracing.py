"""OpenTelemetry traces (the ``otel`` extra), off unless an OTLP endpoint is configured.

    tracing.configure("http://collector:4318/v1/traces")   # at start; or OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT
    if tracing.on():
        tp = tracing.record("POST /v2/models/{model}/infer", parent=request_traceparent, start_ns=t0, end_ns=t1,
                            attributes={"inferlane.model": "fraud"}, phases=[("queue", q0, q1), ("forward", f0, f1)])
        # tp: the recorded span's W3C traceparent, to carry on (a job record, a callback header)

Spans are recorded when an operation has finished, from the times it measured anyway (the batcher
reports each request's queue wait and its batch's forward time): nothing waits on tracing, nothing
changes in the batcher, and with tracing off a request pays one boolean test. The parent comes from
the W3C ``traceparent`` (and ``tracestate``) the client sent, so one request shows its queue and
forward spans under the caller's trace in Jaeger or Tempo. Spans leave in batches from a background
thread (the SDK's BatchSpanProcessor, OTLP over HTTP/protobuf); a collector that is down costs the
spans, never a request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from inferlane.core.errors import ConfigError

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

MAX_LINKS = 128
"""Links one span keeps at most (the SDK's default limit): a micro-batch of 10,000 events links 128."""

_state: dict[str, Any] = {}
"""``tracer``, ``provider`` and ``propagator`` once configured."""


def endpoint_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL the standard OpenTelemetry variables name, if any."""
    traces = environ.get(_ENDPOINT_ENVS[0])
    if traces:
        return traces
    base = environ.get(_ENDPOINT_ENVS[1])
    return f"{base.rstrip('/')}/v1/traces" if base else None


def check(endpoint: str | None) -> str | None:
    """The traces URL ``configure`` would use (``endpoint``, else the environment's; None: traces off),
    or ConfigError now for a URL it would refuse or a missing ``otel`` extra."""
    endpoint = endpoint or endpoint_from_env()
    if not endpoint:
        return None
    if not endpoint.startswith(("http://", "https://")) or len(endpoint) > 2048:
        raise ConfigError(f"the OTLP endpoint must be an http(s) URL (OTLP over HTTP), not {endpoint[:200]!r}")
    try:
        import opentelemetry.exporter.otlp.proto.http
        import opentelemetry.sdk  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"traces need OpenTelemetry: pip install 'inferlane[otel]' ({e})") from None
    return endpoint


def configure(endpoint: str | None, service_name: str | None = None) -> bool:
    """Export spans to ``endpoint`` (or the one the environment names); False (tracing off) when there
    is none. ConfigError with the install command when the ``otel`` extra is missing."""
    endpoint = check(endpoint)
    if endpoint is None:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as e:
        raise ConfigError(f"traces need OpenTelemetry: pip install 'inferlane[otel]' ({e})") from None
    shutdown()
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "inferlane"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _state.update(tracer=provider.get_tracer("inferlane"), provider=provider,
                  propagator=TraceContextTextMapPropagator())
    log.info("traces: OTLP to %s as service %s", endpoint, name)
    return True


@contextmanager
def exporting(endpoint: str | None) -> Iterator[bool]:
    """:func:`configure` for the length of a command (a stream lane, a jobs worker); the buffered spans
    go out at the end. Yields whether traces are on."""
    turned_on = configure(endpoint or os.environ.get("INFERLANE_OTLP_ENDPOINT"))
    try:
        yield turned_on
    finally:
        if turned_on:
            shutdown()


def on() -> bool:
    return "tracer" in _state


def shutdown() -> None:
    """Send the spans still buffered and stop exporting (at server exit)."""
    provider = _state.pop("provider", None)
    _state.clear()
    if provider is not None:
        provider.shutdown()


def _parent(traceparent: str | None, tracestate: str | None = None) -> Any:
    if not traceparent:
        return None
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    return _state["propagator"].extract(carrier)  # an invalid header gives an empty context: a new trace


def _traceparent(span: Any) -> str:
    from opentelemetry import trace

    carrier: dict[str, str] = {}
    _state["propagator"].inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT, "")


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "consumer": SpanKind.CONSUMER,
            "internal": SpanKind.INTERNAL}[kind]


def _error(span: Any, error: str | None) -> None:
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error[:500]))


def record(name: str, *, parent: str | None, start_ns: int, end_ns: int, attributes: Mapping[str, Any],
           phases: Sequence[tuple[str, int, int]] = (), error: str | None = None, kind: str = "server",
           tracestate: str | None = None, links: Sequence[str] = ()) -> str | None:
    """One finished operation as a span (child of ``parent``, a W3C traceparent, when given) with a
    child span per phase ``(name, start_ns, end_ns)``; returns the span's traceparent (None when
    tracing is off). ``error``: the operation failed, with this message. ``links``: traceparents of
    the work it served (a stream micro-batch links the trace of each event that carried one)."""
    tracer = _state.get("tracer")
    if tracer is None:
        return None
    from opentelemetry import trace

    linked = []
    for tp in links[:MAX_LINKS]:
        context = trace.get_current_span(_parent(tp)).get_span_context()
        if context.is_valid:
            linked.append(trace.Link(context))
    span = tracer.start_span(name, context=_parent(parent, tracestate), kind=_kind(kind), start_time=start_ns,
                             attributes=dict(attributes), links=linked)
    inside = trace.set_span_in_context(span)
    for phase, p0, p1 in phases:
        tracer.start_span(phase, context=inside, start_time=p0, attributes=dict(attributes)).end(end_time=p1)
    _error(span, error)
    span.end(end_time=end_ns)
    return _traceparent(span)


@contextmanager
def live_span(name: str, *, parent: str | None, attributes: Mapping[str, Any],
              kind: str = "client") -> Iterator[tuple[str | None, dict[str, str]]]:
    """A span around work still to do (a callback delivery), child of ``parent``; yields its
    traceparent and a dict the caller may fill with ``{"error": message}`` before leaving. Off: yields
    (None, {})."""
    tracer = _state.get("tracer")
    if tracer is None:
        yield None, {}
        return
    span = tracer.start_span(name, context=_parent(parent), kind=_kind(kind), attributes=dict(attributes))
    outcome: dict[str, str] = {}
    try:
        yield _traceparent(span), outcome
    finally:
        _error(span, outcome.get("error"))
        span.end()


def ns_at(monotonic_s: float, now_ns: int | None = None, now_monotonic: float | None = None) -> int:
    """The wall-clock nanoseconds of a ``time.monotonic()`` reading (spans carry wall-clock times)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    now_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
    return now_ns - int((now_monotonic - monotonic_s) * 1e9)
