"""Operator loads and unloads that reach every process serving the model: ``models load|unload``
with ``serve --workers N``, or hosts sharing a Redis rollout store.

    orders = VersionOrders(registry, store)
    await orders.load("fraud", "3")          # here and now, then stored as an order
    await orders.unload("fraud", "2", 30.0)  # the same: refused here (409) means refused everywhere
    await orders.sync()                      # every second (the controller's run loop): apply others' orders

The process that answers the admin call does the work first (its answer says how it went), then
stores a :class:`VersionOrder` (store/rollout.py): the latest order per (model, version) replaces the
one before. Every process applies each order once, in a task of its own (a load warms up, an unload
drains: neither holds up the controller's ticks). A process applies at its first sync the orders
stored before it started too, after it re-applied the stored routes: a restarted worker ends up
with the versions the others have. An unload refused because the process's route names the version
(or it is still loading) is tried again at every sync, and logged once; another failure (a folder
missing on this host, the memory budget) is logged and not tried again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from inferlane.core.errors import Conflict
from inferlane.core.model import ModelVersion
from inferlane.rollout.registry import ModelRegistry
from inferlane.store.rollout import RolloutStore, VersionOrder, new_order_id

log = logging.getLogger(__name__)


class VersionOrders:
    def __init__(self, registry: ModelRegistry, store: RolloutStore, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.store = store
        self.wall = wall
        self._applied: set[str] = set()
        """Ids of the orders this process gave or applied."""
        self._refused: set[str] = set()
        """Ids of orders refused for now (a Conflict), logged once."""
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def load(self, model: str, version: str) -> ModelVersion:
        """Load and warm the version here, then order every other process to."""
        mv = await self.registry.load_version(model, version)
        await self._give(VersionOrder(model, version, loaded=True, id=new_order_id(), at=self.wall()))
        return mv

    async def unload(self, model: str, version: str, drain_timeout_s: float = 30.0) -> None:
        """Unload the version here (its requests finish first), then order every other process to."""
        await self.registry.unload_version(model, version, drain_timeout_s=drain_timeout_s)
        await self._give(VersionOrder(model, version, loaded=False, id=new_order_id(), at=self.wall(),
                                      drain_timeout_s=drain_timeout_s))

    async def _give(self, order: VersionOrder) -> None:
        self._applied.add(order.id)
        await asyncio.to_thread(self.store.put_order, order)

    async def sync(self) -> None:
        """Start applying every stored order this process has not applied yet (the store is read off
        the event loop)."""
        for order in await asyncio.to_thread(self.store.orders):
            key = (order.model, order.version)
            if order.id in self._applied or key in self._tasks:
                continue
            if order.model not in self.registry.entries:
                self._applied.add(order.id)  # a model this server does not serve
                continue
            task = asyncio.get_running_loop().create_task(self._apply(order))
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)

    async def _apply(self, order: VersionOrder) -> None:
        m, v = order.model, order.version
        loaded = v in self.registry.versions(m)
        try:
            if order.loaded and not loaded:
                await self.registry.load_version(m, v)
                log.info("model %s version %s loaded, as ordered through another process", m, v)
            elif not order.loaded and loaded:
                await self.registry.unload_version(m, v, drain_timeout_s=order.drain_timeout_s)
                log.info("model %s version %s unloaded, as ordered through another process", m, v)
        except Conflict as e:  # its route names it here, or it is loading: tried again at the next sync
            if order.id not in self._refused:
                self._refused.add(order.id)
                log.warning("model %s version %s: the order to %s it waits: %s", m, v,
                            "load" if order.loaded else "unload", e)
            return
        except Exception as e:  # a folder missing on this host, the memory budget: not tried again
            log.error("model %s version %s: the order to %s it failed here: %s", m, v,
                      "load" if order.loaded else "unload", e)
        self._applied.add(order.id)
        self._refused.discard(order.id)

    async def close(self) -> None:
        """Cancel the orders being applied (at shutdown the registry closes every version anyway)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def settle(self) -> None:
        """Wait for the orders being applied."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
