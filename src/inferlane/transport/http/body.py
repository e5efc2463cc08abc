"""Reading request bodies and headers safely, and JSON responses (shared by every HTTP route module)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from inferlane.core.errors import InvalidInput, PayloadTooLarge, RequestTimeout

_DECIMAL = re.compile(r"[0-9]+")
JSON = "application/json"


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status, headers=headers, media_type=JSON)


def int_header(value: str | None, name: str) -> int | None:
    """A header value holding a non-negative decimal integer (ASCII digits only), or None if absent."""
    if value is None:
        return None
    if not _DECIMAL.fullmatch(value):
        raise InvalidInput(f"{name} must be a non-negative integer, not {value[:40]!r}")
    # Python refuses to parse more than 4300 digits; anything over 18 is far past every limit.
    return int(value) if len(value) <= 18 else 10**18


def header_int(request: Request, name: str) -> int | None:
    return int_header(request.headers.get(name), name)


def scope_headers(scope: Scope, names: frozenset[bytes]) -> dict[bytes, str]:
    """The values of ``names`` (lower-case) among the request's headers, in one pass (the last of
    repeated ones wins, as Starlette does)."""
    return wanted_headers(scope["headers"], names)


def wanted_headers(headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes]) -> dict[bytes, str]:
    """:func:`scope_headers` on the raw header list."""
    found: dict[bytes, str] = {}
    for key, value in headers:
        if key in names:
            found[key] = value.decode("latin-1")
    return found


def loopback_hosts(bound_host: str) -> frozenset[bytes] | None:
    """The Host header names a server listening on ``bound_host`` answers: only loopback names when it
    listens on loopback (so a web page whose DNS name rebinds to 127.0.0.1 cannot reach it from a
    browser), None (any) otherwise."""
    name = bound_host.strip("[]").lower()
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = name == "localhost"
    return frozenset({b"localhost", b"127.0.0.1", b"::1", name.encode()}) if loopback else None


def check_host(value: str | None, allowed: frozenset[bytes]) -> None:
    """Refuse a Host header that is not one of ``allowed`` (any port); no Host (HTTP/1.0) passes."""
    if value is None:
        return
    name = value.strip().lower()
    if name.startswith("["):
        name = name[1:name.find("]")]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.encode("latin-1") not in allowed:
        raise InvalidInput(f"Host {value[:100]!r} is not this server: a server listening on loopback answers only "
                           "Host localhost or 127.0.0.1 (listen on another address with --host / INFERLANE_HOST)")


async def read_json_object(request: Request, limit: int, timeout_s: float, example: str) -> dict[str, Any]:
    """A small JSON-object body (admin and extension calls): an empty body is ``{}``; anything but an
    object is InvalidInput naming ``example``."""
    raw = await read_body(request, limit, timeout_s)
    if not raw.strip():
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"the body must be a JSON object, e.g. {example}")
    return doc


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The body, refusing anything over ``limit`` bytes before reading it where possible, and
    answering 408 to a client that has not sent all of it within ``timeout_s``."""
    return await receive_body(request.receive, header_int(request, "content-length"), limit, timeout_s)


def check_body_length(length: int, limit: int) -> None:
    """PayloadTooLarge when a ``length``-byte body (announced or read) exceeds ``limit``."""
    if length > limit:
        raise PayloadTooLarge(f"body of {length} bytes exceeds the model's limit of {limit} bytes")


async def receive_body(receive: Receive, length: int | None, limit: int, timeout_s: float = 30.0) -> bytes:
    """:func:`read_body` on the raw ASGI ``receive`` (the inference hot path has no Request object)."""
    if length is not None:
        check_body_length(length, limit)
    # Fast path: a small body arrives whole in the first ASGI message (no timer, no generator).
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"body exceeds the model's limit of {limit} bytes")
        return body
    if message["type"] != "http.request":
        raise InvalidInput("the client disconnected before sending the whole body")
    chunks: list[bytes] = [message.get("body", b"")]
    size = len(chunks[0])
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body exceeds the model's limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestTimeout(f"the body was not received within {timeout_s:g} s") from None
    except ClientDisconnect:
        # Nobody is left to answer; raising keeps it out of the "unexpected error" log.
        raise InvalidInput("the client disconnected before sending the whole body") from None
    return b"".join(chunks)
