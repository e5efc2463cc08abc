"""``python -m benchmarks.loadgen``: ``inferlane bench`` against wrk on the same servers, same run."""
