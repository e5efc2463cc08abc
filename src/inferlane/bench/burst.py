"""A burst of given requests over a few keep-alive connections, one request in flight each: the
demo's load, the end-to-end tests' and the jobs benchmark's. It runs on the bench engine (one
HTTP client, one parser), so its figures are measured the same way as ``inferlane bench``'s.

    reqs = [build_request("127.0.0.1", port, "/v2/models/fraud/infer", body) for body in bodies]
    res = await run_load("127.0.0.1", port, reqs, concurrency=32, keep_headers=True)
    res.statuses, res.percentile(99), res.headers[0]["server-timing"]
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from inferlane.bench.engine import FixedList, Target
from inferlane.bench.wire import ProtocolError, Response, ResponseParser


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    headers: list[dict[str, str]] = field(default_factory=list)
    """With ``keep_headers``: each answer's headers (lower-case names), in the order they arrived."""
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    """Requests with no answer, by cause (reset, timeout, ...)."""

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


async def run_load(host: str, port: int, requests: list[bytes], concurrency: int,
                   keep_headers: bool = False, request_timeout: float = 60.0) -> LoadResult:
    """Send every request once over ``concurrency`` connections; each connection sends its next
    request when the previous answer arrived. Latency: from the write to the whole answer."""
    driver = FixedList(Target(host, port, tuple(requests), request_timeout), connections=concurrency,
                       keep_headers=keep_headers)
    tally = await driver.run()
    return LoadResult(tally.latencies, tally.statuses, tally.headers, tally.wall_s, tally.errors)


async def one_request(host: str, port: int, raw: bytes, timeout_s: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    parser = ResponseParser(keep_headers=True, keep_body=True)

    async def answer() -> Response:
        while True:
            data = await reader.read(65536)
            if not data:
                raise ProtocolError("the server closed the connection before answering")
            responses = parser.feed(data)
            if responses:
                return responses[0]

    try:
        writer.write(raw)
        r = await asyncio.wait_for(answer(), timeout_s)
        return r.status, r.headers or {}, r.body or b""
    finally:
        writer.close()
