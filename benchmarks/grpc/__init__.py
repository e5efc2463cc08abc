"""The gRPC transport against REST on the same server: ``python -m benchmarks.grpc [--quick]``.

- ``__main__``: command line, the server, the cells, the table and the target.
- ``h2load``: the gRPC load generator (h2load, C) and the gRPC-framed request it sends.
"""
