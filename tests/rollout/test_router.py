"""The router's rules, as pure logic: sticky keys, weights, validation, listeners.

Serving through the router (the registry, the online lane, HTTP) is in test_hot_load.py.
"""

from __future__ import annotations

import math
import random
import uuid

import pytest

from inferlane.core.errors import InvalidInput, ModelNotFound
from inferlane.rollout.router import Outcome, Route, Router, sticky_point


def router(route: Route, rng: random.Random | None = None) -> Router:
    r = Router(rng=rng)
    r.add_model("fraud", route.stable)
    r.set_route("fraud", route)
    return r


def test_a_stable_only_route_sends_everything_to_stable() -> None:
    r = router(Route("2"))
    assert {r.choose("fraud", key) for key in (None, "a", "b", "c")} == {"2"}
    assert r.route("fraud") == Route("2") and r.routes() == {"fraud": Route("2")}


def test_the_same_key_lands_on_the_same_version_in_every_router() -> None:
    route = Route("1", canary="2", canary_weight=0.3)
    first, second = router(route), router(route)  # e.g. two server processes
    keys = [f"user-{i}" for i in range(500)]
    chosen = [first.choose("fraud", k) for k in keys]
    assert chosen == [first.choose("fraud", k) for k in keys]  # again, same router
    assert chosen == [second.choose("fraud", k) for k in keys]  # another router
    assert set(chosen) == {"1", "2"}


def test_the_canary_share_of_random_keys_is_its_weight() -> None:
    keys = [uuid.UUID(int=random.Random(7).getrandbits(128) + i).hex for i in range(10_000)]
    for weight in (0.05, 0.25, 0.5):
        r = router(Route("1", canary="2", canary_weight=weight))
        share = sum(r.choose("fraud", k) == "2" for k in keys) / len(keys)
        # binomial sd at 10,000 keys is at most 0.005: 0.02 is four of them
        assert abs(share - weight) < 0.02, (weight, share)


def test_requests_without_a_key_are_spread_at_the_weight() -> None:
    r = router(Route("1", canary="2", canary_weight=0.25), rng=random.Random(3))
    share = sum(r.choose("fraud", None) == "2" for _ in range(10_000)) / 10_000
    assert abs(share - 0.25) < 0.02


def test_a_key_on_the_canary_stays_there_as_the_weight_grows() -> None:
    keys = [f"k{i}" for i in range(2000)]
    at_5 = {k for k in keys if router(Route("1", canary="2", canary_weight=0.05)).choose("fraud", k) == "2"}
    at_25 = {k for k in keys if router(Route("1", canary="2", canary_weight=0.25)).choose("fraud", k) == "2"}
    assert at_5 and at_5 < at_25


def test_sticky_points_are_in_the_unit_interval_and_depend_on_the_model() -> None:
    points = [sticky_point("fraud", f"k{i}") for i in range(1000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert sticky_point("fraud", "k1") == sticky_point("fraud", "k1") != sticky_point("churn", "k1")


def test_weight_zero_and_one() -> None:
    keys = [f"k{i}" for i in range(200)]
    assert {router(Route("1", canary="2", canary_weight=0.0)).choose("fraud", k) for k in keys} == {"1"}
    assert {router(Route("1", canary="2", canary_weight=1.0)).choose("fraud", k) for k in keys} == {"2"}


def test_shadow_draws_follow_the_fraction() -> None:
    r = router(Route("1", shadow="3", shadow_fraction=0.1), rng=random.Random(5))
    mirrored = [r.shadow_for("fraud") for _ in range(10_000)]
    assert set(mirrored) == {None, "3"}
    assert abs(mirrored.count("3") / 10_000 - 0.1) < 0.015
    assert router(Route("1")).shadow_for("fraud") is None


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"canary": "2", "canary_weight": 1.5}, "canary_weight must be a number from 0 to 1"),
    ({"canary": "2", "canary_weight": -0.1}, "canary_weight must be a number from 0 to 1"),
    ({"canary": "2", "canary_weight": math.nan}, "canary_weight must be a number from 0 to 1"),
    ({"canary": "2", "canary_weight": True}, "canary_weight must be a number from 0 to 1"),
    ({"shadow": "3", "shadow_fraction": 2}, "shadow_fraction must be a number from 0 to 1"),
    ({"canary_weight": 0.1}, "no canary version is named"),
    ({"shadow_fraction": 0.1}, "no shadow version is named"),
    ({"canary": "1", "canary_weight": 0.1}, "is the stable version"),
    ({"shadow": "1", "shadow_fraction": 0.1}, "already serves live traffic"),
])
def test_a_wrong_route_is_refused_naming_the_field(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        Route("1", **kwargs)  # type: ignore[arg-type]


def test_set_route_asks_whether_every_named_version_serves() -> None:
    asked: list[tuple[str, str]] = []

    def check(model: str, version: str) -> None:
        asked.append((model, version))
        if version == "9":
            raise InvalidInput(f"model {model!r} version '9' is not loaded and ready")

    r = Router(check)
    r.add_model("fraud", "1")
    r.set_route("fraud", Route("1", canary="2", canary_weight=0.1, shadow="3", shadow_fraction=0.5))
    assert asked == [("fraud", "1"), ("fraud", "2"), ("fraud", "3")]
    with pytest.raises(InvalidInput, match="not loaded and ready"):
        r.set_route("fraud", Route("1", canary="9", canary_weight=0.1))
    assert r.route("fraud").canary == "2"  # unchanged


def test_an_unknown_model_is_model_not_found() -> None:
    r = router(Route("1"))
    for call in (lambda: r.choose("nope", None), lambda: r.route("nope"),
                 lambda: r.set_route("nope", Route("1"))):
        with pytest.raises(ModelNotFound, match="nope"):
            call()


def test_report_reaches_every_listener_even_past_a_failing_one() -> None:
    r = router(Route("1"))
    seen: list[Outcome] = []

    def broken(o: Outcome) -> None:
        raise RuntimeError("listener bug")

    assert not r.listening
    r.subscribe(broken)
    r.subscribe(seen.append)
    assert r.listening
    outcome = Outcome("fraud", "1", True, 0.002, None)
    r.report(outcome)
    assert seen == [outcome]
