"""The harness shared by the tests and the benchmarks: one place for each piece.

    from inferlane.testing import free_port, redis_server, serve, wait_until

    with redis_server(tmp) as url, serve(repo, log_path=tmp / "server.log",
                                         env={"INFERLANE_JOBS_STORE": url}) as server:
        wait_until(lambda: job_done(server.url), "the job succeeded", timeout_s=30)

Modules, one concern each:

- ``ports``: free loopback ports; whether a port accepts connections.
- ``receiver``: a real HTTP server that records requests and answers from a script.
- ``waiting``: ``wait_until(check, what, timeout_s)``, waiting on an observable condition.
- ``processes``: stopping child processes, noticing that one exited, log tails, CPU time.
- ``server``: the real ``inferlane serve`` subprocess, started on a free port, ready when it says so.
- ``services``: Redis, PostgreSQL, Kafka (Tansu), S3 (moto) and Pushgateway servers, retried on a new port when
  another process takes theirs first; a missing one is a ServiceError naming the install command.
- ``fixtures``: ``serve_or_fail`` for pytest fixtures (fail, never skip).
- ``profiling``: py-spy recording and its summary.
- ``tables``: Markdown tables for benchmark output.

Nothing here imports pytest, Redis, Kafka or boto3 until a function needs it.
"""

from inferlane.testing.disk import grow, small_disk
from inferlane.testing.fixtures import serve_or_fail
from inferlane.testing.ports import LOOPBACK, accepts_connections, free_port
from inferlane.testing.processes import (
    all_cpu_seconds,
    cpu_seconds,
    exited,
    log_tail,
    process_tree,
    stop_process,
    tree_cpu_seconds,
)
from inferlane.testing.profiling import start_py_spy, summarize_py_spy
from inferlane.testing.receiver import HttpReceiver
from inferlane.testing.server import ServerProcess, is_ready, serve, start_server, wait_ready
from inferlane.testing.services import (
    INSTALL_MOTO,
    INSTALL_POSTGRES,
    INSTALL_PUSHGATEWAY,
    INSTALL_REDIS_SERVER,
    INSTALL_TANSU,
    RestartableRedis,
    ServiceError,
    create_topics,
    kafka_broker,
    on_free_port,
    postgres_server,
    pushgateway,
    redis_process,
    redis_server,
    s3_server,
    tansu_process,
)
from inferlane.testing.tables import Column, format_table, num, pct, ratio
from inferlane.testing.waiting import WaitFailed, wait_until, wait_until_async

__all__ = [
    "INSTALL_MOTO",
    "INSTALL_POSTGRES",
    "INSTALL_PUSHGATEWAY",
    "INSTALL_REDIS_SERVER",
    "INSTALL_TANSU",
    "LOOPBACK",
    "Column",
    "HttpReceiver",
    "RestartableRedis",
    "ServerProcess",
    "ServiceError",
    "WaitFailed",
    "accepts_connections",
    "all_cpu_seconds",
    "cpu_seconds",
    "create_topics",
    "exited",
    "format_table",
    "free_port",
    "grow",
    "is_ready",
    "kafka_broker",
    "log_tail",
    "num",
    "on_free_port",
    "pct",
    "postgres_server",
    "process_tree",
    "pushgateway",
    "ratio",
    "redis_process",
    "redis_server",
    "s3_server",
    "serve",
    "serve_or_fail",
    "small_disk",
    "start_py_spy",
    "start_server",
    "stop_process",
    "summarize_py_spy",
    "tansu_process",
    "tree_cpu_seconds",
    "wait_ready",
    "wait_until",
    "wait_until_async",
]
