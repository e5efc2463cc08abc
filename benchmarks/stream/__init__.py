"""Stream-lane benchmark: events/s and end-to-end latency through Kafka (Tansu) and Redis Streams,
against the raw model in the same run. Run ``python -m benchmarks.stream --help``; see
benchmarks/README.md.

Modules: ``__main__`` (command line, the run), ``events`` (the events produced and the outputs read
back), ``kafka_transport`` / ``redis_transport`` (producing, paced sending and reading back per
transport), ``lane`` (``inferlane stream run`` as a subprocess), ``phases`` (raw, backlog, paced),
``report`` (the rows and the table).
"""
