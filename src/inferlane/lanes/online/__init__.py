"""The online lane: one synchronous request through the dynamic batcher, with a deadline.

    lane = OnlineLane(registry, metrics)
    result = await lane.infer("fraud", None, {"features": x}, timeout_s=0.1, key="user-17")
    result.model.version       # the version that answered (the router's choice: key is sticky)

An unpinned request (no version named) goes where the router sends it, and is reported to the
router's listeners as an :class:`~inferlane.rollout.router.Outcome` once it finished. When the
route has a shadow version, a share of the live requests is copied to it after the live answer
is ready: at background priority, never awaited by the live request, at most ``shadow_limit``
copies at once (more are dropped and counted), and whatever the shadow does, the live answer is
already final.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Histogram

from inferlane.core.batcher import BACKGROUND, Prediction
from inferlane.core.errors import DeadlineExceeded, InferlaneError, ModelError, ModelNotReady
from inferlane.core.metrics import Metrics, ModelStats
from inferlane.core.model import ModelVersion
from inferlane.rollout.registry import ModelRegistry
from inferlane.rollout.router import Outcome

log = logging.getLogger(__name__)

SHADOW_LIMIT = 64
"""Shadow copies running at once in one process; more are dropped (never queued behind live work)."""


@dataclass(frozen=True, slots=True)
class OnlineResult:
    model: ModelVersion
    prediction: Prediction
    total_s: float


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    """Rows of a request that passed the signature check (every input has the same first dimension)."""
    return int(next(iter(inputs.values())).shape[0])


def _version_failed(e: BaseException) -> bool:
    """Whether an error counts against the version in an Outcome: the model failed (500) or was too
    slow for the deadline (504). None for errors that say nothing about it (bad input, a full queue)."""
    return isinstance(e, ModelError | DeadlineExceeded) or not isinstance(e, InferlaneError)


class OnlineLane:
    def __init__(self, registry: ModelRegistry, metrics: Metrics, *, shadow_limit: int = SHADOW_LIMIT) -> None:
        self.registry = registry
        self.router = registry.router
        self.metrics = metrics
        self.shadow_limit = shadow_limit
        self._children: dict[tuple[str, str, str, str], tuple[Counter, Histogram, ModelStats]] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        self._shadow_dropped = metrics.counter(
            "inferlane_shadow_dropped_total", "Shadow copies not sent because shadow_limit were running")

    def observe(self, model: str, version: str, status: str, seconds: float | None, lane: str = "online", *,
                 rows: int = 0, failed_after: float = 0.0) -> None:
        """One request's outcome: answered in ``seconds`` (``rows`` rows), or failed (``seconds`` None)
        ``failed_after`` seconds in; counted in Prometheus and in the statistics extension."""
        key = (model, version, status, lane)
        children = self._children.get(key)
        if children is None:
            children = (self.metrics.requests.labels(model, version, lane, status),
                        self.metrics.request_latency.labels(model, version, lane),
                        self.metrics.model_stats(model, version))
            self._children[key] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)
            children[2].on_request(True, seconds, rows)
        else:
            children[2].on_request(False, failed_after, 0)

    async def infer(self, name: str, version: str | None, inputs: Mapping[str, np.ndarray],
                    timeout_s: float | None = None, key: str | None = None) -> OnlineResult:
        """Run one request on ``version``, or where the router sends ``key`` when ``version`` is
        None; raises the InferlaneError that describes any failure."""
        return await self.infer_on(self.registry.get(name, version, key), inputs, timeout_s,
                                   routed=version is None, key=key)

    async def infer_on(self, mv: ModelVersion, inputs: Mapping[str, np.ndarray],
                       timeout_s: float | None = None, *, routed: bool = False,
                       key: str | None = None) -> OnlineResult:
        """:meth:`infer` on a version the caller already looked up (``registry.get``). ``routed``:
        the router chose it (the request named no version), so the request is reported as an
        Outcome, may be mirrored to a shadow, and moves to the router's current choice if ``mv``
        started unloading meanwhile."""
        start = time.monotonic()
        if not mv.ready:  # unloading since the lookup (while the body was read)
            if not routed:
                raise ModelNotReady(f"model {mv.name!r} version {mv.version} is not ready (unloading)")
            mv = self.registry.get(mv.name, None, key)
        if timeout_s is None:
            timeout_s = mv.config.timeout_ms / 1000.0
        registry = self.registry
        registry.enter(mv)
        try:
            pred = await mv.infer(inputs, start + timeout_s)
        except BaseException as e:
            if isinstance(e, InferlaneError):
                self.observe(mv.name, mv.version, str(e.http_status), None, failed_after=time.monotonic() - start)
            if routed and self.router.listening and _version_failed(e) and not isinstance(e, asyncio.CancelledError):
                self.router.report(Outcome(mv.name, mv.version, False, time.monotonic() - start, None))
            raise
        finally:
            registry.leave(mv)
        total = time.monotonic() - start
        self.observe(mv.name, mv.version, "200", total, rows=_rows(inputs))
        if routed:
            if self.router.listening:
                self.router.report(Outcome(mv.name, mv.version, True, total, pred.outputs, inputs=inputs))
            shadow = self.router.shadow_for(mv.name)
            if shadow is not None:
                self._mirror(mv.name, shadow, inputs, pred.outputs)
        return OnlineResult(mv, pred, total)

    # -- shadow copies ----------------------------------------------------------------------------

    def _mirror(self, name: str, version: str, inputs: Mapping[str, np.ndarray],
                live: Mapping[str, np.ndarray]) -> None:
        if len(self._shadows) >= self.shadow_limit:
            self._shadow_dropped.labels(name, version, "shadow").inc()
            return
        try:
            smv = self.registry.get(name, version)
        except InferlaneError:  # unloading, or the route changed under it: nothing to compare
            return
        task = asyncio.get_running_loop().create_task(self._shadow(smv, inputs, live))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, mv: ModelVersion, inputs: Mapping[str, np.ndarray],
                      live: Mapping[str, np.ndarray]) -> None:
        """One shadow copy: its outcome is reported, and nothing it does reaches the live request."""
        if not mv.ready:  # started unloading since the copy was decided
            return
        start = time.monotonic()
        self.registry.enter(mv)
        try:
            try:
                pred = await mv.infer(inputs, start + mv.config.timeout_ms / 1000.0, priority=BACKGROUND)
            finally:
                self.registry.leave(mv)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self.observe(mv.name, mv.version, str(e.http_status) if isinstance(e, InferlaneError) else "500",
                          None, "shadow", failed_after=time.monotonic() - start)
            # The live version took these inputs: a shadow that refuses them is at fault too.
            if _version_failed(e) or (isinstance(e, InferlaneError) and 400 <= e.http_status < 500):
                self.router.report(Outcome(mv.name, mv.version, False, time.monotonic() - start, None,
                                           shadow=True, live_outputs=live))
            if not isinstance(e, InferlaneError):
                log.warning("shadow copy to %s version %s failed: %r", mv.name, mv.version, e)
            return
        total = time.monotonic() - start
        self.observe(mv.name, mv.version, "200", total, "shadow", rows=_rows(inputs))
        self.router.report(Outcome(mv.name, mv.version, True, total, pred.outputs, shadow=True, live_outputs=live))

    async def drain_shadows(self) -> None:
        """Wait for the shadow copies running now (tests, shutdown)."""
        if self._shadows:
            await asyncio.wait(set(self._shadows))
