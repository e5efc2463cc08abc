"""A throwaway S3-compatible server (moto's server mode) on a free loopback port, in this process.

    with s3_server(buckets=["scores-in"]) as endpoint:     # http://127.0.0.1:PORT
        boto3.client("s3", endpoint_url=endpoint).put_object(...)

While it runs, the environment holds dummy AWS credentials and no AWS profile, region or endpoint
of the machine's own, so nothing can reach a real account. moto binds port 0 itself (the kernel
picks a free port as it binds), so there is no port race to retry.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

from inferlane.testing.ports import LOOPBACK
from inferlane.testing.services.launcher import ServiceError

INSTALL_MOTO = "moto's S3 server is not installed: install the dev extras: bash scripts/setup dev"

DUMMY_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
CLEARED_AWS_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@contextlib.contextmanager
def dummy_aws_environment() -> Iterator[None]:
    """Dummy credentials and no profile, region or endpoint from the machine, restored afterwards."""
    saved = {name: os.environ.get(name) for name in (*DUMMY_AWS_ENV, *CLEARED_AWS_ENV)}
    os.environ.update(DUMMY_AWS_ENV)
    for name in CLEARED_AWS_ENV:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def s3_server(buckets: Sequence[str] = ()) -> Iterator[str]:
    """Start moto's S3 server on loopback with ``buckets`` created; yields its endpoint URL."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise ServiceError(INSTALL_MOTO) from None
    with dummy_aws_environment():
        server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        server.start()
        access_log = logging.getLogger("werkzeug")  # one INFO line per request otherwise
        level = access_log.level
        access_log.setLevel(logging.WARNING)
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name=DUMMY_AWS_ENV["AWS_DEFAULT_REGION"])
            for bucket in buckets:
                client.create_bucket(Bucket=bucket)
            yield endpoint
        finally:
            access_log.setLevel(level)
            server.stop()
