"""Batch-lane benchmark: ``inferlane batch`` end to end against the raw ONNX Runtime limit and the Ray
engine, in the same run. Run ``python -m benchmarks.batch --help``; see benchmarks/README.md.

Modules: ``__main__`` (command line, the table), ``measure`` (input data, the raw limit, one job).
"""
