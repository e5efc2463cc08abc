"""The advisor on the seeds' canonical cases, and its rules at their thresholds (pure logic: synthetic
profiles, no model)."""

from __future__ import annotations

import re
from dataclasses import replace

import orjson
import pytest

import inferlane.advise
from inferlane.advise import Pattern, Profile, Workload, advise
from inferlane.advise.advisor import decide, fits
from inferlane.core.errors import ConfigError
from tests.advise.synthetic import CPU_MLP, DOCUMENTS, RANKER

DAY = 86_400.0

CASES: list[tuple[str, Workload, Profile, Pattern]] = [
    # seed 002 (real-time: "fraud on a transaction"), seed 003 (a card transaction -> a fraud score, right
    # away), seed 004 ("fraud scoring at transaction time"): the inputs only exist when the card is swiped.
    ("fraud check on a card transaction",
     Workload(requests_per_day=5e6, peak_rps=300, p99_ms=100, freshness_s=0, inputs_at_request_time="yes",
              price_per_hour=1.20, spot_discount=0.7),
     CPU_MLP, Pattern.ONLINE),
    # seed 002 (batch: "churn scores", "~90% of use cases can be batch"), seed 004 ("scoring an entire
    # customer base for churn"): nobody waits, a day old is fine.
    ("nightly churn scores",
     Workload(requests_per_day=2e6, peak_rps=30, p99_ms=None, freshness_s=DAY, inputs_at_request_time="no",
              price_per_hour=1.20, spot_discount=0.7),
     CPU_MLP, Pattern.BATCH),
    # seed 002 (the hybrid: precompute in batch, a thin real-time layer; "precompute heavy signals offline and
    # do lightweight re-ranking online"), seed 003 (last night's recommendations adjusted live).
    ("recommendations refreshed hourly with live re-ranking",
     Workload(requests_per_day=2e7, peak_rps=800, p99_ms=50, freshness_s=3600, inputs_at_request_time="partly",
              price_per_hour=3.0, spot_discount=0.7, keys=1e6),
     RANKER, Pattern.HYBRID),
    # seed 002 (streaming: "real-time anomaly detection on telemetry"), seed 004 (streaming for "anomaly
    # detection, sensor data", predictions within seconds, nobody holding a request open).
    ("sensor telemetry anomaly detection",
     Workload(requests_per_day=8.64e8, peak_rps=20_000, p99_ms=None, freshness_s=30, inputs_at_request_time="yes",
              price_per_hour=1.20),
     CPU_MLP, Pattern.STREAM),
    # seed 002 (async: "seconds-minutes, queued", "a slow model, a document to process").
    ("document processing that takes minutes",
     Workload(requests_per_day=50_000, peak_rps=5, p99_ms=600_000, freshness_s=0, inputs_at_request_time="yes",
              price_per_hour=3.0),
     DOCUMENTS, Pattern.ASYNC),
    # seed 002 (real-time: "search ranking"), seeds 000/001 (a search query has 50-100 ms).
    ("search ranking",
     Workload(requests_per_day=1e8, peak_rps=3000, p99_ms=80, freshness_s=0, inputs_at_request_time="yes",
              price_per_hour=3.0),
     RANKER, Pattern.ONLINE),
]


@pytest.mark.parametrize(("name", "workload", "profile", "expected"), CASES, ids=[c[0] for c in CASES])
def test_canonical_cases_get_the_seeds_pattern(name: str, workload: Workload, profile: Profile,
                                               expected: Pattern) -> None:
    advice = advise(workload, profile)
    assert advice.pattern == expected, (name, advice.reasons)
    assert advice.fits[expected] is None, advice.fits  # the recommendation meets the needs it was chosen for
    assert {c.pattern for c in advice.costs} == set(Pattern)  # every pattern, side by side
    assert [c.cost_per_day for c in advice.costs] == sorted(c.cost_per_day for c in advice.costs)
    assert advice.reasons and advice.what_would_change and advice.migration


def test_the_issue_example_precomputes_and_says_real_time_costs_more() -> None:
    w = Workload(requests_per_day=5e6, peak_rps=300, p99_ms=100, freshness_s=3600, inputs_at_request_time="no",
                 price_per_hour=1.20, spot_discount=0.7)
    advice = advise(w, CPU_MLP, current=Pattern.ONLINE, model_folder="./models/fraud")
    assert advice.pattern == Pattern.HYBRID
    assert "answers needed in under 5 min -> online" in advice.what_would_change
    assert "inputs only at request time -> online" in advice.what_would_change
    assert "nobody waiting on answers -> batch" in advice.what_would_change
    assert any(line.startswith("cost first: batch also meets") for line in advice.what_would_change)
    steps = "\n".join(advice.migration)
    assert "inferlane batch schedule --model ./models/fraud" in steps and "--output store://fraud" in steps
    assert "hybrid: {max_age: 1h}" in steps and "inferlane serve models" in steps
    assert advice.migration[-1].endswith("scale it down to the live layer's 1 replica")


def test_thresholds_flip_the_answer_where_the_docs_say() -> None:
    base = Workload(requests_per_day=1e6, peak_rps=50, p99_ms=None, freshness_s=300, inputs_at_request_time="yes",
                    price_per_hour=1.0)
    assert decide(base, CPU_MLP)[0] == Pattern.BATCH  # exactly 5 min: a schedule can keep up
    assert decide(replace(base, freshness_s=299), CPU_MLP)[0] == Pattern.STREAM
    sync = replace(base, p99_ms=9_999)
    assert decide(sync, CPU_MLP)[0] == Pattern.ONLINE
    assert decide(replace(sync, p99_ms=10_000), CPU_MLP)[0] == Pattern.ASYNC  # 10 s or more: a job to poll
    # The model decides too: 2 x forward p99 + 10 % delay must fit the budget.
    tight = replace(sync, p99_ms=1.5)  # CPU_MLP: batch of one p99 0.75 ms -> 0.15 + 1.5 = 1.65 > 1.5
    assert decide(tight, CPU_MLP)[0] == Pattern.ASYNC
    assert decide(replace(tight, p99_ms=1.7), CPU_MLP)[0] == Pattern.ONLINE
    assert fits(tight, CPU_MLP)[Pattern.ONLINE] is not None


def test_a_slow_model_with_an_impatient_caller_is_told_the_truth() -> None:
    w = Workload(requests_per_day=10_000, peak_rps=1, p99_ms=2000, freshness_s=0, inputs_at_request_time="yes",
                 price_per_hour=3.0)
    advice = advise(w, DOCUMENTS)
    assert advice.pattern == Pattern.ASYNC
    assert "no synchronous pattern meets the budget" in advice.reasons[1]
    assert advice.fits[Pattern.ONLINE] == "one forward pass does not fit the p99 budget"


def test_what_would_change_names_the_model_speed_for_online() -> None:
    w = CASES[0][1]
    lines = advise(w, CPU_MLP).what_would_change
    assert "a model slower than 45.0 ms per forward pass (now 0.75 ms) -> async" in lines
    assert "nobody waiting on answers -> stream" in lines  # freshness 0: events scored as they come


def test_migration_from_each_pattern_ends_by_retiring_it() -> None:
    w = CASES[1][1]  # churn -> batch
    for current in Pattern:
        steps = advise(w, CPU_MLP, current=current, model_folder="./models/churn").migration
        assert steps[0].startswith("1. score on a schedule, on spot machines: inferlane batch schedule "
                                   "--model ./models/churn")
        assert "--cron '0 2 * * *'" in steps[0] and "--cost-per-hour 0.36" in steps[0]
        if current == Pattern.BATCH:
            assert steps[-1].startswith(f"{len(steps)}. you already run batch")
        else:
            assert f"run batch beside {current}" in " ".join(steps)


def test_advice_to_dict_is_json_with_every_pattern() -> None:
    advice = advise(CASES[2][1], RANKER, current=Pattern.ONLINE)
    doc = orjson.loads(orjson.dumps(advice.to_dict()))
    assert doc["pattern"] == "hybrid"
    assert {c["pattern"] for c in doc["costs"]} == {"batch", "hybrid", "async", "stream", "online"}
    assert doc["profile"]["batching"]["max_batch_size"] == 16  # 5 ms + 2 x 19.5 ms = 44 ms <= 50
    assert doc["workload"]["inputs_at_request_time"] == "partly"
    online = next(c for c in doc["costs"] if c["pattern"] == "online")
    assert online["meets_needs"] is True and online["replicas"] == 1  # 800 rps <= 16 / 15 ms = 1066 rows/s


@pytest.mark.parametrize(("change", "message"), [
    ({"requests_per_day": -1}, "--requests-per-day must be a positive number"),
    ({"peak_rps": 0}, "--peak-rps must be a positive number"),
    ({"p99_ms": -5}, "--p99-ms must be a positive number"),
    ({"price_per_hour": float("nan")}, "--price-per-hour must be a positive number"),
    ({"spot_discount": 1.0}, "--spot-discount must be at least 0 and below 1"),
    ({"inputs_at_request_time": "maybe"}, "--inputs-at-request-time must be one of yes, no, partly"),
    ({"freshness_s": -1}, "--freshness must be 0 or a positive duration"),
    ({"peak_rps": 10.0}, "--peak-rps 10 is below the average rate"),
])
def test_workload_checks_say_how_to_fix(change: dict[str, object], message: str) -> None:
    good = {"requests_per_day": 5e6, "peak_rps": 300.0, "p99_ms": 100.0, "freshness_s": 3600.0,
            "inputs_at_request_time": "no", "price_per_hour": 1.2}
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        Workload(**{**good, **change})  # type: ignore[arg-type]


def test_public_api_is_declared_once() -> None:
    assert inferlane.advise.__all__ == sorted(inferlane.advise.__all__)
    for name in inferlane.advise.__all__:
        assert hasattr(inferlane.advise, name), name
