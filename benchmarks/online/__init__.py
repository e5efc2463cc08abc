"""Online-lane benchmark: inferlane serve vs. the Python HTTP floor vs. raw ONNX Runtime, on one
pinned server core. Run ``python -m benchmarks.online --help``; see benchmarks/README.md.

Modules: ``__main__`` (command line, orchestration), ``config`` (models, cells, options),
``cells`` (measuring one cell through a pinned driver), ``driver`` / ``bare`` / ``raw`` (the helper
programs: load driver, bare HTTP endpoint, raw ONNX Runtime probe), ``machine`` (pinning, /proc and
/metrics readings), ``report`` (the table and the ideal/target blocks).
"""
