"""Open Inference Protocol V2 over gRPC (``inference.GRPCInferenceService``), as tritonclient speaks it.

    service = InferenceService(lane, ready=..., orders=controller.orders, token=admin_token)
    server = GrpcServer(service, "127.0.0.1", 8001, max_message_bytes=...)
    await server.start()

Modules, one concern each:

- ``proto/``: the vendored ``grpc_service.proto`` and the code generated from it (``scripts/gen-grpc``).
- ``tensors``: ModelInferRequest → the request the lanes take; outputs → ModelInferResponse.
- ``service``: one coroutine per RPC over the online lane and transport/extensions.py; errors mapped
  by their gRPC code.
- ``server``: grpcio's aio server on the HTTP server's event loop, its port, limits and TLS.

grpcio is an optional dependency (``pip install 'inferlane[grpc]'``): nothing imports this package
unless ``--grpc-port`` is set.
"""

from inferlane.transport.grpc.server import GrpcServer, TlsFiles
from inferlane.transport.grpc.service import InferenceService

__all__ = ["GrpcServer", "InferenceService", "TlsFiles"]
