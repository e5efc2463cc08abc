"""Rollouts end to end: the real ``inferlane serve`` (admin token set) under a real HTTP load loop,
driven by the real CLI (``inferlane rollout ...``, ``inferlane models ...``) or the admin API.

- a good version steps up and is promoted with zero failed requests, every answer naming a loaded version;
- a version failing on 20% of inputs is rolled back within one window plus one second, stable unharmed;
- a restart mid-rollout resumes the same step, and two worker processes send a key to one version;
- the CLI: its commands, one-line errors and exit codes (0 done, 2 usage or 4xx, 1 unreachable).

Windows are short (1–2 s, 30–50 samples) so that each test takes seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from inferlane.cli.main import main
from inferlane.rollout.router import sticky_point
from inferlane.testing import ServerProcess, free_port, serve, serve_or_fail, wait_until
from tests.rollout.test_admin import AUTH, TOKEN, write_versioned_model

pytestmark = pytest.mark.e2e

THREADS = 6


@dataclass(frozen=True, slots=True)
class Answer:
    started: float
    """time.monotonic() when the request was sent."""
    status: int
    """HTTP status; 0 when the connection failed."""
    version: str | None
    """Header inferlane-model-version."""


class Load:
    """Unpinned requests from THREADS threads in a loop until stopped; every answer is kept.

        with Load(server.url, "m") as load:
            wait_until(lambda: load.count() > 100, "some answers")
        assert all(a.status == 200 for a in load.answers)
    """

    def __init__(self, url: str, model: str, key: str | None = None) -> None:
        self.url = f"{url}/v2/models/{model}/infer"
        self.key = key
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(seed,), daemon=True) for seed in range(THREADS)]

    def _loop(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        headers = {"Content-Type": "application/json"}
        if self.key is not None:
            headers["inferlane-routing-key"] = self.key
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                row = rng.random(4, dtype=np.float32).tolist()
                body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": row}]})
                t = time.monotonic()
                try:
                    r = client.post(self.url, content=body, headers=headers)
                    self.answers.append(Answer(t, r.status_code, r.headers.get("inferlane-model-version")))
                except httpx.HTTPError:
                    self.answers.append(Answer(t, 0, None))

    def count(self) -> int:
        return len(self.answers)

    def __enter__(self) -> Load:
        self.began = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        self.rate = len(self.answers) / (time.monotonic() - self.began)


def admin(server: ServerProcess, method: str, path: str, **kwargs: Any) -> Any:
    r = httpx.request(method, f"{server.url}/v2/admin{path}", headers=AUTH, timeout=30, **kwargs)
    assert r.status_code < 300, r.text
    return r.json()


def rollout_state(server: ServerProcess, model: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v2/admin/rollouts/{model}", headers=AUTH, timeout=10)
    return dict(r.json()) if r.status_code == 200 else {}


def cli(*argv: str) -> int:
    return main(list(argv))


def _env(tmp: Path) -> dict[str, str]:
    return {"INFERLANE_ADMIN_TOKEN": TOKEN, "INFERLANE_JOBS_WORKERS": "0",
            "INFERLANE_JOBS_STORE": f"sqlite:///{tmp / 'jobs.db'}",
            "INFERLANE_ROLLOUT_STORE": f"sqlite:///{tmp / 'rollouts.db'}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``a`` (versions 1 and 2 alike), ``b`` (2 fails on 20% of inputs), ``c`` (for the CLI)."""
    tmp = tmp_path_factory.mktemp("rollout-e2e")
    repo = tmp / "models"
    write_versioned_model(repo, {"1": {}, "2": {}}, name="a")
    write_versioned_model(repo, {"1": {}, "2": {"fail_below": 0.2}}, name="b")
    write_versioned_model(repo, {"1": {}, "2": {}}, name="c")
    for name in ("a", "b", "c"):  # version 1 serves: the highest folder would be the default
        (repo / name / "model.yaml").write_text((repo / name / "model.yaml").read_text() + "default_version: '1'\n")
    yield from serve_or_fail(serve(repo, log_path=tmp / "server.log", env=_env(tmp)))


# --- under load --------------------------------------------------------------------------------------------

def test_a_good_version_steps_up_and_is_promoted_under_load_without_a_failed_request(
        server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with Load(server.url, "a") as load:
        wait_until(lambda: load.count() > 200, "the load loop is answered")
        assert cli("rollout", "start", "a", "--to", "2", "--steps", "20,50,100", "--window", "1.5s",
                   "--min-samples", "40", "--max-p99-ratio", "10", "--max-psi", "1", "--drain", "0.5s",
                   "--url", server.url, "--token", TOKEN) == 0
        assert capsys.readouterr().out.strip() == "a: running, stable 1, canary 2 at 20% (step 1/3)"
        wait_until(lambda: rollout_state(server, "a").get("state") == "promoted", "version 2 is promoted",
                   timeout_s=40)
        promoted_at = time.monotonic()
        # The old version is unloaded after the drain; requests keep flowing meanwhile.
        wait_until(lambda: httpx.post(f"{server.url}/v2/models/a/versions/1/infer",
                                      json=_one_row()).status_code == 503, "version 1 is unloaded", timeout_s=10)
        unloaded_at = time.monotonic()
        settled = load.count()
        wait_until(lambda: load.count() > settled + 200, "more answers after the unload")
    failed = [a for a in load.answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(load.answers)} requests failed: {failed[:5]}"
    assert {a.version for a in load.answers} == {"1", "2"}
    assert all(a.version == "2" for a in load.answers if a.started > unloaded_at)
    assert all(a.version == "2" for a in load.answers if a.started > promoted_at + 0.1)
    assert load.rate > 200, f"the load loop ran at only {load.rate:.0f} requests/s"

    events = admin(server, "GET", "/rollouts/a/history")["events"]
    assert [(e["kind"], e["detail"].get("percent")) for e in events] == \
        [("started", 20.0), ("step", 50.0), ("step", 100.0), ("promoted", None)]
    assert cli("rollout", "history", "a", "--url", server.url, "--token", TOKEN) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["started", "step", "step", "promoted"]


def _one_row() -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5, 0.5, 0.5, 0.5]}]}


def test_a_failing_version_is_rolled_back_within_a_window_and_a_second(server: ServerProcess) -> None:
    window_s = 2.0
    with Load(server.url, "b") as load:
        wait_until(lambda: load.count() > 200, "the load loop is answered")
        admin(server, "POST", "/rollouts/b", json={"to": "2", "steps": [20, 50, 100], "window_s": window_s,
                                                   "min_samples": 50, "max_p99_ratio": 10, "max_psi": 1})
        wait_until(lambda: rollout_state(server, "b").get("state") == "rolled_back", "version 2 is rolled back",
                   timeout_s=window_s + 10)
        back_at = time.monotonic()
        settled = load.count()
        wait_until(lambda: load.count() > settled + 200, "more answers after the rollback")
    events = admin(server, "GET", "/rollouts/b/history")["events"]
    assert [e["kind"] for e in events] == ["started", "rolled_back"]
    started, rolled_back = events
    assert rolled_back["at"] - started["at"] <= window_s + 1.0, events
    detail = rolled_back["detail"]
    assert detail["check"] == "error_rate" and detail["canary"] > detail["limit"] == 0.01, detail
    assert detail["window_s"] == window_s and detail["version"] == "2"

    stable = [a for a in load.answers if a.version == "1"]
    assert stable and all(a.status == 200 for a in stable)
    canary_failed = [a for a in load.answers if a.status != 200]
    assert canary_failed, "the bad version never failed a request: the test proves nothing"
    assert all(a.status == 500 for a in canary_failed)
    after = [a for a in load.answers if a.started > back_at + 0.1]
    assert after and all((a.status, a.version) == (200, "1") for a in after)
    assert admin(server, "GET", "/routes")["routes"]["b"] == {
        "stable": "1", "canary": None, "canary_weight": 0.0, "shadow": None, "shadow_fraction": 0.0}
    wait_until(lambda: httpx.post(f"{server.url}/v2/models/b/versions/2/infer", json=_one_row()).status_code == 503,
               "the bad version is unloaded", timeout_s=10)


# --- restart and worker processes ---------------------------------------------------------------------------

def test_a_restart_mid_rollout_resumes_the_step_and_two_workers_route_a_key_alike(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_versioned_model(repo, {"1": {}, "2": {}})
    (repo / "m" / "model.yaml").write_text((repo / "m" / "model.yaml").read_text() + "default_version: '1'\n")
    env = _env(tmp_path)
    with serve(repo, log_path=tmp_path / "first.log", env=env) as first:
        with Load(first.url, "m") as load:
            wait_until(lambda: load.count() > 100, "the load loop is answered")
            admin(first, "POST", "/rollouts/m", json={"to": "2", "steps": [20, 50, 100], "window_s": 1,
                                                      "min_samples": 100, "max_p99_ratio": 10, "max_psi": 1})
            wait_until(lambda: rollout_state(first, "m").get("step_index") == 1, "the rollout is at 50%",
                       timeout_s=20)
        # No load now: the 50% window cannot gather its 100 samples (the few requests below send it
        # about 60), so the rollout waits at step 2.
        assert rollout_state(first, "m")["weight"] == 0.5

    with serve(repo, log_path=tmp_path / "second.log", env=env, extra=["--workers", "2"]) as second:
        wait_until(lambda: admin(second, "GET", "/routes")["routes"]["m"]["canary_weight"] == 0.5,
                   "the restarted server routes half the traffic to version 2")
        status = rollout_state(second, "m")
        assert (status["state"], status["step_index"], status["stable"], status["canary"]) == ("running", 1, "1", "2")
        kinds = [e["kind"] for e in admin(second, "GET", "/rollouts/m/history")["events"]]
        assert kinds[:2] == ["started", "step"] and "resumed" in kinds[2:], kinds

        keys = [f"user-{i}" for i in range(16)]
        expected = {k: "2" if sticky_point("m", k) < 0.5 else "1" for k in keys}
        assert set(expected.values()) == {"1", "2"}

        with httpx.Client(timeout=10) as client:
            def answered(key: str) -> str | None:
                # A new connection each time: the two worker processes share the port and take turns.
                r = client.post(f"{second.url}/v2/models/m/infer", json=_one_row(),
                                headers={"inferlane-routing-key": key, "Connection": "close"})
                if r.status_code == 503 and "not ready" in r.text:
                    return None  # the other worker process is still loading: ask again
                assert r.status_code == 200, r.text
                return str(r.headers["inferlane-model-version"])

            def answer(key: str) -> str:
                """The version answering ``key``, once a worker that is ready answers it."""
                answers: list[str | None] = []

                def ready_answer() -> bool:
                    answers.append(answered(key))
                    return answers[-1] is not None

                wait_until(ready_answer, f"a ready worker answers {key}")
                return str(answers[-1])

            # A worker refuses unpinned requests until it applied the stored rollout; then it routes
            # every key as the rollout says, whichever worker answers.
            seen = {k: {answer(k) for _ in range(5)} for k in keys}
        assert seen == {k: {v} for k, v in expected.items()}


# --- the CLI -------------------------------------------------------------------------------------------------

def test_cli_rollout_and_models_commands(server: ServerProcess, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = ["--url", server.url]
    monkeypatch.setenv("INFERLANE_ADMIN_TOKEN", TOKEN)
    assert cli("models", "load", "c", "7", *url) == 2
    assert "HTTP 404" in capsys.readouterr().err

    assert cli("rollout", "start", "c", "--to", "2", "--canary", "5", "--window", "60s", *url) == 0
    assert capsys.readouterr().out.strip() == "c: running, stable 1, canary 2 at 5% (step 1/4)"
    assert cli("rollout", "start", "c", "--to", "2", *url) == 2
    err = capsys.readouterr().err
    assert err.startswith("HTTP 409: ") and err.count("\n") == 1, err
    assert cli("rollout", "status", "c", *url) == 0
    assert capsys.readouterr().out.startswith("c: running, stable 1, canary 2 at 5% (step 1/4)")
    assert cli("rollout", "status", "c", "--json", *url) == 0
    assert orjson.loads(capsys.readouterr().out)["spec"]["window_s"] == 60.0
    assert cli("rollout", "abort", "c", "--reason", "testing the CLI", *url) == 0
    assert capsys.readouterr().out.strip() == "c: aborted, stable 1, no canary (step 1/4)"
    assert cli("rollout", "promote", "c", *url) == 2
    assert "HTTP 409" in capsys.readouterr().err
    assert cli("rollout", "history", "c", "--json", *url) == 0
    events = orjson.loads(capsys.readouterr().out)
    assert [e["kind"] for e in events] == ["started", "aborted"]
    assert events[1]["detail"]["reason"] == "testing the CLI"

    # Version 2 was unloaded by the abort; load it back by hand, then unload it.
    wait_until(lambda: admin(server, "GET", "/routes")["routes"]["c"]["canary"] is None, "the route is stable")
    assert cli("models", "load", "c", "2", *url) == 0
    assert "c version 2 loaded" in capsys.readouterr().out
    assert cli("models", "unload", "c", "1", *url) == 2  # version 1 serves the route
    assert "HTTP 409" in capsys.readouterr().err
    assert cli("models", "unload", "c", "2", "--drain-timeout", "5s", *url) == 0
    assert capsys.readouterr().out.strip() == "c version 2 unloaded; loaded versions: 1"

    assert cli("rollout", "status", *url, "--token", TOKEN + "-wrong") == 2
    assert capsys.readouterr().err.startswith("HTTP 403: ")
    monkeypatch.delenv("INFERLANE_ADMIN_TOKEN")
    assert cli("rollout", "status", *url) == 2
    assert capsys.readouterr().err.strip() == "the admin API needs its token: pass --token or set INFERLANE_ADMIN_TOKEN"
    down = f"http://127.0.0.1:{free_port()}"
    assert cli("rollout", "status", "--url", down, "--token", TOKEN) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cannot reach the admin API at {down}: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [
    ["rollout", "start", "c", "--to", "2", "--steps", "5,x"],
    ["rollout", "start", "c", "--to", "2", "--window", "soon"],
    ["rollout", "start", "c"],
    ["rollout", "jump", "c"],
    ["models", "load", "c"],
])
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(*argv)
    assert exit_info.value.code == 2
    assert "usage: inferlane" in capsys.readouterr().err


def test_cli_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, wanted in ((["rollout", "--help"], "Exit codes: 0 done"),
                         (["rollout", "start", "--help"], "--max-p99-ratio"),
                         (["models", "load", "--help"], "no traffic"),
                         (["serve", "--help"], "--watch")):
        with pytest.raises(SystemExit) as exit_info:
            cli(*argv)
        assert exit_info.value.code == 0
        assert wanted in " ".join(capsys.readouterr().out.split()), argv
