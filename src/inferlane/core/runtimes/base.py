"""The runtime contract: load an artifact, then ``predict(batch) -> outputs`` on a whole batch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from inferlane.core.spec import ModelConfig

Batch = Mapping[str, np.ndarray]


class Runtime(Protocol):
    """One loaded model version. ``predict`` is called from a worker thread, never concurrently
    with ``close``; it gets every declared input (already checked) and returns every output."""

    def predict(self, batch: Batch) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class RuntimeFactory(Protocol):
    def __call__(self, config: ModelConfig, version_dir: Path) -> Runtime: ...
