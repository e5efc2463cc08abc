"""A rollout started through the admin API shows on the public dashboard (state, step, weights), and
nothing admin-only does (the token, the rollout's checks and thresholds)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from inferlane.testing.waiting import wait_until
from tests.conftest import Server
from tests.dashboard.conftest import ADMIN_TOKEN, ROWS

pytestmark = pytest.mark.e2e

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _rollout(doc: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in doc["rollouts"] if r["model"] == "canary"), None)


def test_a_running_rollout_shows_its_state_step_and_weights(dash_server: Server) -> None:
    url = dash_server.url
    with httpx.Client(timeout=10) as client:
        started = client.post(f"{url}/v2/admin/rollouts/canary", headers=AUTH,
                              json={"to": "1", "canary": 25, "window_s": 600, "min_samples": 1_000_000})
        assert started.status_code == 201, started.text
        try:
            for _ in range(40):  # traffic split between the two versions
                assert client.post(f"{url}/v2/models/canary/infer", json=ROWS).status_code == 200
            raw = client.get(f"{url}/dashboard/data")
            doc = raw.json()
            row = _rollout(doc)
            assert row is not None
            assert (row["state"], row["stable"], row["canary"], row["step"], row["weight"]) == (
                "running", "2", "1", 1, pytest.approx(0.25))
            assert set(row) == {"model", "stable", "canary", "to_version", "state", "step", "steps", "weight",
                                "updated_at"}  # no checks, no thresholds
            weights = {v["version"]: v["traffic_weight"] for v in doc["versions"]
                       if v["model"] == "canary" and v["lane"] == "online"}
            assert weights == {"1": pytest.approx(0.25), "2": pytest.approx(0.75)}
            answered = {v["version"]: v["requests"].get("200", 0) for v in doc["versions"] if v["model"] == "canary"}
            assert sum(answered.values()) == 40
            assert ADMIN_TOKEN not in raw.text
            assert ADMIN_TOKEN not in client.get(f"{url}/dashboard").text
        finally:
            aborted = client.post(f"{url}/v2/admin/rollouts/canary/abort", headers=AUTH, json={"reason": "test"})
            assert aborted.status_code == 200, aborted.text
        wait_until(lambda: (_rollout(client.get(f"{url}/dashboard/data").json()) or {}).get("state") == "aborted",
                   "the dashboard shows the rollout aborted", timeout_s=10)
