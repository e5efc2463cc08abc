"""Shared pieces of the scale-out tests: read /metrics, and an open-loop load in a background thread."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field

import httpx

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$")


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` summed by series name (every label set added up)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    sums: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            sums[m.group(1)] = sums.get(m.group(1), 0.0) + float(m.group(3))
    return sums


@dataclass
class OpenLoop:
    """Requests to ``model`` at ``rate`` per second, each on schedule whatever the answers (open loop),
    until :meth:`stop`; ``rate`` may be changed while it runs. Records (send time, status; 0: no answer)."""

    url: str
    rate: float
    model: str = "slow"
    count: int | None = None
    """Stop after this many requests (None: at :meth:`stop`)."""
    results: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> OpenLoop:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.count is None:  # else: leaving waits for all ``count`` answers
            self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    async def _run(self) -> None:
        # a new connection per request: the kernel spreads them over the replicas
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()
            due = time.monotonic()
            sent = 0
            while not self._stop.is_set() and sent != self.count:
                sent += 1
                task = asyncio.create_task(self._one(client, time.monotonic()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                due += 1.0 / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, sent: float) -> None:
        try:
            r = await client.post(f"{self.url}/v2/models/{self.model}/infer", json=BODY)
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        self.results.append((sent, status))

    def failures_after(self, t: float) -> list[tuple[float, int]]:
        return [(s, code) for s, code in self.results if s >= t and code != 200]
