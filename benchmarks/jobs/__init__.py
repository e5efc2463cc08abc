"""Jobs-lane benchmark: submit throughput, submit-to-result latency (SQLite vs Redis), and online
latency while a flood of jobs drains. Run ``python -m benchmarks.jobs --help``; see
benchmarks/README.md.

Modules: ``__main__`` (command line, the run per store), ``scenarios`` (accept, idle, load, and the
servers and stores they run against), ``flood`` (online p99 quiet vs. during a job flood),
``submitter`` (the client process that submits jobs), ``report`` (the tables).
"""
