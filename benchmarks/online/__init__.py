"""Online-lane benchmark: ``inferlane serve`` on default settings against a naive Starlette + ONNX
Runtime endpoint, the bare Python HTTP floor and raw ONNX Runtime, servers pinned to one core and
wrk to another. Run ``python -m benchmarks.online --help``; see benchmarks/README.md.

Modules: ``__main__`` (command line, orchestration), ``config`` (models, endpoints, concurrencies,
targets, options), ``models`` (the model repository and the request bodies), ``servers`` (starting
each server pinned), ``wrk`` (the load generator: Lua script, command, result), ``cells`` (one
cell: warm-up, measured runs, server CPU, the rest of the machine), ``machine`` (/proc and /metrics
readings), ``targets`` (the ideal and the target ratios), ``report`` (the tables); the helper
programs ``bare`` (the bare endpoint), ``naive`` (the naive endpoint) and ``raw`` (raw ONNX Runtime).
"""
