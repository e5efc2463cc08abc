"""Faults under the jobs lane: its job store goes away or fills up while clients submit.

Real services throughout: an ``inferlane serve`` subprocess, a redis-server with an append-only
file that is killed and started again on the same port, and a small tmpfs holding the SQLite job
store that is filled to the last byte.

- Redis restarted under load: every submit is answered 202 (accepted: it finishes) or 503
  (refused: the client retries with the same Idempotency-Key), never a 500 or a hang; every
  accepted job succeeds once Redis is back, one job per key; the server is ready again by itself.
- SQLite disk full: a submit that cannot be stored is a 503 saying why and leaves no row; jobs
  accepted before are intact and readable; a job running as the disk fills cannot store its outcome,
  the worker stays up and readiness says why; once space is freed, submits are accepted again and
  every job finishes, that one after one more attempt.

Either way the server log says each failure in one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import re
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from inferlane.store.jobs import JobStatus, open_job_store
from inferlane.testing import RestartableRedis, exited, log_tail, serve, wait_until
from tests.conftest import Server, tmpfs

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}
FINAL = {"succeeded", "failed", "cancelled", "expired"}

DOUBLE_MODEL = textwrap.dedent('''
    class Model:
        def load(self, version_dir):
            pass

        def predict(self, batch):
            return {"y": batch["x"] * 2.0}
''')
HOLD_S = 1.5
HOLD_MODEL = textwrap.dedent(f'''
    import time

    class Model:
        """y = 2x after {HOLD_S} s: long enough to fill the disk under a running job."""

        def load(self, version_dir):
            pass

        def predict(self, batch):
            time.sleep({HOLD_S})
            return {{"y": batch["x"] * 2.0}}
''')


@pytest.fixture(scope="module")
def fault_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """double: y = 2x on rows of any width, batched up to 64 rows; hold: the same after HOLD_S."""
    repo = tmp_path_factory.mktemp("fault-models")
    for name, code, warmup in (("double", DOUBLE_MODEL, [1]), ("hold", HOLD_MODEL, [])):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(code)
        (repo / name / "model.yaml").write_text(yaml.safe_dump({
            "runtime": "python",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
            "batching": {"max_batch_size": 64, "max_queue_size": 256, "max_queue_delay_ms": 1},
            "warmup": {"batch_sizes": warmup},
        }))
    return repo


def body(first: float, width: int = 4) -> dict[str, Any]:
    """One row of ``width`` values from ``first`` on (whole numbers: exact in FP32)."""
    data = [first + i for i in range(width)]
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, width], "data": data}]}


def ready(client: httpx.Client) -> tuple[int, dict[str, Any]]:
    r = client.get("/v2/health/ready")
    doc: dict[str, Any] = r.json()
    return r.status_code, doc


def worker_gauge(client: httpx.Client) -> float:
    (value,) = re.findall(r'^inferlane_jobs_worker_healthy\{[^}]*\} (\S+)$', client.get("/metrics").text, re.M)
    return float(value)


def check_result(job: dict[str, Any], sent: dict[str, Any]) -> None:
    assert job["status"] == "succeeded", job
    (y,) = job["result"]["outputs"]
    assert y["data"] == [2.0 * v for v in sent["inputs"][0]["data"]], job["id"]


# --- Redis restarted under load ------------------------------------------------------------------

@dataclass
class Submitter:
    """Submits job after job from a thread, each with its own Idempotency-Key; a 503 is retried
    with the same key (what a client is told to do), anything else but a 202 is a finding."""

    url: str
    name: str
    accepted: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """Idempotency key -> (job id, the body sent)."""
    refused: list[str] = field(default_factory=list)
    """The message of every 503."""
    wrong: list[str] = field(default_factory=list)
    """Any other answer, or no answer (a hang ends in the client's timeout)."""
    replayed: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"submitter-{self.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        assert self.thread is not None
        self.thread.join(60)
        assert not self.thread.is_alive(), "the submitter hung"

    def _run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=15) as client:
            while not self.stopping.is_set():
                key = f"{self.name}-{n}"
                doc = body(float(n))
                while not self.stopping.is_set():
                    try:
                        r = client.post("/v2/models/double/jobs", content=orjson.dumps(doc),
                                        headers={**JSON, "Idempotency-Key": key})
                    except httpx.HTTPError as e:
                        self.wrong.append(f"{key}: {type(e).__name__}: {e}")
                        return
                    if r.status_code == 202:
                        self.accepted[key] = (r.json()["id"], doc)
                        self.replayed += r.headers.get("Idempotent-Replayed") == "true"
                        break
                    if r.status_code == 503:
                        self.refused.append(r.json().get("error", ""))
                        self.stopping.wait(0.05)  # the client's backoff before it retries the same key
                        continue
                    self.wrong.append(f"{key}: HTTP {r.status_code}: {r.text[:300]}")
                    return
                n += 1


def test_a_redis_restart_under_jobs_load_loses_nothing_and_the_server_recovers(
        fault_repo: Path, restartable_redis: RestartableRedis, tmp_path: Path) -> None:
    env = {"INFERLANE_JOBS_STORE": restartable_redis.url, "INFERLANE_JOBS_LEASE_S": "4",
           "INFERLANE_JOBS_RETRY_BACKOFF_S": "0.1", "INFERLANE_JOBS_MAX_ATTEMPTS": "5"}
    serving = contextlib.ExitStack()  # stops the server (SIGTERM, drained) when closed
    server: Server = serving.enter_context(serve(fault_repo, log_path=tmp_path / "server.log", env=env))
    submitters = [Submitter(server.url, name) for name in ("a", "b")]
    alive = [exited(server.proc, server.log)]

    def accepted() -> int:
        return sum(len(s.accepted) for s in submitters)

    def refused() -> int:
        return sum(len(s.refused) for s in submitters)

    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            for s in submitters:
                s.start()
            wait_until(lambda: accepted() >= 40, "jobs are accepted", 30, abort_if=alive)
            restartable_redis.kill()
            wait_until(lambda: refused() >= 5, "submits are refused while Redis is down", 30, abort_if=alive)
            wait_until(lambda: ready(client)[0] == 503, "the server says it is not ready", 30, abort_if=alive)
            code, doc = ready(client)
            assert code == 503 and "job store" in doc.get("error", ""), doc
            assert worker_gauge(client) == 0.0
            during = accepted()
            restartable_redis.start()
            wait_until(lambda: accepted() >= during + 40, "jobs are accepted again", 60, abort_if=alive)
            for s in submitters:
                s.stop()
            wait_until(lambda: ready(client)[0] == 200, "the server is ready again", 30, abort_if=alive)
            assert worker_gauge(client) == 1.0

            findings = [w for s in submitters for w in s.wrong]
            assert not findings, (findings, log_tail(server.log))
            messages = {m for s in submitters for m in s.refused}
            assert all("job store" in m for m in messages), messages  # a 503 says why

            jobs = {key: job for s in submitters for key, job in s.accepted.items()}
            remaining = dict(jobs)

            def all_final() -> bool:
                for key, (job_id, _) in list(remaining.items()):
                    if client.get(f"/v2/jobs/{job_id}").json()["status"] in FINAL:
                        del remaining[key]
                return not remaining

            wait_until(all_final, f"every accepted job ({len(jobs)}) is final", 60, abort_if=alive)
            for job_id, sent in jobs.values():
                check_result(client.get(f"/v2/jobs/{job_id}").json(), sent)
    finally:
        for s in submitters:
            s.stopping.set()
        serving.close()
    store = open_job_store(restartable_redis.url)
    try:
        stored = store.list(limit=1_000_000)
    finally:
        store.close()
    # Exactly once: one job per key, and it is the one the 202 named (a refused submit whose job was
    # stored after all is found again by its key, never stored twice).
    by_key: dict[str | None, list[str]] = {}
    for record in stored:
        by_key.setdefault(record.idempotency_key, []).append(record.id)
    assert {key: ids for key, ids in by_key.items() if len(ids) != 1} == {}
    assert set(by_key) == set(jobs), set(by_key) ^ set(jobs)
    assert {key: ids[0] for key, ids in by_key.items()} == {key: job_id for key, (job_id, _) in jobs.items()}
    assert all(record.status is JobStatus.SUCCEEDED for record in stored)
    assert "Traceback" not in server.log.read_text(), log_tail(server.log)  # an outage is a line, not a crash


# --- the SQLite job store's disk fills up --------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "4m") as mounted:
        yield mounted


def fill(path: Path) -> int:
    """Write ``path`` until the disk is full, to the last page; the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12):
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return written


def test_a_full_disk_refuses_submits_with_503_keeps_jobs_and_recovers(fault_repo: Path, small_disk: Path,
                                                                      tmp_path: Path) -> None:
    env = {"INFERLANE_JOBS_STORE": f"sqlite:///{small_disk / 'jobs.db'}", "INFERLANE_JOBS_LEASE_S": "4",
           "INFERLANE_JOBS_RETRY_BACKOFF_S": "0.1", "INFERLANE_JOBS_MAX_ATTEMPTS": "5"}
    serving = contextlib.ExitStack()  # stops the server (SIGTERM, drained) when closed
    server: Server = serving.enter_context(serve(fault_repo, log_path=tmp_path / "server.log", env=env))
    alive = [exited(server.proc, server.log)]
    filler = small_disk / "filler"
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:

            def submit(doc: dict[str, Any]) -> httpx.Response:
                return client.post("/v2/models/double/jobs", content=orjson.dumps(doc), headers=JSON)

            def final(job_id: str) -> dict[str, Any]:
                seen: list[dict[str, Any]] = []

                def done() -> bool:
                    seen.append(client.get(f"/v2/jobs/{job_id}").json())
                    return seen[-1]["status"] in FINAL

                wait_until(done, f"job {job_id} is final", 30, abort_if=alive)
                return seen[-1]

            before = [body(float(i)) for i in range(5)]
            before_ids = []
            for doc in before:
                r = submit(doc)
                assert r.status_code == 202, r.text
                before_ids.append(r.json()["id"])
            for job_id, doc in zip(before_ids, before, strict=True):
                check_result(final(job_id), doc)

            # A job runs while the disk fills: storing its outcome fails, it runs again once space is back.
            held_doc = body(100.0)
            r = client.post("/v2/models/hold/jobs", content=orjson.dumps(held_doc), headers=JSON)
            assert r.status_code == 202, r.text
            held = r.json()["id"]
            wait_until(lambda: client.get(f"/v2/jobs/{held}").json()["status"] == "running", "the hold job runs",
                       15, abort_if=alive)
            assert fill(filler) > 0

            for doc in (body(0.0, width=65536), body(5.0)):  # a big body and a small one: both need space
                r = submit(doc)
                assert r.status_code == 503, (r.status_code, r.text[:300])
                message = r.json()["error"]
                assert "job store" in message and "full" in message, message
            for job_id, doc in zip(before_ids, before, strict=True):  # still readable, still whole
                check_result(client.get(f"/v2/jobs/{job_id}").json(), doc)
            listed = client.get("/v2/jobs", params={"limit": 100})
            assert listed.status_code == 200, listed.text
            assert {j["id"] for j in listed.json()["jobs"]} == {*before_ids, held}

            # The worker cannot store the outcome, nor claim the job again once its lease runs out: it
            # stays up, and readiness and the gauge say why.
            wait_until(lambda: ready(client)[0] == 503, "the server says its worker cannot use the store", 30,
                       abort_if=alive)
            error = ready(client)[1].get("error", "")
            assert "job store" in error and "full" in error, error
            assert worker_gauge(client) == 0.0
            assert client.get(f"/v2/jobs/{held}").json()["status"] == "running"

            filler.unlink()
            after = [body(0.0, width=65536), body(7.0)]
            after_ids = []
            for doc in after:
                r = submit(doc)
                assert r.status_code == 202, r.text
                after_ids.append(r.json()["id"])
            for job_id, doc in zip([*after_ids, held], [*after, held_doc], strict=True):
                check_result(final(job_id), doc)
            assert client.get(f"/v2/jobs/{held}").json()["attempts"] == 2  # the lost outcome ran again once
            wait_until(lambda: ready(client)[0] == 200, "the server is ready again", 15, abort_if=alive)
            assert worker_gauge(client) == 1.0
    finally:
        serving.close()
    assert "Traceback" not in server.log.read_text(), log_tail(server.log)  # a full disk is a line, not a crash
