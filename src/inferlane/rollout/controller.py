"""The canary controller: steps a new version up window by window, and rolls it back on a breach.

    controller = RolloutController(registry, open_rollout_store(None), metrics)
    await controller.resume_at_start()                 # at start: re-apply stored routes
    task = asyncio.create_task(controller.run())       # ticks every 0.25 s
    await controller.start(RolloutSpec("fraud", "3", steps=(5, 25, 50, 100), window_s=60))
    controller.status("fraud")                         # state, step, weight, the last checks
    await controller.promote("fraud")                  # or abort("fraud")

Every tick compares the canary with stable over the current window (rollout/checks.py) and rolls
back at once on a clear breach, so a bad version is gone within about a second of the breach being
measurable. At a window's end, with ``min_samples`` canary outcomes and every check within its
limit, the canary steps up; after the 100% step's window it is promoted and the old version is
unloaded ``drain_s`` later. In shadow mode the new version only gets copies of live requests: the
controller reports agreement, PSI and latency and never promotes by itself.

Every change is saved to the store, with its event, before anything else sees it, and the save is
a compare-and-set on the status's revision (store/rollout.py). :meth:`resume` applies what the store
holds, at start (a restart continues at the same step with a fresh window) and every second from
:meth:`run`, so the processes of ``serve --workers N`` (and hosts sharing a Redis store) route
alike. Any process may step or roll back: when two decide on the same window, the first save wins
and the other adopts what was saved, so no step, promotion or rollback happens twice.

The store calls of the loop and of the decisions run in a worker thread, not on the event loop: a
SQLite commit waits for its fsync (milliseconds to tens of them) and a Redis store for the network,
and the live requests that share the loop would wait too (the admin API's reads are the exception).
Within a process, one lock orders the decisions (a tick, an operator's action, adopting another
process's change), so a decision waiting for its save never interleaves with another.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from inferlane.core.clock import Clock, MonotonicClock
from inferlane.core.errors import Conflict, InferlaneError, InvalidInput, NotFound, Unavailable
from inferlane.core.metrics import Metrics
from inferlane.rollout.checks import compare_shadow, judge
from inferlane.rollout.registry import ModelRegistry
from inferlane.rollout.router import route_of
from inferlane.rollout.stats import Summary, WindowStats
from inferlane.rollout.versions import VersionOrders
from inferlane.store.rollout import RolloutEvent, RolloutSpec, RolloutState, RolloutStatus, RolloutStore

__all__ = ["RolloutController", "RolloutEvent", "RolloutSpec", "RolloutState", "RolloutStatus"]

log = logging.getLogger(__name__)
SHADOW_COMPARE_EVERY_S = 1.0
"""A shadow comparison only informs the operator: it is computed at most this often."""

TICK_S = 0.25
SYNC_S = 1.0
"""How often :meth:`RolloutController.run` re-reads the store (other processes' changes)."""
LANE = "online"
SAVE_TRIES = 3
"""Saves of one decision while other processes change only the live checks (see ``_save``)."""


def _same(a: RolloutStatus, b: RolloutStatus) -> bool:
    """The same routing state (the window's start and the live checks are each process's own)."""
    return (a.state, a.stable, a.canary, a.step_index, a.weight, a.spec) == \
        (b.state, b.stable, b.canary, b.step_index, b.weight, b.spec)


class RolloutController:
    def __init__(self, registry: ModelRegistry, store: RolloutStore, metrics: Metrics,
                 clock: Clock | None = None, *, wall: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.store = store
        self.clock = clock or MonotonicClock()
        self.wall = wall
        self.stats = WindowStats()
        self.orders = VersionOrders(registry, store, wall=wall)
        """Operator loads and unloads for every process (``models load|unload``), synced with the routes."""
        self._status: dict[str, RolloutStatus] = {}
        self._reference: dict[str, Summary] = {}
        self._shadow_compared: dict[str, float] = {}
        """When each shadow rollout's comparison was last computed (it only reports: once a second)."""
        """Stable's outcomes of the first window, for a window where it serves nothing (100%)."""
        self._starting: set[str] = set()
        self._deciding = asyncio.Lock()
        """Held by each decision from reading the state to applying what was saved."""
        self._unserved: set[str] = set()
        """Models with a stored rollout that this server does not serve (warned about once)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._weighted: dict[str, set[str]] = {}
        self._weight = metrics.gauge("inferlane_traffic_weight", "Share of unpinned requests routed to a version")
        self._step = metrics.gauge("inferlane_rollout_step",
                                   "Step of the running rollout to this version (1 = first; 0 = none running)")
        self._events = metrics.counter("inferlane_rollout_events_total", "Rollout events by kind", ("event",))
        registry.router.subscribe(self.stats.record)

    # -- reading --------------------------------------------------------------------------------------

    # The sync readers are for tests and tools off the event loop; the server's routes use the async
    # ones, which read the store (SQLite, or Redis over the network) in a worker thread.

    def status(self, model: str) -> RolloutStatus | None:
        return self._status.get(model) or self.store.load(model)

    async def read_status(self, model: str) -> RolloutStatus | None:
        return self._status.get(model) or await asyncio.to_thread(self.store.load, model)

    def statuses(self) -> list[RolloutStatus]:
        return self._with_running(self.store.load_all())

    async def read_statuses(self) -> list[RolloutStatus]:
        return self._with_running(await asyncio.to_thread(self.store.load_all))

    def _with_running(self, stored: list[RolloutStatus]) -> list[RolloutStatus]:
        """Every stored rollout, the ones this process runs as it knows them now, by model name."""
        known = {s.model: s for s in stored}
        known.update(self._status)
        return [known[m] for m in sorted(known)]

    def history(self, model: str, limit: int = 100) -> list[RolloutEvent]:
        return self.store.events(model, limit)

    async def read_history(self, model: str, limit: int = 100) -> list[RolloutEvent]:
        return await asyncio.to_thread(self.store.events, model, limit)

    # -- operator actions -----------------------------------------------------------------------------

    async def start(self, spec: RolloutSpec) -> RolloutStatus:
        """Load and warm ``spec.to_version``, then route its first step (or its shadow copies).
        Conflict while a rollout of the model runs; ModelNotFound / InvalidInput from the load."""
        m = spec.model
        self.registry.resolve(m)  # ModelNotFound for an unknown model
        if m in self._starting:
            raise Conflict(f"a rollout of model {m!r} is already starting")
        self._starting.add(m)
        try:
            stored = await self._startable(spec)
            await self.registry.load_version(m, spec.to_version)
            async with self._deciding:
                if await asyncio.to_thread(self.store.load, m) != stored:
                    stored = await self._startable(spec)  # changed while the version loaded
                stable = self.registry.router.route(m).stable
                weight = 0.0 if spec.shadow else spec.percents[0] / 100.0
                status = RolloutStatus(m, stable, spec.to_version, RolloutState.RUNNING, 0, weight,
                                       self.clock.now(), spec, {}, self.wall(),
                                       revision=(stored.revision if stored is not None else 0) + 1)
                event = RolloutEvent(self.wall(), m, "started",
                                     {"from": stable, "to": spec.to_version, "shadow_pct": spec.shadow_pct,
                                      "percent": 0.0 if spec.shadow else spec.percents[0]})
                if not await asyncio.to_thread(self.store.save, status, event):
                    raise Conflict(f"the rollout state of model {m!r} changed while this one started (another "
                                   "process); look at its status and try again")
                self._committed(status, "started")
                self._apply_route(status)
                self.stats.watch(m)
                self._reference.pop(m, None)
        finally:
            self._starting.discard(m)
        return status

    async def _startable(self, spec: RolloutSpec) -> RolloutStatus | None:
        """The stored status a new rollout replaces; Conflict while one runs, InvalidInput when
        ``spec.to_version`` is stable already."""
        m = spec.model
        stored = await asyncio.to_thread(self.store.load, m)
        current = stored or self._status.get(m)
        if current is not None and current.state is RolloutState.RUNNING:
            raise Conflict(f"a rollout of model {m!r} is already running; promote or abort it first")
        if spec.to_version == self.registry.router.route(m).stable:
            raise InvalidInput(f"to: version {spec.to_version} of model {m!r} is already the stable version")
        return stored

    async def _running(self, model: str) -> RolloutStatus:
        s = self._status.get(model) or await asyncio.to_thread(self.store.load, model)
        if s is None:
            raise NotFound(f"model {model[:256]!r} has no rollout")
        if s.state is not RolloutState.RUNNING:
            raise Conflict(f"the rollout of model {model!r} to version {s.spec.to_version} is {s.state.value}, "
                           "not running")
        return s

    async def promote(self, model: str) -> RolloutStatus:
        """Send every unpinned request to the new version now; the old one is unloaded after drain_s."""
        return await self._by_operator(model, lambda s: self._promote(s, {"by": "operator"}))

    async def abort(self, model: str, reason: str = "aborted by an operator") -> RolloutStatus:
        """Send every request back to stable and unload the new version."""
        return await self._by_operator(
            model, lambda s: self._back_to_stable(s, RolloutState.ABORTED, "aborted", {"reason": reason}))

    async def _by_operator(self, model: str,
                           act: Callable[[RolloutStatus], Awaitable[RolloutStatus | None]]) -> RolloutStatus:
        """Apply an operator's action to the running rollout; when another process changed it first
        (a step, say), to the state that process saved, if still running (Conflict otherwise)."""
        async with self._deciding:
            for _ in range(SAVE_TRIES):
                done = await act(await self._running(model))
                if done is not None:
                    return done
        raise Conflict(f"the rollout of model {model!r} kept changing (other processes); try again")

    # -- the loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every 0.25 s and re-read the store (routes, then version orders) every second, until
        cancelled."""
        next_sync = self.clock.now() + SYNC_S
        while True:
            try:
                await self.tick()
                if self.clock.now() >= next_sync:
                    next_sync = self.clock.now() + SYNC_S
                    await self.resume()
                    await self.orders.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store that cannot be read now: try again next tick
                log.exception("rollout controller tick failed")
            await asyncio.sleep(TICK_S)

    async def tick(self) -> None:
        """Check every running rollout once (what :meth:`run` does every 0.25 s)."""
        async with self._deciding:
            now = self.clock.now()
            for status in list(self._status.values()):
                if status.state is not RolloutState.RUNNING or status.canary is None:
                    continue
                if status.spec.shadow:
                    await self._tick_shadow(status, now)
                else:
                    await self._tick_canary(status, now)

    def _stable_side(self, s: RolloutStatus) -> Summary:
        current = self.stats.summary(s.model, s.stable)
        ref = self._reference.get(s.model)
        if ref is not None and current.samples < max(1, s.spec.min_samples // 5):
            return ref
        return current

    async def _tick_canary(self, s: RolloutStatus, now: float) -> None:
        assert s.canary is not None
        canary = self.stats.summary(s.model, s.canary)
        elapsed = now - s.window_started_at
        final = elapsed >= s.spec.window_s and canary.samples >= s.spec.min_samples
        stable = self._stable_side(s)
        verdict = judge(s.spec, canary, stable, final=final)
        if final and not verdict.measured and stable.samples:
            final = False  # stable is still short of samples to compare with: the window goes on
        checks = {**verdict.checks, "step": s.step_index, "window_s": s.spec.window_s,
                  "elapsed_s": round(elapsed, 3)}
        s = self._status[s.model] = replace(s, last_checks=checks)
        if verdict.breach is None and not final:
            return
        if verdict.breach is not None:
            await self._back_to_stable(s, RolloutState.ROLLED_BACK, "rolled_back",
                                       {**verdict.breach, "window_s": s.spec.window_s, "step": s.step_index,
                                        "percent": s.weight * 100.0, "elapsed_s": round(elapsed, 3)})
        elif s.step_index + 1 >= len(s.spec.percents):
            await self._promote(s, {"by": "controller", "checks": checks})
        else:
            await self._step_up(s, now, checks)

    async def _tick_shadow(self, s: RolloutStatus, now: float) -> None:
        assert s.canary is not None
        window_end = now - s.window_started_at >= s.spec.window_s
        if not window_end and now - self._shadow_compared.get(s.model, -math.inf) < SHADOW_COMPARE_EVERY_S:
            return
        self._shadow_compared[s.model] = now
        checks = compare_shadow(s.spec, self.stats.summary(s.model, s.canary, shadow=True),
                                self.stats.summary(s.model, s.stable))
        checks["elapsed_s"] = round(now - s.window_started_at, 3)
        s = self._status[s.model] = replace(s, last_checks=checks)
        if now - s.window_started_at >= s.spec.window_s:  # persist the comparison once per window
            await self._save(s, replace(s, window_started_at=now, updated_at=self.wall()), None, {})

    # -- state changes --------------------------------------------------------------------------------

    async def _save(self, s: RolloutStatus, new: RolloutStatus, kind: str | None,
                    detail: dict[str, Any]) -> RolloutStatus | None:
        """Save ``new``, decided on ``s``, with its event (none when ``kind`` is None): a compare-and-set
        on ``s``'s revision. When another process saved first and changed only what does not route
        (the live checks), the decision stands and is saved over that; when it changed the routing
        state, its state is adopted and the decision dropped (None): no step or event twice."""
        event = None if kind is None else RolloutEvent(self.wall(), s.model, kind, detail)
        for _ in range(SAVE_TRIES):
            saved = replace(new, revision=s.revision + 1)
            if await asyncio.to_thread(self.store.save, saved, event):
                self._status[s.model] = saved
                if kind is not None:
                    self._committed(saved, kind)
                return saved
            stored = await asyncio.to_thread(self.store.load, s.model)
            if stored is None:
                raise Unavailable(f"the rollout status of model {s.model!r} is gone from the store")
            if not _same(stored, s):
                log.info("model %s: another process changed the rollout first (%s, step %d); following it",
                         s.model, stored.state.value, stored.step_index)
                self._adopt(stored, previous=s)
                return None
            s = replace(s, revision=stored.revision)
        log.warning("model %s: the rollout store kept changing; %s not saved, tried again next tick",
                    s.model, kind or "the live checks")
        return None

    async def _step_up(self, s: RolloutStatus, now: float, checks: dict[str, Any]) -> RolloutStatus | None:
        index = s.step_index + 1
        percent = s.spec.percents[index]
        stable = self.stats.summary(s.model, s.stable)
        if s.model not in self._reference and stable.samples >= max(1, s.spec.min_samples // 5):
            # NOTE: the first window's stable, serving nearly all traffic, is the fair comparison for
            # the 100% step: latency depends on load, and a later window's stable serves less.
            self._reference[s.model] = stable
        new = await self._save(s, replace(s, step_index=index, weight=percent / 100.0, window_started_at=now,
                                    last_checks=checks, updated_at=self.wall()),
                         "step", {"step": index, "percent": percent, "checks": checks})
        if new is not None:
            self._apply_route(new)
            self.stats.reset(s.model)
        return new

    async def _promote(self, s: RolloutStatus, detail: dict[str, Any]) -> RolloutStatus | None:
        assert s.canary is not None
        old = s.stable
        new = await self._save(s, replace(s, stable=s.canary, canary=None, state=RolloutState.PROMOTED, weight=0.0,
                                    updated_at=self.wall()),
                         "promoted", {"from": old, "to": s.canary, **detail})
        if new is not None:
            self._apply_route(new)
            self._forget(s.model)
            self._unload_later(s.model, old, s.spec.drain_s)
        return new

    async def _back_to_stable(self, s: RolloutStatus, state: RolloutState, kind: str,
                              detail: dict[str, Any]) -> RolloutStatus | None:
        assert s.canary is not None
        new = await self._save(s, replace(s, canary=None, state=state, weight=0.0, updated_at=self.wall()),
                         kind, {"version": s.canary, **detail})
        if new is None:
            return None
        self._apply_route(new)
        self._forget(s.model)
        if kind == "rolled_back":
            log.warning("model %s: version %s rolled back (%s)", s.model, s.canary, detail)
        self._unload_later(s.model, s.canary, 0.0)
        return new

    def _forget(self, model: str) -> None:
        self.stats.unwatch(model)
        self._reference.pop(model, None)

    def _committed(self, s: RolloutStatus, kind: str) -> None:
        """After a state change and its event were saved: keep it, count it."""
        self._status[s.model] = s
        self._events.labels(s.model, s.spec.to_version, LANE, kind).inc()
        self._set_step(s)

    def _set_step(self, s: RolloutStatus) -> None:
        running = s.state is RolloutState.RUNNING
        self._step.labels(s.model, s.spec.to_version, LANE).set(s.step_index + 1 if running else 0)

    def _apply_route(self, s: RolloutStatus) -> None:
        route = route_of(s)
        self.registry.router.set_route(s.model, route)
        weights = {route.stable: 1.0 - route.canary_weight}
        if route.canary is not None:
            weights[route.canary] = route.canary_weight
        for version in self._weighted.get(s.model, set()) - weights.keys():
            self._weight.labels(s.model, version, LANE).set(0.0)
        for version, w in weights.items():
            self._weight.labels(s.model, version, LANE).set(w)
        self._weighted[s.model] = set(weights)

    def _unload_later(self, model: str, version: str, after_s: float) -> None:
        async def unload() -> None:
            if after_s > 0:
                await asyncio.sleep(after_s)
            if version in self.registry.router.route(model).versions() \
                    or version not in self.registry.versions(model):
                return  # routed again (a new rollout) or already gone
            try:
                await self.registry.unload_version(model, version)
            except InferlaneError as e:
                log.warning("model %s: version %s not unloaded: %s", model, version, e)

        task = asyncio.get_running_loop().create_task(unload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the unloads already scheduled (drains included)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel the scheduled unloads and orders (at shutdown the registry closes every version anyway)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.orders.close()

    # -- resuming -------------------------------------------------------------------------------------

    async def resume(self, *, at_start: bool = False) -> None:
        """Apply what the store holds: at start (a restart continues at the stored step with a fresh
        window, and a ``resumed`` event says so) and periodically (another process's changes).
        Versions a stored route names are loaded first; a model the repository no longer has is
        skipped with a warning. The store is read off the event loop; a stored status older than
        this process's own (by revision: read before a change made here meanwhile) is ignored."""
        for stored in await asyncio.to_thread(self.store.load_all):
            if not self._newer(stored):
                continue
            if stored.model not in self.registry.entries:
                if stored.model not in self._unserved:
                    self._unserved.add(stored.model)
                    log.warning("rollout state of model %s is stored but the model is not served; skipped",
                                stored.model)
                continue
            try:
                for version in route_of(stored).versions():
                    await self.registry.load_version(stored.model, version)
            except InferlaneError as e:
                log.error("model %s: the stored rollout cannot be applied: %s", stored.model, e)
                continue
            async with self._deciding:
                if not self._newer(stored):  # changed here while the versions loaded
                    continue
                mine = self._status.get(stored.model)
                self._adopt(stored, previous=mine)
            if at_start and mine is None and stored.state is RolloutState.RUNNING:
                await asyncio.to_thread(self.store.append_event, RolloutEvent(
                    self.wall(), stored.model, "resumed",
                    {"step": stored.step_index, "percent": stored.weight * 100.0, "pid": os.getpid()}))
                self._events.labels(stored.model, stored.spec.to_version, LANE, "resumed").inc()

    async def resume_at_start(self, *, first_wait_s: float = 0.2, max_wait_s: float = 5.0) -> None:
        """:meth:`resume`, tried again (the wait doubling up to ``max_wait_s``) while the store cannot
        be read: the server stays not ready meanwhile rather than serve versions its stored routes
        no longer name."""
        wait = first_wait_s
        while True:
            try:
                await self.resume(at_start=True)
                return
            except Unavailable as e:
                log.warning("the stored rollouts cannot be read yet (%s); not ready until they are applied, "
                            "trying again in %.1f s", e, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, max_wait_s)

    def _newer(self, stored: RolloutStatus) -> bool:
        """Whether ``stored`` routes differently from this process's state and is newer than it."""
        mine = self._status.get(stored.model)
        if mine is None:
            return True
        if mine.revision >= stored.revision:
            return False
        if _same(mine, stored):  # another process saved only its live checks
            self._status[stored.model] = replace(mine, revision=stored.revision)
            return False
        return True

    def _adopt(self, stored: RolloutStatus, previous: RolloutStatus | None) -> None:
        """Take ``stored`` as this process's state: its route, a fresh window, and the unloads it implies."""
        s = replace(stored, window_started_at=self.clock.now())
        self._apply_route(s)
        self._status[s.model] = s
        self._set_step(s)
        if s.state is RolloutState.RUNNING:
            if previous is None or (previous.state, previous.step_index) != (s.state, s.step_index):
                self.stats.watch(s.model)
            return
        self._forget(s.model)
        if previous is not None and previous.state is RolloutState.RUNNING:
            leaving = previous.stable if s.state is RolloutState.PROMOTED else previous.canary
            if leaving is not None:
                self._unload_later(s.model, leaving, s.spec.drain_s if s.state is RolloutState.PROMOTED else 0.0)
