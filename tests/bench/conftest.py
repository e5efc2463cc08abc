"""The bench tests' server: tests/bench/app.py (known delays, a one-off stall, 503s) as a real
process on a free port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferlane.testing import is_ready, on_free_port

APP = Path(__file__).with_name("app.py")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("bench-app") / "app.log"
    with on_free_port(lambda port: [sys.executable, str(APP), str(port)], is_ready, log=log,
                      what="the bench test app is ready", start_timeout_s=30) as running:
        yield f"http://127.0.0.1:{running.port}"
