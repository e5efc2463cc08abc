"""Real backing services on free loopback ports, stopped afterwards: Redis, PostgreSQL, a
Kafka-protocol broker (Tansu), an S3-compatible server (moto) and a Prometheus Pushgateway. A
missing binary or package is a ServiceError whose message is the install command; fixtures turn
it into a failure, never a skip.
"""

from inferlane.testing.services.kafka import INSTALL_TANSU, create_topics, kafka_broker, tansu_binary, tansu_process
from inferlane.testing.services.launcher import Running, ServiceError, on_free_port
from inferlane.testing.services.postgres import INSTALL_POSTGRES, postgres_bindir, postgres_server
from inferlane.testing.services.pushgateway import INSTALL_PUSHGATEWAY, pushgateway
from inferlane.testing.services.redis import (
    INSTALL_REDIS_SERVER,
    RestartableRedis,
    redis_command,
    redis_ping,
    redis_process,
    redis_server,
)
from inferlane.testing.services.s3 import INSTALL_MOTO, dummy_aws_environment, s3_server

__all__ = [
    "INSTALL_MOTO",
    "INSTALL_POSTGRES",
    "INSTALL_PUSHGATEWAY",
    "INSTALL_REDIS_SERVER",
    "INSTALL_TANSU",
    "RestartableRedis",
    "Running",
    "ServiceError",
    "create_topics",
    "dummy_aws_environment",
    "kafka_broker",
    "on_free_port",
    "postgres_bindir",
    "postgres_server",
    "pushgateway",
    "redis_command",
    "redis_ping",
    "redis_process",
    "redis_server",
    "s3_server",
    "tansu_binary",
    "tansu_process",
]
