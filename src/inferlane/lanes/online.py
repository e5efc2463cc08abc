"""The online lane: one synchronous request through the dynamic batcher, with a deadline.

    lane = OnlineLane(registry, metrics)
    outcome = await lane.infer("fraud", None, {"features": x}, timeout_s=0.1)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Histogram

from inferlane.core.batcher import Prediction
from inferlane.core.errors import InferlaneError
from inferlane.core.metrics import Metrics
from inferlane.core.model import ModelVersion
from inferlane.rollout.registry import ModelRegistry


@dataclass(frozen=True, slots=True)
class OnlineResult:
    model: ModelVersion
    prediction: Prediction
    total_s: float


class OnlineLane:
    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def _observe(self, model: str, version: str, status: str, seconds: float | None) -> None:
        key = (model, version, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (self.metrics.requests.labels(model, version, "online", status),
                    self.metrics.request_latency.labels(model, version, "online"))
            self._children[key] = pair
        pair[0].inc()
        if seconds is not None:
            pair[1].observe(seconds)

    async def infer(self, name: str, version: str | None, inputs: Mapping[str, np.ndarray],
                    timeout_s: float | None = None) -> OnlineResult:
        """Run one request; raises the InferlaneError that describes any failure."""
        return await self.infer_on(self.registry.get(name, version), inputs, timeout_s)

    async def infer_on(self, mv: ModelVersion, inputs: Mapping[str, np.ndarray],
                       timeout_s: float | None = None) -> OnlineResult:
        """:meth:`infer` on a version the caller already looked up (``registry.get``)."""
        start = time.monotonic()
        if timeout_s is None:
            timeout_s = mv.config.timeout_ms / 1000.0
        try:
            pred = await mv.infer(inputs, start + timeout_s)
        except InferlaneError as e:
            self._observe(mv.name, mv.version, str(e.http_status), None)
            raise
        total = time.monotonic() - start
        self._observe(mv.name, mv.version, "200", total)
        return OnlineResult(mv, pred, total)
