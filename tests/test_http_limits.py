"""Connection-level limits of the real server, over raw sockets: header size and count (431),
header and body deadlines (408), the connection cap (503), and answers that reach a client which
sends its whole body before reading (transport/http/protocol.py)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from inferlane.testing import serve
from inferlane.transport.http.protocol import _Joined
from tests.conftest import Server, _serve
from tests.test_http_hostile import INFER, LIMIT, PREDICT, RawResponse, _parse, error, raw, request_head, v2

pytestmark = pytest.mark.e2e

TIMEOUT_S = 1.0
"""The header and body timeouts of the ``limited`` server."""


@pytest.fixture(scope="module")
def limited(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"INFERLANE_HEADER_TIMEOUT_S": str(TIMEOUT_S), "INFERLANE_BODY_TIMEOUT_S": str(TIMEOUT_S)}
    yield from _serve(model_repo, tmp_path_factory.mktemp("limited") / "server.log", env=env)


def read_until_closed(s: socket.socket, deadline_s: float) -> tuple[RawResponse | None, float]:
    """The response the server sends before closing, and how long after the call it closed."""
    t0 = time.monotonic()
    s.settimeout(deadline_s)
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    response, _ = _parse(buf)
    return response, time.monotonic() - t0


def test_headers_over_the_size_limit_are_431(server: Server) -> None:
    (r,) = raw(server, [request_head("/v2/health/live", "X-Big: " + "a" * 100 * 1024, method="GET")])
    error(r, 431, "the request line and headers exceed 32768 bytes", "INFERLANE_MAX_HEADER_BYTES")


def test_headers_over_the_size_limit_sent_slowly_are_431(server: Server) -> None:
    # Never complete: the server must stop buffering at the limit, not wait for the end.
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
    (r,) = raw(server, [head, *[b"a" * 8192] * 12])
    error(r, 431, "exceed 32768 bytes")


def test_too_many_headers_are_431(server: Server) -> None:
    many = [f"X-H{i}: {i}" for i in range(500)]
    (r,) = raw(server, [request_head(INFER, "Content-Length: 2", *many) + b"{}"])
    error(r, 431, "at most 100 header fields", "INFERLANE_MAX_HEADERS")


def test_a_usual_request_with_many_headers_is_served(server: Server) -> None:
    body = v2()
    many = [f"X-H{i}: {'v' * 100}" for i in range(90)]
    (r,) = raw(server, [request_head(INFER, f"Content-Length: {len(body)}", *many) + body])
    assert r.status_code == 200, r.content


@pytest.mark.parametrize("sent", [b"", b"GET /v2/health/live HTTP/1.1\r\n"], ids=["nothing", "request-line"])
def test_headers_not_complete_in_time_are_408(limited: Server, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as s:
        s.sendall(sent)
        r, elapsed = read_until_closed(s, 10)
    assert r is not None
    error(r, 408, f"the request headers were not received within {TIMEOUT_S:g} s", "INFERLANE_HEADER_TIMEOUT_S")
    assert TIMEOUT_S * 0.9 <= elapsed <= TIMEOUT_S * 1.25 + 1, elapsed


def test_slowloris_is_cut_off_at_the_header_timeout(limited: Server) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        t0 = time.monotonic()
        s.settimeout(0.1)
        buf, i = b"", 0
        while time.monotonic() - t0 < 10:
            try:
                s.sendall(b"X-Slow-%d: a\r\n" % i)  # one header line every 0.1 s, never the blank line
            except (BrokenPipeError, ConnectionResetError):
                break
            i += 1
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf += chunk
        elapsed = time.monotonic() - t0
    r, _ = _parse(buf)
    assert r is not None, buf
    error(r, 408, "the request headers were not received within")
    assert elapsed <= TIMEOUT_S * 1.25 + 1, elapsed


@pytest.mark.parametrize("path", [INFER, PREDICT])
def test_content_length_without_a_body_is_408(limited: Server, path: str) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as s:
        s.sendall(request_head(path, "Content-Length: 100", "Content-Type: application/json"))
        r, elapsed = read_until_closed(s, 10)
    assert r is not None
    error(r, 408, f"the body was not received within {TIMEOUT_S:g} s")
    assert elapsed <= TIMEOUT_S * 1.25 + 1, elapsed


def test_a_body_sent_whole_before_reading_gets_its_413(server: Server) -> None:
    # urllib sends all 64 MiB before it reads: the server must take them in, not reset the connection.
    body = b'{"inputs": [' + b" " * (64 * 1024 * 1024) + b"]}"
    request = urllib.request.Request(server.url + INFER, data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    assert f"exceeds the model's limit of {LIMIT} bytes" in orjson.loads(caught.value.read())["error"]


def test_connections_over_the_cap_get_503(model_repo: Path, tmp_path: Path) -> None:
    live = request_head("/v2/health/live", method="GET").replace(b"Connection: close", b"Connection: keep-alive")

    def ask(s: socket.socket) -> RawResponse:
        s.sendall(live)
        buf = b""
        while (r := _parse(buf)[0]) is None:
            chunk = s.recv(65536)
            assert chunk, "the server closed the connection without answering"
            buf += chunk
        return r

    env = {"INFERLANE_MAX_CONNECTIONS": "3", "INFERLANE_JOBS_STORE": f"sqlite:///{tmp_path / 'jobs.db'}"}
    with serve(model_repo, log_path=tmp_path / "server.log", env=env) as capped:
        held = [socket.create_connection(("127.0.0.1", capped.port), timeout=10) for _ in range(3)]
        try:
            assert [ask(s).status_code for s in held] == [200, 200, 200]
            with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as extra:
                r = ask(extra)
                error(r, 503, "maximum of 3 connections", "INFERLANE_MAX_CONNECTIONS")
                assert r.headers["retry-after"] == "1"
            assert [ask(s).status_code for s in held] == [200, 200, 200]  # the others are unharmed
        finally:
            for s in held:
                s.close()


@pytest.mark.parametrize("method,path", [("GET", "/v2/health/ready"), ("POST", INFER), ("GET", "/v2/jobs"),
                                         ("GET", "/docs")])
def test_a_foreign_host_is_refused_on_loopback(server: Server, method: str, path: str) -> None:
    # A page at http://evil.example:PORT whose DNS name rebinds to 127.0.0.1 sends Host: evil.example.
    r = httpx.request(method, server.url + path, content=v2() if method == "POST" else None,
                      headers={"Host": f"evil.example:{server.port}"})
    error(r, 400, "Host 'evil.example:", "is not this server", "--host / INFERLANE_HOST")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
def test_loopback_hosts_are_served(server: Server, host: str) -> None:
    for h in (host, f"{host}:{server.port}"):
        assert httpx.get(server.url + "/v2/health/ready", headers={"Host": h}).status_code == 200
        assert httpx.post(server.url + INFER, content=v2(), headers={"Host": h}).status_code == 200


def test_docs_load_swagger_ui_pinned_with_integrity(server: Server) -> None:
    html = httpx.get(server.url + "/docs").text
    tags = re.findall(r"<(?:script|link)[^>]*(?:src|href)=\"https?://[^>]*>", html)
    assert len(tags) == 2, html
    for tag in tags:
        assert re.search(r"@\d+\.\d+\.\d+/", tag), tag  # one exact release, not "@5"
        assert re.search(r'integrity="sha384-[A-Za-z0-9+/]{64}"', tag), tag
        assert 'crossorigin="anonymous"' in tag, tag


def test_pipelined_keep_alive_answers_come_whole_and_in_order(server: Server) -> None:
    """Keep-alive answers go out as one write each (protocol.py ``_Joined``): several requests sent
    at once on one connection, a HEAD among them (a head with no body), get every answer, in order."""
    body = v2()

    def head(method: str, path: str, *extra: str, close: bool = False) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    infer = head("POST", INFER, "Content-Type: application/json", f"Content-Length: {len(body)}") + body
    parts = [infer, head("HEAD", "/v2/health/ready"), infer, head("GET", "/v2/models/nope"),
             head("GET", "/v2/health/live", close=True)]
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"".join(parts))
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    statuses: list[int] = []
    while buf:
        if len(statuses) == 1:  # the HEAD answer: headers only, whatever its content-length says
            head_only, _, buf = buf.partition(b"\r\n\r\n")
            statuses.append(int(head_only.split()[1]))
            continue
        response, used = _parse(buf)
        assert response is not None, buf[:300]
        statuses.append(response.status_code)
        buf = buf[used:]
    assert statuses == [200, 200, 200, 404, 200]


def _post(path: str, body: bytes, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: 127.0.0.1", "Content-Type: application/json", *extra]
    if not any(e.lower().startswith("transfer-encoding") for e in extra):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def test_pipelined_requests_behind_a_direct_answer_wait_their_turn_with_their_own_outputs(server: Server) -> None:
    """Infer requests skip ASGI (protocol.py ``_take_direct``); one still in the model holds the
    requests pipelined behind it: a slow request (50 ms in its model), then two fast ones with
    different rows and a GET, sent at once, are answered in that order, each with its own output."""
    slow = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    rows = [np.linspace(-1, 1, 30, dtype=np.float32), np.linspace(1, -1, 30, dtype=np.float32)]
    bodies = [orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30],
                                        "data": row.tolist()}]}) for row in rows]
    with httpx.Client(base_url=server.url, timeout=20) as c:  # each alone, for comparison
        alone = [orjson.loads(c.post(INFER, content=b).content)["outputs"] for b in bodies]
    assert alone[0] != alone[1]
    data = (_post("/v2/models/slow/infer", slow) + _post(INFER, bodies[0]) + _post(INFER, bodies[1])
            + b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answers = raw(server, [data])
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert orjson.loads(answers[0].content)["outputs"][0]["data"] == [2, 4, 6, 8]  # the slow model doubles
    assert [orjson.loads(a.content)["outputs"] for a in answers[1:3]] == alone
    assert orjson.loads(answers[3].content) == {"live": True}


@pytest.mark.parametrize("how", ["http/1.0", "chunked", "connection: close"])
def test_infer_requests_the_direct_path_leaves_to_asgi_are_answered_the_same(server: Server, how: str) -> None:
    body = v2()
    if how == "http/1.0":
        data = _post(INFER, body, version="1.0")
    elif how == "chunked":
        data = _post(INFER, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), "Transfer-Encoding: chunked",
                     "Connection: close")
    else:
        data = _post(INFER, body, "Connection: close")
    (answer,) = raw(server, [data])
    assert answer.status_code == 200, answer.content[:300]
    with httpx.Client(base_url=server.url, timeout=20) as c:
        assert orjson.loads(answer.content)["outputs"] == orjson.loads(c.post(INFER, content=body).content)["outputs"]


class _Transport(asyncio.Transport):
    """A transport that records what is written (unit tests of the protocol)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    @property
    def out(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_joined_writes_go_out_as_one_and_nothing_waits_past_the_turn() -> None:
    """Pure logic of the write joining, with a recording transport."""
    async def scenario() -> list[list[bytes]]:
        t = _Transport()
        joined = _Joined(t, asyncio.get_running_loop())
        seen = []
        joined.write(b"head")
        joined.write(b"body")
        seen.append(list(t.writes))  # head and body: one write, at once
        joined.write(b"lone head")
        seen.append(list(t.writes))  # held for this turn only
        await asyncio.sleep(0)
        seen.append(list(t.writes))
        joined.write(b"last")
        joined.close()
        seen.append(list(t.writes))  # closing sends what is held first
        return [*seen, [b"closed" if t.closed else b"open"]]

    assert asyncio.run(scenario()) == [[b"headbody"], [b"headbody"], [b"headbody", b"lone head"],
                                       [b"headbody", b"lone head", b"last"], [b"closed"]]


class _EchoApp:
    """Echoes the body: infer paths with bodies up to 100 bytes directly, the rest through ASGI."""

    def __init__(self) -> None:
        self.direct: list[tuple[str, bytes]] = []
        self.asgi: list[str] = []

    def direct_target(self, path: str, length: int) -> object | None:
        return path if path.endswith("/infer") and length <= 100 else None

    async def serve_direct(self, target: object, path: str, headers: list[tuple[bytes, bytes]],
                           body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        self.direct.append((path, body))
        return 200, [(b"content-length", b"%d" % len(body))], body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        self.asgi.append(scope["path"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(message["body"]))]})
        await send({"type": "http.response.body", "body": message["body"]})


def _protocol(app: _EchoApp, **config: Any) -> tuple[Any, _Transport]:
    from uvicorn.server import ServerState

    from inferlane.transport.http.protocol import ConnectionLimits, GuardedConfig, GuardedHttpToolsProtocol

    options = {"interface": "asgi3", "lifespan": "off", "log_level": "error", "proxy_headers": False, **config}
    protocol = GuardedHttpToolsProtocol(GuardedConfig(app, limits=ConnectionLimits(), **options), ServerState(), {},
                                        asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def test_the_protocol_answers_infer_posts_directly_and_everything_else_through_asgi() -> None:
    """Pure logic of the choice (protocol.py ``_take_direct``), with a recording transport and app."""
    async def scenario() -> tuple[_EchoApp, bytes]:
        app = _EchoApp()
        protocol, transport = _protocol(app)
        for data in (_post("/m/infer", b"one"), _post("/m/other", b"two"), _post("/m/infer", b"x" * 101),
                     _post("/m/infer", b"three", "Expect: 100-continue"),
                     _post("/m/infer", b"four", version="1.0")):
            protocol.data_received(data)
            for _ in range(20):
                await asyncio.sleep(0)
        protocol.connection_lost(None)
        return app, transport.out

    app, out = asyncio.run(scenario())
    assert app.direct == [("/m/infer", b"one")]
    assert app.asgi == ["/m/other", "/m/infer", "/m/infer", "/m/infer"]
    assert out.count(b"HTTP/1.1 200 OK") == 5 and out.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_connection_left_idle_after_a_direct_answer_closes_at_the_keep_alive_timeout() -> None:
    async def scenario() -> list[bool]:
        protocol, transport = _protocol(_EchoApp(), timeout_keep_alive=0.2)
        protocol.data_received(_post("/m/infer", b"one"))
        seen = []
        for wait in (0.1, 0.1, 0.3):  # answered and open; a request keeps it open; idle past 0.2 s closes it
            await asyncio.sleep(wait)
            seen.append(transport.closed)
            if len(seen) == 1:
                protocol.data_received(_post("/m/infer", b"two"))
        protocol.connection_lost(None)
        return [transport.out.count(b"200 OK") == 2, *seen]

    assert asyncio.run(scenario()) == [True, False, False, True]
