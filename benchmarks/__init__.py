"""One benchmark per lane, each a package run as a module from the repository root:

    .venv/bin/python -m benchmarks.online --quick
    .venv/bin/python -m benchmarks.jobs --quick
    .venv/bin/python -m benchmarks.batch --quick
    .venv/bin/python -m benchmarks.stream --quick

Each prints a table of ratios against baselines measured in the same run; see benchmarks/README.md.
"""
