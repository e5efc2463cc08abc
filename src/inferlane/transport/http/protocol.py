"""The HTTP/1.1 connection: uvicorn's httptools protocol with the limits a public server needs.

    config = GuardedConfig(app, limits=ConnectionLimits(max_connections=1000), host=..., port=...)
    uvicorn.Server(config).run(sockets=[sock])

uvicorn with httptools has no cap on the size or number of request headers, no time limit for
them, and closes the connection at once after answering a request whose body it has not read
(the kernel then resets the connection and the client loses the answer). This protocol adds:

- request line and headers over ``max_header_bytes`` or ``max_headers`` fields: 431;
- request line and headers not complete within ``header_timeout_s`` of their first byte (or of
  the connection opening): 408;
- no body byte for ``body_timeout_s`` while the application waits for the body: 408;
- more than ``max_connections`` open connections: 503 with ``Retry-After`` to the extra ones;
- every answer that ends the connection closes it gracefully: the answer is sent with FIN, then
  what the client still sends is read and dropped (up to ``drain_max_bytes``, until the client
  closes or stalls), so a client that sends its whole body before reading still reads the answer.

Inference requests skip ASGI: a keep-alive ``POST`` whose body fits the model's limit goes straight
from the parser to the application's :class:`DirectApp` handler, and its answer is written as one
block (see :class:`GuardedHttpToolsProtocol`). Every other request, and any request while one is
answered, takes uvicorn's ASGI cycle; the order of answers on a connection is kept either way.

NOTE: one timer per connection checks the deadlines (every quarter of the shortest of the header,
body and keep-alive timeouts, so a deadline fires between 1 and 1.25 times its value after it
starts), the keep-alive one after a direct answer included; the direct path itself adds no timer.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
Parts = tuple[int, Headers, bytes]
"""(status, headers, body) of an answer."""

DIRECT_MAX_BODY = 1 << 20
"""The largest body read by the protocol itself for a direct request; larger ones go through ASGI,
which refuses a body over the model's limit before reading it."""


@runtime_checkable
class DirectApp(Protocol):
    """An application some requests of which are answered without ASGI (transport/http/app.py)."""

    def direct_target(self, path: str, length: int) -> object | None:
        """What ``serve_direct`` needs for a keep-alive ``POST path`` with a ``length``-byte body,
        or None to answer it through ASGI."""

    def serve_direct(self, target: object, path: str, headers: Headers, body: bytes) -> Awaitable[Parts]:
        """The whole answer; never raises (an error is an answer)."""


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits (server settings of the same names)."""

    max_header_bytes: int = 32_768
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000
    drain_max_bytes: int = 128 * 1024 * 1024


class GuardedConfig(uvicorn.Config):
    """uvicorn's Config serving with :class:`GuardedHttpToolsProtocol` under ``limits`` (picklable,
    so ``--workers N`` processes get the same limits)."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedHttpToolsProtocol, **kwargs)
        self.connection_limits = limits


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the protocol answers ``status``."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def answer(status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response ``{"error": message}`` that closes the connection."""
    body = orjson.dumps({"error": message})
    head = [b"HTTP/1.1 %d %s" % (status, http.HTTPStatus(status).phrase.encode()),
            b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close",
            *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _CloseGracefully(asyncio.Transport):
    """The transport a request's answer goes to when the connection closes after it: closing waits
    for the rest of the request body (drained), so the client can read the answer."""

    def __init__(self, protocol: GuardedHttpToolsProtocol) -> None:
        super().__init__()
        self._protocol = protocol
        self._transport = protocol.transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def close(self) -> None:
        cycle = self._protocol.cycle
        if cycle is not None and cycle.more_body:  # the answer went out before the whole body came in
            self._protocol.linger()
        else:
            self._transport.close()


class _Joined:
    """The transport a keep-alive request's answer goes to: what is written within one turn of the
    event loop goes out in one write. uvicorn writes the status line and headers, then the body,
    each with its own send (two TCP segments); joined, an answer is one system call and one segment.
    Nothing waits past the turn: the first write schedules the flush."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes | bytearray | memoryview] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if not held:
            held.append(data)
            self._loop.call_soon(self.flush)
            return
        held.append(data)
        if len(held) == 2:  # the head and the body: out at once, as one
            self.flush()

    def flush(self) -> None:
        held = self._held
        if held:
            data = held[0] if len(held) == 1 else b"".join(held)
            held.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()


class _Direct:
    """A request answered without ASGI: its target, path and headers, and its body as it comes."""

    __slots__ = ("chunks", "headers", "path", "read", "target")

    def __init__(self, target: object, path: str, headers: Headers) -> None:
        self.target, self.path, self.headers = target, path, headers
        self.chunks: list[bytes] = []
        self.read = False  # the whole body is in


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol with header limits, header and body deadlines, a connection
    cap and graceful closes (module docstring)."""

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "connection_limits", None)
        self.limits = limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()
        self._tick_s = min(self.limits.header_timeout_s, self.limits.body_timeout_s, self.timeout_keep_alive) / 4
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True          # reading a request line and headers (or waiting for the first)
        self._messages = 0            # requests begun on this connection
        self._received = 0            # bytes received on this connection
        self._head_bytes = 0          # bytes of the current head received in earlier reads
        self._message_open = False    # a request has begun and not ended
        self._read_len = 0            # bytes of the read being parsed
        self._refusal: _Refused | None = None
        self._over_cap = False
        self._lingering = False
        self._drained = 0
        self._joined: _Joined | None = None
        app = self.app
        self._direct_app: DirectApp | None = app if isinstance(app, DirectApp) else None
        self._direct: _Direct | None = None  # the request being read or answered without ASGI
        self._close_after_direct = False      # shutdown came while a direct answer was in flight
        self._idle_since: float | None = None  # when a direct answer left the connection idle
        # What the last tick saw, and since when.
        self._seen_message = self._seen_received = 0
        self._message_since = self._received_since = 0.0

    # -- connection -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Decided once: a connection let in is never refused later because others arrived.
        self._over_cap = len(self.connections) > self.limits.max_connections
        self._message_since = self._received_since = self.loop.time()
        self._timer = self.loop.call_later(self._tick_s, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._lingering:
            self._drained += len(data)
            if self._drained > self.limits.drain_max_bytes:
                self.transport.close()
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and cycle.more_body:
            # The body of a request already answered (413 before reading it): dropped, up to a bound.
            self._drained += len(data)
            if self._drained > self.limits.drain_max_bytes:
                self.transport.close()
                return
        messages, was_open = self._messages, self._message_open
        self._read_len = len(data)
        super().data_received(data)
        if self._in_head and (self._messages == messages or (self._messages == messages + 1 and not was_open)):
            # NOTE: counted only when the whole read belongs to this head (a read that also holds
            # the end of an earlier request is left out); the exact size is checked when the
            # headers are complete.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes and not self._lingering:
                self._refuse(_Refused(431, self._too_large()))

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this on a parser error, which is also how a callback stops the parser.
        error, self._refusal = self._refusal, None
        self._refuse(error or _Refused(400, "invalid HTTP request"))

    # -- parser callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The ASGI scope is made in on_headers_complete, and only for a request that needs one.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._idle_since = None
        self._in_head = True
        self._message_open = True
        self._messages += 1
        self._head_bytes = 0
        self._drained = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            self._stop(_Refused(431, f"a request may have at most {limits.max_headers} header fields "
                                     "(INFERLANE_MAX_HEADERS)"))
        if self._head_bytes + self._read_len > limits.max_header_bytes:  # else it cannot be over
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > limits.max_header_bytes:
                self._stop(_Refused(431, self._too_large()))
        if self._over_cap:
            self._stop(_Refused(503, f"the server has its maximum of {limits.max_connections} connections open "
                                     "(INFERLANE_MAX_CONNECTIONS); retry later",
                                ((b"retry-after", b"1"),)))
        if self._direct_app is not None and self._take_direct():
            return
        headers, url, expect = self.headers, self.url, self.expect_100_continue
        super().on_message_begin()  # the ASGI scope, with this request's headers
        self.headers = self.scope["headers"] = headers
        self.url, self.expect_100_continue = url, expect
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            if not cycle.keep_alive:
                cycle.transport = _CloseGracefully(self)
            else:
                if self._joined is None:
                    self._joined = _Joined(self.transport, self.loop)
                cycle.transport = self._joined  # type: ignore[assignment]

    def _take_direct(self) -> bool:
        """Answer this request without ASGI when it is a keep-alive HTTP/1.1 POST with a
        Content-Length body, nothing else is in flight on the connection, and the application takes it."""
        if self._direct is not None or self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            return False
        parser = self.parser
        if self.expect_100_continue or parser.get_method() != b"POST" or not parser.should_keep_alive() \
                or parser.get_http_version() != "1.1" or parser.should_upgrade():
            return False
        url = self.url
        if url[:1] != b"/" or b"%" in url:
            return False
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None or not value.isdigit() or len(value) > 8:
                    return False
                length = int(value)
            elif name == b"transfer-encoding":
                return False
        if length is None or length > DIRECT_MAX_BODY:
            return False
        path = url.partition(b"?")[0].decode("ascii")
        assert self._direct_app is not None
        target = self._direct_app.direct_target(path, length)
        if target is None:
            return False
        self._direct = _Direct(target, path, self.headers)
        return True

    def on_body(self, body: bytes) -> None:
        direct = self._direct
        if direct is not None and not direct.read:
            direct.chunks.append(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._message_open = False
        direct = self._direct
        if direct is not None and not direct.read:
            direct.read = True
            task = self.loop.create_task(self._answer_direct(direct))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return
        super().on_message_complete()

    async def _answer_direct(self, direct: _Direct) -> None:
        assert self._direct_app is not None
        try:
            status, headers, body = await self._direct_app.serve_direct(
                direct.target, direct.path, direct.headers, b"".join(direct.chunks))
        except Exception:  # serve_direct answers every error itself; this is a bug, and the client gets a 500
            log.exception("unexpected error on POST %s", direct.path[:200])
            status, headers, body = 500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
        finally:
            self._direct = None
        transport = self.transport
        if transport.is_closing():  # the client went away
            return
        out = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            out += (name, b": ", value, b"\r\n")
        for name, value in headers:
            out += (name, b": ", value, b"\r\n")
        if self._close_after_direct:
            out.append(b"connection: close\r\n")
        out += (b"\r\n", body)
        transport.write(b"".join(out))
        if self._close_after_direct:
            self.server_state.total_requests += 1
            transport.close()
        elif self.pipeline:  # requests wait behind this answer: uvicorn starts the next
            self.on_response_complete()
        else:
            # NOTE: the keep-alive deadline is the tick's, not a timer per answer as uvicorn arms.
            self.server_state.total_requests += 1
            self._idle_since = self.loop.time()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if self._direct is not None:  # a pipelined request behind a direct answer waits its turn
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))
            return
        super()._start_asgi_task(cycle, app)

    def shutdown(self) -> None:
        if self._direct is not None:  # answer it, then close
            self._close_after_direct = True
            return
        super().shutdown()

    def on_response_complete(self) -> None:
        if self._lingering:
            self.server_state.total_requests += 1
            return
        super().on_response_complete()

    # -- refusing and closing ---------------------------------------------------------------------

    def _too_large(self) -> str:
        return (f"the request line and headers exceed {self.limits.max_header_bytes} bytes "
                "(INFERLANE_MAX_HEADER_BYTES)")

    def _stop(self, error: _Refused) -> None:
        """Stop the parser from inside a callback; uvicorn then calls send_400_response."""
        self._refusal = error
        raise error

    def _refuse(self, error: _Refused) -> None:
        if self.transport.is_closing() or self._lingering:
            return
        if self._joined is not None:
            self._joined.flush()  # an answer held for this turn goes first
        self.transport.write(answer(error.status, error.message, error.headers))
        self.linger()

    def linger(self) -> None:
        """Close gracefully: FIN after the answer, then drop what the client still sends until it
        closes, stalls for ``body_timeout_s`` or passes ``drain_max_bytes``."""
        if self._lingering or self.transport.is_closing():
            return
        self._lingering = True
        if self._joined is not None:
            self._joined.flush()
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def _tick(self) -> None:
        """Every ``_tick_s``: enforce the header, body and linger deadlines."""
        now = self.loop.time()
        if self._messages != self._seen_message:
            self._seen_message, self._message_since = self._messages, now
        if self._received != self._seen_received:
            self._seen_received, self._received_since = self._received, now
        limits, cycle = self.limits, self.cycle
        idle_s = now - self._received_since
        if self._idle_since is not None and now - self._idle_since >= self.timeout_keep_alive:
            self.transport.close()  # idle since a direct answer for the keep-alive timeout
        elif self._lingering:
            if idle_s >= limits.body_timeout_s:
                self.transport.close()
        elif self._in_head:
            if now - self._message_since >= limits.header_timeout_s:
                self._refuse(_Refused(408, "the request headers were not received within "
                                           f"{limits.header_timeout_s:g} s (INFERLANE_HEADER_TIMEOUT_S)"))
        elif self._direct is not None and not self._direct.read:
            if idle_s >= limits.body_timeout_s:
                self._refuse(_Refused(408, f"the body was not received within {limits.body_timeout_s:g} s"))
        elif (cycle is not None and cycle.more_body and not cycle.response_started and not cycle.disconnected
              and not self.flow.read_paused and idle_s >= limits.body_timeout_s):
            # The application waits for a body that does not come: it sees a disconnect.
            cycle.disconnected = True
            cycle.message_event.set()
            self._refuse(_Refused(408, f"the body was not received within {limits.body_timeout_s:g} s"))
        if not self.transport.is_closing():
            self._timer = self.loop.call_later(self._tick_s, self._tick)
