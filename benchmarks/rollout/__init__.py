"""Rollout benchmark: a promotion, an automatic rollback and shadow mode against a real ``inferlane
serve`` under open-loop load at half its capacity. Run ``python -m benchmarks.rollout --help``; see
benchmarks/README.md.

Modules: ``__main__`` (command line, the run), ``models`` (the repository: versions 1, 2 and 3),
``client`` (the load process: a constant request rate, every answer recorded), ``load`` (capacity,
starting the client, reading its answers), ``admin`` (the rollout CLI and the admin API),
``promote``, ``rollback`` and ``shadow`` (one scenario each), ``report`` (the table and raw figures).
"""
