"""HTTP/1.1 on the wire, as cheaply as Python allows: requests are built once as bytes, responses
are framed by an incremental parser that reads only what framing needs (status, Content-Length or
chunked, Connection: close) and skips the rest.

    raw = build_request("127.0.0.1", 8000, "/v2/models/fraud/infer", body)
    parser = ResponseParser()
    for response in parser.feed(data):     # zero, one or several complete responses
        response.status, response.close

A load generator spends most of its time here, so there is no header dictionary unless asked for
(``keep_headers``) and no body copy unless asked for (``keep_body``).
"""

from __future__ import annotations

from dataclasses import dataclass


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response this parser can frame."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    close: bool
    """The server will close the connection after this response (``Connection: close``)."""
    headers: dict[str, str] | None = None
    """Lower-case names; only when the parser keeps headers."""
    body: bytes | None = None
    """Only when the parser keeps bodies."""


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
                  method: str = "POST") -> bytes:
    """One complete keep-alive request, ready to write as many times as needed."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return out


def _header_value(lower_head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case, with its colon) in a lower-cased head, or None."""
    i = lower_head.find(b"\r\n" + name)
    if i < 0:
        return None
    start = i + 2 + len(name)
    end = lower_head.find(b"\r\n", start)
    return lower_head[start:end if end >= 0 else None].strip()


class ResponseParser:
    """Frames responses out of a byte stream, in order. Feed it what the socket delivers."""

    def __init__(self, keep_headers: bool = False, keep_body: bool = False) -> None:
        self._buf = bytearray()
        self._keep_headers = keep_headers
        self._keep_body = keep_body

    def feed(self, data: bytes) -> list[Response]:
        buf = self._buf
        buf += data
        out: list[Response] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            head = bytes(buf[:end])
            if not head.startswith(b"HTTP/1."):
                raise ProtocolError(f"not an HTTP/1.x response: {head[:40]!r}")
            try:
                status = int(head[9:12])
            except ValueError:
                raise ProtocolError(f"no status code in {head[:40]!r}") from None
            lower = head.lower()
            framed = self._frame(buf, end + 4, lower, status)
            if framed is None:
                return out  # the body has not all arrived yet
            consumed, body = framed
            out.append(Response(status, _header_value(lower, b"connection:") == b"close",
                                parse_headers(head) if self._keep_headers else None,
                                body if self._keep_body else None))
            del buf[:consumed]

    def _frame(self, buf: bytearray, start: int, lower: bytes, status: int) -> tuple[int, bytes | None] | None:
        """(bytes the response takes, its body) once it is complete, else None."""
        if status in (204, 304) or 100 <= status < 200:
            return start, b""
        length = _header_value(lower, b"content-length:")
        if length is not None:
            end = start + int(length)
            return (end, bytes(buf[start:end]) if self._keep_body else None) if len(buf) >= end else None
        encoding = _header_value(lower, b"transfer-encoding:")
        if encoding is not None and encoding.endswith(b"chunked"):
            return self._chunked(buf, start)
        raise ProtocolError("a response with neither Content-Length nor chunked encoding "
                            "(a body that ends when the connection closes) cannot be load-tested over keep-alive")

    def _chunked(self, buf: bytearray, pos: int) -> tuple[int, bytes | None] | None:
        parts: list[bytes] = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                trailer_end = buf.find(b"\r\n", pos)
                while trailer_end > pos:  # skip trailer fields up to the empty line
                    pos = trailer_end + 2
                    trailer_end = buf.find(b"\r\n", pos)
                if trailer_end < 0:
                    return None
                return trailer_end + 2, b"".join(parts) if self._keep_body else None
            if len(buf) < pos + size + 2:
                return None
            if self._keep_body:
                parts.append(bytes(buf[pos:pos + size]))
            pos += size + 2
