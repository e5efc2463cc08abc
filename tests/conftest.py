"""Shared fixtures: a model repository built once per session and a real server subprocess."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from inferlane.demo.models import write_fraud_model
from inferlane.testing import ServerProcess, serve, serve_or_fail

Server = ServerProcess  # the name the tests use for a running ``inferlane serve``

SLOW_MODEL = textwrap.dedent('''
    import time
    import numpy as np

    class Model:
        def load(self, version_dir):
            self.delay = float((version_dir / "delay.txt").read_text())

        def predict(self, batch):
            time.sleep(self.delay)
            return {"y": batch["x"] * 2.0}
''')


def write_slow_model(repo: Path, name: str = "slow", delay: float = 0.05, **batching: object) -> Path:
    """A Python-class model that sleeps ``delay`` seconds per batch (for queueing and deadlines)."""
    d = repo / name
    (d / "1").mkdir(parents=True, exist_ok=True)
    (d / "1" / "model.py").write_text(SLOW_MODEL)
    (d / "1" / "delay.txt").write_text(str(delay))
    cfg = {
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_batch_size": 1, "max_queue_size": 4, "max_queue_delay_ms": 0, **batching},
        "timeout_ms": 5000,
        "warmup": {"batch_sizes": [1]},
    }
    (d / "model.yaml").write_text(yaml.safe_dump(cfg))
    return d


@pytest.fixture(autouse=True, scope="session")
def _state_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every lane's state folder (core/state.py) is a temporary one: no test, and no server or
    lane a test starts, keeps state in the checkout."""
    patch = pytest.MonkeyPatch()
    patch.setenv("INFERLANE_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fraud (ONNX, sklearn-trained) and slow (Python class, 50 ms per batch)."""
    repo = tmp_path_factory.mktemp("models")
    write_fraud_model(repo, rows=4000)
    write_slow_model(repo)
    return repo


def _serve(repo: Path, log: Path, extra: list[str] | None = None,
           env: dict[str, str] | None = None) -> Iterator[Server]:
    """For fixtures: ``inferlane serve repo`` on a free port until the fixture ends. A server that
    does not start fails the test with the end of its log."""
    # Each server keeps its job store next to its log, never in the working directory.
    env = {"INFERLANE_JOBS_STORE": f"sqlite:///{log.parent / 'jobs.db'}", **(env or {})}
    yield from serve_or_fail(serve(repo, log_path=log, extra=extra, env=env))


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``inferlane serve`` on a free port, shared by the end-to-end tests (read-only use)."""
    yield from _serve(model_repo, tmp_path_factory.mktemp("log") / "server.log")
