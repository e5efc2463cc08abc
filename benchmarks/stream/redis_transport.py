"""Redis Streams: a backlog and a paced producer over a raw socket, read-back with XRANGE."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.stream.events import Events, Outputs, outputs_of
from inferlane.testing import LOOPBACK, redis_process


class Resp:
    """XADD over a raw socket in the Redis protocol, pipelined: redis-py would cost more CPU per
    event than the lane spends scoring it, and this process shares the machine with the lane."""

    def __init__(self, port: int, stream: str) -> None:
        self.sock = socket.create_connection((LOOPBACK, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = stream.encode()
        self.head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%b\r\n$1\r\n*\r\n$4\r\ndata\r\n" % (len(s), s)
        self.buf = b""
        self.pending = 0

    def send(self, events: Events, start: int, stop_at: int) -> None:
        head, payload = self.head, events.payload
        parts = []
        for i in range(start, stop_at):
            v = payload(i)
            parts.append(b"%b$%d\r\n%b\r\n" % (head, len(v), v))
        self.sock.sendall(b"".join(parts))
        self.pending += stop_at - start
        self.replies(block=False)

    def replies(self, block: bool) -> None:
        """Read the XADD replies that arrived (all of them with ``block``)."""
        self.sock.setblocking(block)
        try:
            while self.pending:
                try:
                    chunk = self.sock.recv(1 << 20)
                except BlockingIOError:
                    return
                if not chunk:
                    raise RuntimeError("Redis closed the connection")
                buf, pos = self.buf + chunk, 0
                while self.pending:
                    nl = buf.find(b"\r\n", pos)
                    if nl < 0:
                        break
                    if buf[pos:pos + 1] == b"-":
                        raise RuntimeError(f"XADD failed: {buf[pos + 1:nl].decode(errors='replace')}")
                    end = nl + 2 + int(buf[pos + 1:nl]) + 2
                    if end > len(buf):
                        break
                    pos = end
                    self.pending -= 1
                self.buf = buf[pos:]
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.replies(block=True)
        self.sock.close()


class Redis:
    name = "redis"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pid = 0
        self.port = 0
        self.client: Any = None

    @contextlib.contextmanager
    def running(self) -> Iterator[Redis]:
        import redis

        with redis_process(self.folder) as server:
            self.pid, self.port = server.proc.pid, server.port
            self.client = redis.Redis(host=LOOPBACK, port=self.port)
            try:
                yield self
            finally:
                self.client.close()

    def url(self, name: str) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{name}"

    def create(self, names: list[str]) -> None:
        """Nothing to do: the lane creates its source stream and group, XADD creates the sink."""

    def delete(self, names: list[str]) -> None:
        self.client.delete(*names)

    def produce(self, name: str, events: Events, start: int, stop_at: int) -> None:
        conn = Resp(self.port, name)
        for lo in range(start, stop_at, 5000):
            conn.send(events, lo, min(lo + 5000, stop_at))
            conn.replies(block=True)
        conn.close()

    @contextlib.contextmanager
    def paced_sender(self, name: str, events: Events) -> Iterator[Callable[[int, int], None]]:
        conn = Resp(self.port, name)
        yield lambda a, b: conn.send(events, a, b)
        conn.close()

    def read(self, name: str, expect: int) -> Outputs:
        values: list[bytes] = []
        start = "-"
        while True:
            entries = self.client.xrange(name, min=start, count=10_000)
            values += [f[b"data"] for _, f in entries]
            if len(entries) < 10_000:
                return outputs_of(values)
            start = "(" + entries[-1][0].decode()
