"""Scenario 2, rollback: ``rollout start`` to the bad version 3 under load; the controller must roll
it back on its error rate, and the client must see only stable answers soon after.

Every time is on the machine's monotonic clock: the client stamps its answers with it, and the
``rolled_back`` event's wall-clock time is moved onto it with one offset read here.

- breach: the first failed answer from version 3 the client received (``inferlane-model-version: 3``);
- detection: breach → the ``rolled_back`` event's time (``rollout history``);
- all stable: breach → the last answer from version 3 the client received (answers already inside
  version 3 finish after the route changed);
- failed requests not caused by version 3: failed answers from another version, or without one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from benchmarks.rollout.load import open_loop
from benchmarks.rollout.models import BAD
from benchmarks.rollout.promote import SETTLE_S, min_samples
from benchmarks.rollout.rig import Rig


@dataclass(frozen=True)
class RollbackResult:
    outcome: str
    detection_s: float
    """Breach → the rolled_back event (NaN when version 3 never failed a request)."""
    all_stable_s: float
    """Breach → the last answer from version 3 seen by the client."""
    start_to_rollback_s: float
    """The started event → the rolled_back event."""
    requests: int
    bad_answers: int
    bad_failed: int
    other_failed: int
    """Failed requests not answered by version 3: the target is 0."""
    reason: dict[str, Any]
    """The rolled_back event's detail: which check, the values, the samples."""
    rate: float


def run_rollback(rig: Rig, steps: list[float], window_s: float, max_p99_ratio: float) -> RollbackResult:
    with open_loop(rig.server.port, rig.rate, rig.work / "rollback.json", rig.cores.client_prefix) as run:
        time.sleep(SETTLE_S)
        rig.admin.start(to=BAD, steps=steps, window_s=window_s, min_samples=min_samples(rig.rate, steps[0], window_s),
                        max_p99_ratio=max_p99_ratio)
        state = rig.admin.wait_state({"promoted", "rolled_back", "aborted"},
                                     timeout_s=len(steps) * (window_s + 5) + 30)["state"]
        if state == "rolled_back":
            rig.admin.wait_unloaded(BAD)
        time.sleep(SETTLE_S)
    wall_to_mono = time.monotonic() - time.time()
    events = rig.admin.history()
    answers = run.answers
    assert answers is not None
    from_bad = answers.version == BAD
    failed = answers.failed()
    end = events[-1]
    end_at = end["at"] + wall_to_mono
    bad_failures = answers.done[from_bad & failed]
    breach = float(bad_failures.min()) if bad_failures.size else float("nan")
    last_bad = float(answers.done[from_bad].max()) if from_bad.any() else float("nan")
    return RollbackResult(
        outcome=state, detection_s=end_at - breach, all_stable_s=last_bad - breach,
        start_to_rollback_s=end["at"] - events[0]["at"], requests=len(answers.status),
        bad_answers=int(from_bad.sum()), bad_failed=int((from_bad & failed).sum()),
        other_failed=int((~from_bad & failed).sum()), reason=dict(end.get("detail") or {}), rate=run.achieved_rate)

