"""Driving rollouts: ``start`` and ``abort`` through the admin API (what ``inferlane rollout start``
and ``abort`` send), the history through the CLI (``inferlane rollout history --json``), and quick
polls of the status. Calls made under load skip the CLI: its second of Python start-up would run on
the client's core and delay the load being measured.

    admin = Admin(server.url, prefix=["taskset", "-c", "0"])
    admin.start(to="2", steps=[10, 50, 100], window_s=2, min_samples=400)
    admin.wait_state({"promoted", "rolled_back"}, timeout_s=30)
    admin.history()                      # the events of the last rollout, oldest first
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from benchmarks.rollout.models import MODEL
from inferlane.testing import wait_until

TOKEN = "rollout-benchmark-admin-token-0123456789"
TOKEN_ENV = "INFERLANE_ADMIN_TOKEN"
POLL_S = 0.05


class AdminFailed(RuntimeError):
    """A rollout command failed, or a rollout did not reach the state waited for."""


@dataclass
class Admin:
    url: str
    prefix: list[str] = field(default_factory=list)
    """Runs the CLI under another command (``taskset -c 0``: on the client's core, not the server's)."""

    def rollout(self, action: str, *args: str) -> str:
        """``inferlane rollout ACTION m ARGS --url URL`` (token from the environment); its output."""
        cmd = [*self.prefix, sys.executable, "-m", "inferlane", "rollout", action, MODEL, *args, "--url", self.url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env={**os.environ, TOKEN_ENV: TOKEN})
        if done.returncode != 0:
            raise AdminFailed(f"`inferlane rollout {action} {MODEL} {' '.join(args)}` exited with "
                              f"{done.returncode}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def start(self, **spec: Any) -> dict[str, Any]:
        """``POST /v2/admin/rollouts/m`` with ``spec`` (what ``rollout start`` sends); the status."""
        return self._call("POST", f"/rollouts/{MODEL}", json=spec)

    def abort(self, reason: str) -> dict[str, Any]:
        """``POST /v2/admin/rollouts/m/abort`` (what ``rollout abort`` sends); the status."""
        return self._call("POST", f"/rollouts/{MODEL}/abort", json={"reason": reason})

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        r = httpx.request(method, f"{self.url}/v2/admin{path}", headers=_auth(), timeout=120, **kwargs)
        if r.status_code >= 300:
            raise AdminFailed(f"{method} /v2/admin{path} answered {r.status_code}: {r.text[:500]}")
        return dict(r.json())

    def status(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/v2/admin/rollouts/{MODEL}", headers=_auth(), timeout=10)
        return dict(r.json()) if r.status_code == 200 else {}

    def wait_state(self, states: set[str], timeout_s: float) -> dict[str, Any]:
        """Poll the rollout's status until its state is one of ``states``; returns the status."""
        deadline = time.monotonic() + timeout_s
        while (status := self.status()).get("state") not in states:
            if time.monotonic() > deadline:
                raise AdminFailed(f"the rollout did not reach {sorted(states)} within {timeout_s:g} s: {status}")
            time.sleep(POLL_S)
        return status

    def wait_unloaded(self, version: str, timeout_s: float = 30.0) -> None:
        """Until a pinned request to ``version`` is refused with 503 (unloaded)."""
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}]}
        url = f"{self.url}/v2/models/{MODEL}/versions/{version}/infer"
        wait_until(lambda: httpx.post(url, json=body, timeout=10).status_code == 503,
                   f"version {version} is unloaded", timeout_s)

    def history(self) -> list[dict[str, Any]]:
        """The events of the model's last rollout (from its ``started`` event), through ``rollout history --json``."""
        events: list[dict[str, Any]] = orjson.loads(self.rollout("history", "--json"))
        starts = [i for i, e in enumerate(events) if e["kind"] == "started"]
        return events[starts[-1]:] if starts else []

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples on /metrics whose labels include ``labels``."""
        total = 0.0
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
