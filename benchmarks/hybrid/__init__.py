"""The hybrid lane's benchmark: precomputed hits against live scoring under open-loop load, and the
batch lane's precompute throughput into each store against its Parquet output
(``python -m benchmarks.hybrid``; benchmarks/README.md)."""
