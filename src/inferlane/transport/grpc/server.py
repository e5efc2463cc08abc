"""The gRPC server: grpcio's ``aio`` server on the event loop that serves HTTP, beside it on a second port.

    server = GrpcServer(service, "127.0.0.1", 8001, max_message_bytes=8 << 20)
    await server.start()          # ConfigError when the port cannot be bound
    ...
    await server.stop(grace_s=30)  # refuses new calls, lets the running ones finish

Running on the same loop means the same batcher, registry and metrics objects answer both
transports, with no hand-off between threads. TLS takes the certificate and key files that HTTP
uses. With several server processes (``--workers N``) each process binds the port with
SO_REUSEPORT and the kernel spreads connections over them, as it does for HTTP.

NOTE: grpcio's aio server accepts one call at a time: it asks the core for the next call only once
the last one is accepted, a round trip through its poller thread and a turn of the event loop. Calls
then reach the batcher one by one, each finds the model idle, and no batch ever forms (measured:
1.0 row per forward pass at 64 concurrent calls). So the port is served by ACCEPT_LOOPS servers
at once (SO_REUSEPORT, in this process): connections spread over their accept loops, calls of
different connections arrive together, and batches form again (8.5 rows per pass, 1.6 to 1.9 times
the throughput at 64 connections in benchmarks.grpc). Calls multiplexed on one connection still
come through one accept loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from inferlane.core.errors import ConfigError
from inferlane.transport.grpc.service import InferenceService

log = logging.getLogger(__name__)

ACCEPT_LOOPS = 8
"""grpcio servers sharing the port in each process (see the NOTE above)."""
MESSAGE_OVERHEAD = 64 * 1024
"""Room above the largest model's ``max_request_bytes`` for a message's names and shapes: the
per-model limit is checked in ModelInfer, on the message's exact size, with a RESOURCE_EXHAUSTED
that names it; gRPC's own ceiling only stops what no model would take."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A PEM certificate (chain) and its private key."""

    certfile: Path
    keyfile: Path

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.keyfile.read_bytes(), self.certfile.read_bytes())])


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC reads it (IPv6 literals in brackets)."""
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """``service`` on ``host:port``. ``max_message_bytes``: the largest request any served model takes
    (its ``limits.max_request_bytes``). The port is bound with SO_REUSEPORT (``accept_loops`` servers
    share it, and so do other ``--workers`` processes): ``inferlane serve`` checks that it is free
    before starting (server/app.py), since a shared bind would not fail."""

    def __init__(self, service: InferenceService, host: str, port: int, *, max_message_bytes: int,
                 tls: TlsFiles | None = None, accept_loops: int = ACCEPT_LOOPS) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.tls = tls
        self.accept_loops = accept_loops
        self._servers: list[grpc.aio.Server] = []

    def _server(self, where: str) -> grpc.aio.Server:
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_message_bytes + MESSAGE_OVERHEAD),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1),
        ])
        server.add_generic_rpc_handlers([self.service.handler()])
        try:
            if self.tls is not None:
                server.add_secure_port(where, self.tls.credentials())
            else:
                server.add_insecure_port(where)
        except RuntimeError as e:  # grpcio says only "Failed to bind"
            raise ConfigError(f"cannot listen for gRPC on {where}: {e} (another process may hold the port; "
                              "choose another with --grpc-port / INFERLANE_GRPC_PORT)") from None
        return server

    async def start(self) -> None:
        where = address(self.host, self.port)
        try:
            for _ in range(self.accept_loops):
                server = self._server(where)
                await server.start()
                self._servers.append(server)
        except BaseException:
            await self.stop(0)
            raise
        log.info("gRPC (Open Inference Protocol V2) on %s%s", where, " with TLS" if self.tls else "")

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls on every accept loop at once, then let the running ones finish."""
        servers, self._servers = self._servers, []
        await asyncio.gather(*(s.stop(grace_s) for s in servers))
