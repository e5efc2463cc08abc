"""The model repository the rollout benchmark serves: one model, ``m``, in three versions.

    write_repository(work / "models")   # m/1 stable (the default), m/2 good, m/3 bad

A Python-class model, y = 2x on FP32 x[-1, 4] (the cost of a request is the server's, not the
model's). Version 2 computes the same function as version 1, so a rollout to it passes every check.
Version 3 raises on every batch holding an input whose first value is below FAIL_BELOW; the client
draws inputs uniformly in [0, 1), so that is 20% of inputs (more of version 3's requests fail when
several share a batch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import yaml

MODEL = "m"
STABLE, GOOD, BAD = "1", "2", "3"
FAIL_BELOW = 0.2
"""Version 3 fails on inputs whose first value is below this: 20% of uniform inputs."""

_MODEL_PY = '''
class Model:
    """y = 2x; fails the batch when an input's first value is below ``fail_below.txt`` (0: never)."""

    def load(self, version_dir):
        self.fail_below = float((version_dir / "fail_below.txt").read_text())

    def predict(self, batch):
        x = batch["x"]
        if (x[:, 0] < self.fail_below).any():
            raise ValueError(f"version 3 fails on inputs whose first value is below {self.fail_below}")
        return {"y": x * 2.0}
'''


def write_repository(repo: Path) -> Path:
    """``<repo>/m/{1,2,3}/`` and ``m/model.yaml`` (default version 1); returns ``repo``."""
    folder = repo / MODEL
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_batch_size": 32, "max_queue_size": 4096},
        "timeout_ms": 10_000,
        "warmup": {"inputs": [{"x": [[0.5, 0.5, 0.5, 0.5]]}]},
        "default_version": STABLE,
    }))
    for version, fail_below in ((STABLE, 0.0), (GOOD, 0.0), (BAD, FAIL_BELOW)):
        d = folder / version
        d.mkdir(exist_ok=True)
        (d / "model.py").write_text(_MODEL_PY)
        (d / "fail_below.txt").write_text(str(fail_below))
    return repo


def request_bodies(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct one-row V2 bodies, inputs uniform in [0, 1)."""
    rows = np.random.default_rng(seed).random((count, 4), dtype=np.float32)
    return [orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]})
            for row in rows]
