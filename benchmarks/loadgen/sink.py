"""A server faster than the generator: ``python -m benchmarks.loadgen.sink PORT``.

It does not parse HTTP: for every request head (``\\r\\n\\r\\n``) it reads it writes one pre-built
200 response. That is enough for keep-alive load whose bodies are JSON (which never holds a blank
line), and it costs a fraction of a real server, so a generator pointed at it finds its own limit,
not the server's. Readiness: any request (``GET /v2/health/ready`` included) gets the 200.
"""

from __future__ import annotations

import asyncio
import sys

from benchmarks.online.bare import BARE_RESPONSE
from benchmarks.online.config import HOST

RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(BARE_RESPONSE)).encode() + b"\r\n\r\n" + BARE_RESPONSE)


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        data = self.tail + data  # a head cut between two reads is still counted once
        n = data.count(b"\r\n\r\n")
        self.tail = data[-3:]
        if n:
            self.tail = data[data.rfind(b"\r\n\r\n") + 4:][-3:]
            self.transport.write(RESPONSE * n)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Sink, HOST, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    import uvloop

    uvloop.run(serve(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
