"""The response parser frames what a socket delivers, however it is cut (pure logic)."""

from __future__ import annotations

from inferlane.bench.wire import ResponseParser, build_request

FIXED = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
CHUNKED = (b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"3\r\nbus\r\n1;ext=1\r\ny\r\n0\r\nX-Trailer: 1\r\n\r\n")


def test_responses_cut_at_every_byte_are_framed_in_order() -> None:
    stream = FIXED + CHUNKED + FIXED
    parser = ResponseParser(keep_headers=True, keep_body=True)
    got = [r for i in range(len(stream)) for r in parser.feed(stream[i:i + 1])]
    assert [(r.status, r.body, r.close) for r in got] == [(200, b"hello", False), (503, b"busy", True),
                                                         (200, b"hello", False)]
    assert got[0].headers == {"content-length": "5", "content-type": "text/plain"}


def test_several_responses_in_one_read() -> None:
    assert [r.status for r in ResponseParser().feed(FIXED * 3)] == [200, 200, 200]


def test_a_request_is_built_once_with_its_length() -> None:
    raw = build_request("h", 1, "/v2/models/m/infer", b'{"a":1}', {"x-id": "7"})
    assert raw.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h:1\r\n")
    assert b"Content-Length: 7\r\n" in raw and b"x-id: 7\r\n" in raw and raw.endswith(b'\r\n\r\n{"a":1}')
