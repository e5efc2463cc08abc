"""A throwaway Prometheus Pushgateway on a free loopback port (for batch jobs that push metrics).

    with pushgateway(tmp) as url:        # http://127.0.0.1:PORT, nothing persisted
        ...
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from inferlane.testing.ports import LOOPBACK
from inferlane.testing.services.launcher import ServiceError, on_free_port

INSTALL_PUSHGATEWAY = ("the Prometheus Pushgateway is not installed: run `apt-get install -y prometheus-pushgateway` "
                       "(scripts/check does it)")


def _ready(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://{LOOPBACK}:{port}/-/ready", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def pushgateway(root: Path) -> Iterator[str]:
    """Start ``prometheus-pushgateway`` (log in ``root/pushgateway.log``); yields its URL."""
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        raise ServiceError(INSTALL_PUSHGATEWAY)

    def command(port: int) -> list[str]:
        return [binary, f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn"]

    with on_free_port(command, _ready, log=root / "pushgateway.log", what="the Pushgateway answered /-/ready",
                      start_timeout_s=15.0) as running:
        yield f"http://{LOOPBACK}:{running.port}"
