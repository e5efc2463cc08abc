"""Which loaded version answers a request: weights, a sticky key, and shadow mirroring.

    router = registry.router
    router.set_route("fraud", Route(stable="2", canary="3", canary_weight=0.05))
    router.choose("fraud", "user-17")     # "3" for about 5% of keys, always the same for one key
    router.subscribe(controller.observe)  # every finished unpinned request, as an Outcome

A route names at most three versions of one model: ``stable`` serves unpinned traffic,
``canary`` takes ``canary_weight`` of it, and ``shadow`` gets a copy of ``shadow_fraction`` of
the live requests (its answers are compared, never returned). A request pinned to a version
(``/versions/{v}/infer``) never asks the router.

A key is sticky: its SHA-256 maps it to a point in [0, 1), and the key goes to the canary when
that point is below ``canary_weight``. The same key lands on the same side in every process and
host, and a key that reached the canary at 5% still reaches it at 25%. Requests without a key are
spread at random.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from inferlane.core.errors import InvalidInput, ModelNotFound
from inferlane.store.rollout import RolloutState, RolloutStatus

log = logging.getLogger(__name__)

_SCALE = float(1 << 64)


def _share(value: float, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"{field} must be a number from 0 to 1, not {value!r}")


@dataclass(frozen=True, slots=True)
class Route:
    """Where one model's unpinned traffic goes; validated when built (InvalidInput names the field)."""

    stable: str
    """The version serving unpinned traffic."""
    canary: str | None = None
    """A version taking ``canary_weight`` of the unpinned traffic."""
    canary_weight: float = 0.0
    """0..1: the share of unpinned requests sent to ``canary``."""
    shadow: str | None = None
    """A version that gets a copy of live requests; its answers are discarded."""
    shadow_fraction: float = 0.0
    """0..1: the share of live requests mirrored to ``shadow``."""

    def __post_init__(self) -> None:
        if not isinstance(self.stable, str) or not self.stable:
            raise InvalidInput("route: stable must name a version")
        _share(self.canary_weight, "route: canary_weight")
        _share(self.shadow_fraction, "route: shadow_fraction")
        if self.canary is None and self.canary_weight:
            raise InvalidInput("route: canary_weight is above 0 but no canary version is named")
        if self.shadow is None and self.shadow_fraction:
            raise InvalidInput("route: shadow_fraction is above 0 but no shadow version is named")
        if self.canary == self.stable:
            raise InvalidInput(f"route: canary {self.canary!r} is the stable version")
        if self.shadow is not None and self.shadow in (self.stable, self.canary):
            raise InvalidInput(f"route: shadow {self.shadow!r} already serves live traffic")

    def versions(self) -> tuple[str, ...]:
        """Every version the route names."""
        return tuple(v for v in (self.stable, self.canary, self.shadow) if v is not None)

    def side(self, point: float) -> str:
        """The version for a request at ``point`` in [0, 1) (:func:`sticky_point`, or a random draw):
        the canary below ``canary_weight``, else stable. The one rule every lane routes by."""
        return self.canary if self.canary is not None and point < self.canary_weight else self.stable


def route_of(status: RolloutStatus) -> Route:
    """The route a stored rollout status means: stable alone once finished, else stable with the
    canary at its weight (or, in shadow mode, mirrored to it)."""
    if status.state is not RolloutState.RUNNING or status.canary is None:
        return Route(stable=status.stable)
    if status.spec.shadow:
        return Route(stable=status.stable, shadow=status.canary, shadow_fraction=status.spec.shadow_pct / 100.0)
    return Route(stable=status.stable, canary=status.canary, canary_weight=status.weight)


class Outcome(NamedTuple):
    """One finished unpinned online request (or its shadow copy), reported to the listeners.

    A named tuple, not a frozen dataclass: one is built per request on the serving path, and a
    frozen dataclass's ``__init__`` costs several times as much."""

    model: str
    version: str
    """The version that answered (or was mirrored to, when ``shadow``)."""
    ok: bool
    """False when the version failed the request (a model error, a passed deadline); input errors
    and a full queue are not reported at all."""
    latency_s: float
    """End-to-end time in the lane."""
    outputs: Mapping[str, np.ndarray] | None
    """The version's outputs (None when not ok)."""
    shadow: bool = False
    live_outputs: Mapping[str, np.ndarray] | None = None
    """For a shadow outcome: what the live version answered."""
    inputs: Mapping[str, np.ndarray] | None = None
    """The request's validated inputs (the same arrays the model got, not copies), for input drift."""


def sticky_point(model: str, key: str) -> float:
    """Where ``key`` falls in [0, 1) for ``model``: the same in every process and on every host."""
    digest = hashlib.sha256(f"{model}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


Listener = Callable[[Outcome], None]
VersionCheck = Callable[[str, str], None]
"""Raises InvalidInput unless (model, version) is loaded and ready."""


class Router:
    """Routes of every model; see the module docstring."""

    def __init__(self, check: VersionCheck | None = None, *, rng: random.Random | None = None) -> None:
        self._routes: dict[str, Route] = {}
        self._listeners: list[Listener] = []
        self._check = check
        self._random = (rng or random.Random()).random

    def add_model(self, model: str, stable: str) -> None:
        """The registry's starting route for a model (its default version), kept if one is set."""
        self._routes.setdefault(model, Route(stable=stable))

    def route(self, model: str) -> Route:
        r = self._routes.get(model)
        if r is None:
            raise ModelNotFound(f"unknown model {model[:256]!r}")
        return r

    def routes(self) -> dict[str, Route]:
        return dict(self._routes)

    def set_route(self, model: str, route: Route) -> None:
        """Send ``model``'s traffic along ``route``; InvalidInput names a version that is unknown or
        not loaded and ready (the route then stays as it was)."""
        if model not in self._routes:
            raise ModelNotFound(f"unknown model {model[:256]!r}")
        if self._check is not None:
            for version in route.versions():
                self._check(model, version)
        if self._routes[model] != route:
            log.info("model %s: route %s", model, route)
        self._routes[model] = route

    def choose(self, model: str, key: str | None) -> str:
        """The version an unpinned request goes to: stable or canary."""
        r = self._routes.get(model)
        if r is None:
            raise ModelNotFound(f"unknown model {model[:256]!r}")
        if r.canary is None:  # the common case: no hashing, no draw
            return r.stable
        return r.side(self._random() if key is None else sticky_point(model, key))

    def shadow_for(self, model: str) -> str | None:
        """The shadow version this live request should be mirrored to, if any (a draw per request)."""
        r = self._routes.get(model)
        if r is None or r.shadow is None or self._random() >= r.shadow_fraction:
            return None
        return r.shadow

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    def subscribe(self, listener: Listener) -> None:
        """``listener`` gets every Outcome, on the event loop: it must be cheap and must not raise."""
        self._listeners.append(listener)

    def report(self, outcome: Outcome) -> None:
        for listener in self._listeners:
            try:
                listener(outcome)
            except Exception:  # a listener's bug never fails the request that reported
                log.exception("a rollout listener failed on an outcome of %s version %s",
                              outcome.model, outcome.version)
