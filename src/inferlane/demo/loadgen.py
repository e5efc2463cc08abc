"""The demo's load generator is the bench package's (one HTTP client, one way to measure): this
module keeps the old import path working for the demo, the tests and the benchmarks."""

from inferlane.bench.burst import LoadResult, one_request, run_load
from inferlane.bench.wire import build_request

__all__ = ["LoadResult", "build_request", "one_request", "run_load"]
