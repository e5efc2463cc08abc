"""A small asyncio HTTP/1.1 load generator (keep-alive connections, one request in flight each).

Used by the demo and the benchmarks; it measures latency from just before a request is written
to when its whole response has been read.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    headers: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def build_request(host: str, port: int, path: str, body: bytes,
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    hdrs = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(hdrs.get("content-length", "0")))
    return status, hdrs, body


async def run_load(host: str, port: int, requests: list[bytes], concurrency: int,
                   keep_headers: bool = False, request_timeout: float = 60.0) -> LoadResult:
    """Send pre-built raw requests over ``concurrency`` connections; each connection sends its
    next request when the previous response arrived."""
    result = LoadResult()
    it = iter(requests)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for raw in it:
                t0 = time.perf_counter()
                writer.write(raw)
                status, hdrs, _ = await asyncio.wait_for(_read_response(reader), request_timeout)
                result.latencies.append(time.perf_counter() - t0)
                result.statuses[status] += 1
                if keep_headers:
                    result.headers.append(hdrs)
                if hdrs.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - t0
    return result


async def one_request(host: str, port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        return await asyncio.wait_for(_read_response(reader), 30)
    finally:
        writer.close()
