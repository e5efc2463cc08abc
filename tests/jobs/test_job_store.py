"""The job store contract, run against every backend (SQLite file, real Redis) with explicit times."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

import inferlane.store.jobs
from inferlane.core.errors import ConfigError
from inferlane.store.jobs import (
    JobRecord,
    JobStatus,
    JobStore,
    ModelBacklog,
    RedisJobStore,
    SqliteJobStore,
    open_job_store,
)
from inferlane.store.jobs.base import CallbackStatus, lost_lease_error

T0 = 1_700_000_000.0
TTL = 3600.0


def new_job(now: float = T0, model: str = "m", **fields: object) -> JobRecord:
    job = JobRecord.new(model, now=now, request=b'{"inputs": [1, 2]}')
    return replace(job, **fields) if fields else job  # type: ignore[arg-type]


def submitted(store: JobStore, now: float = T0, model: str = "m", **fields: object) -> JobRecord:
    job, created = store.submit(new_job(now, model, **fields))
    assert created
    return job


# --- submit, get, list ---------------------------------------------------------------------------

def test_submit_get_and_list_newest_first(store: JobStore) -> None:
    a = submitted(store, T0)
    b = submitted(store, T0 + 1, model="other")
    c = submitted(store, T0 + 2)
    assert store.get(a.id) == a
    assert store.get("no-such-job") is None
    assert [j.id for j in store.list()] == [c.id, b.id, a.id]
    assert [j.id for j in store.list(limit=2)] == [c.id, b.id]
    assert store.list(limit=0) == []
    assert [j.id for j in store.list(model="m")] == [c.id, a.id]
    assert [j.id for j in store.list(JobStatus.QUEUED, model="other")] == [b.id]
    assert store.list(JobStatus.RUNNING) == []
    claimed = store.claim("w", 30.0, T0 + 3)
    assert claimed is not None and claimed.id == a.id
    assert [j.id for j in store.list(JobStatus.QUEUED)] == [c.id, b.id]
    assert store.list(JobStatus.RUNNING) == [replace(claimed, request=b"")]


def test_list_reads_no_payloads_and_scopes_to_a_tenant(store: JobStore) -> None:
    """A listing never carries request or result bytes (a limit of 1000 must not read 1000 bodies);
    a tenant sees only its own jobs, and its idempotency keys are its own."""
    big = b'{"inputs": "' + b"x" * 100_000 + b'"}'
    mine = submitted(store, T0, request=big, tenant="acme", idempotency_key="k")
    theirs = submitted(store, T0 + 1, request=big, tenant="umbrella", idempotency_key="k")
    open_job = submitted(store, T0 + 2, idempotency_key="k")
    assert len({mine.id, theirs.id, open_job.id}) == 3  # one key, three tenants: three jobs
    again, created = store.submit(new_job(T0 + 3, tenant="acme", idempotency_key="k"))
    assert (again.id, created) == (mine.id, False)
    claimed = store.claim("w", 30.0, T0 + 4)
    assert claimed is not None and claimed.id == mine.id
    assert store.complete(mine.id, "w", b'{"y": "' + b"r" * 100_000 + b'"}', None, T0 + 5, TTL)
    listed = store.list()
    assert [j.id for j in listed] == [open_job.id, theirs.id, mine.id]
    assert all(j.request == b"" and j.result is None for j in listed)
    full = store.get(mine.id)
    assert full is not None and full.request == big and full.result is not None
    assert listed[2] == replace(full, request=b"", result=None)
    assert [j.id for j in store.list(tenant="acme")] == [mine.id]
    assert [j.id for j in store.list(JobStatus.SUCCEEDED, tenant="acme")] == [mine.id]
    assert store.list(JobStatus.QUEUED, tenant="acme") == []
    assert [j.id for j in store.list(model="m", tenant="umbrella")] == [theirs.id]
    assert store.list(tenant="nobody") == []
    assert [j.id for j in store.list(tenant="")] == [open_job.id]


def test_a_finished_job_makes_its_callback_pending_in_the_same_write(store: JobStore) -> None:
    """complete and a final fail mark the callback pending (due at once); a dispatcher claims it,
    which hides it from other dispatchers until the hold runs out; its outcome is recorded."""
    ok = submitted(store, T0, callback_url="http://hooks.example/a")
    bad = submitted(store, T0 + 1, callback_url="http://hooks.example/b")
    plain = submitted(store, T0 + 2)
    for _ in (ok, bad, plain):
        assert store.claim("w", 30.0, T0 + 3) is not None
    assert store.claim_callbacks(T0 + 3, 60.0, 10) == []  # nothing finished yet
    assert store.complete(ok.id, "w", b"1", None, T0 + 4, TTL)
    assert store.fail(bad.id, "w", "boom", T0 + 5, None, TTL)
    assert store.complete(plain.id, "w", b"1", None, T0 + 6, TTL)
    done = store.get(ok.id)
    assert done is not None and (done.callback_status, done.callback_at) == (CallbackStatus.PENDING, T0 + 4)
    none = store.get(plain.id)
    assert none is not None and none.callback_status is None
    taken = store.claim_callbacks(T0 + 10, 60.0, 10)
    assert [j.id for j in taken] == [ok.id, bad.id] and taken[0].result == b"1"
    assert store.claim_callbacks(T0 + 11, 60.0, 10) == []  # held by the first dispatcher
    assert store.record_callback(ok.id, CallbackStatus.DELIVERED, 2, None, T0 + 12)
    assert not store.record_callback(ok.id, CallbackStatus.FAILED, 1, "late", T0 + 13)  # no longer pending
    assert store.record_callback(bad.id, CallbackStatus.PENDING, 3, "HTTP 503", T0 + 14)  # given back
    (again,) = store.claim_callbacks(T0 + 14, 60.0, 10)
    assert again.id == bad.id and again.callback_attempts == 3
    assert store.record_callback(bad.id, CallbackStatus.FAILED, 1, "HTTP 404", T0 + 15)
    delivered, failed = store.get(ok.id), store.get(bad.id)
    assert delivered is not None and failed is not None
    assert (delivered.callback_status, delivered.callback_attempts, delivered.callback_error) == (
        CallbackStatus.DELIVERED, 2, None)
    assert (failed.callback_status, failed.callback_attempts, failed.callback_error) == (
        CallbackStatus.FAILED, 4, "HTTP 404")
    assert delivered.to_public()["callback"] == {"status": "delivered", "attempts": 2, "error": None}
    assert store.claim_callbacks(T0 + 1000, 60.0, 10) == []


def test_a_stale_claim_of_the_same_process_cannot_complete(store: JobStore) -> None:
    """Fencing is per claim: two claims of one job in one process (the first lease ran out) carry
    different lease tokens, so the stale one's complete is refused."""
    job = submitted(store)
    first = store.claim("host-1-w#1", 10.0, T0)
    second = store.claim("host-1-w#2", 10.0, T0 + 11)  # the first lease expired at T0 + 10
    assert first is not None and second is not None and first.id == second.id == job.id
    assert not store.complete(job.id, "host-1-w#1", b'"stale"', None, T0 + 12, TTL)
    assert store.complete(job.id, "host-1-w#2", b'"fresh"', None, T0 + 12, TTL)
    done = store.get(job.id)
    assert done is not None and done.result == b'"fresh"'


def test_submitting_the_same_record_twice_keeps_one_job(store: JobStore) -> None:
    job = new_job()
    assert store.submit(job) == (job, True)
    assert store.submit(job) == (job, False)
    assert len(store.list()) == 1


def test_submit_takes_only_queued_jobs(store: JobStore) -> None:
    with pytest.raises(ValueError, match="queued"):
        store.submit(new_job(status=JobStatus.RUNNING))


def test_public_view_has_no_bytes_and_decodes_the_result(store: JobStore) -> None:
    job = submitted(store)
    public = job.to_public()
    assert public["status"] == "queued" and public["result"] is None and "request" not in public
    assert "lease_until" not in public and "worker" not in public
    store.claim("w", 30.0, T0)
    assert store.complete(job.id, "w", orjson.dumps({"y": [0.5]}), None, T0 + 1, TTL)
    done = store.get(job.id)
    assert done is not None
    assert done.to_public()["result"] == {"y": [0.5]}
    json.dumps(done.to_public())  # plain JSON types only


# --- idempotency ---------------------------------------------------------------------------------

def test_same_idempotency_key_returns_the_existing_job(store: JobStore) -> None:
    first = submitted(store, idempotency_key="order-1")
    again, created = store.submit(new_job(T0 + 1, idempotency_key="order-1"))
    assert (again, created) == (first, False)
    other_model, created = store.submit(new_job(T0 + 2, model="other", idempotency_key="order-1"))
    assert created and other_model.id != first.id
    colon_model, created = store.submit(new_job(T0 + 3, model="a:b", idempotency_key="c"))
    assert created
    colon_key, created = store.submit(new_job(T0 + 4, model="a", idempotency_key="b:c"))
    assert created and colon_key.id != colon_model.id
    assert len(store.list()) == 4


def test_concurrent_submits_with_one_key_make_one_job(store_url: str) -> None:
    stores = [open_job_store(store_url) for _ in range(8)]  # one connection each: cross-connection races
    barrier = threading.Barrier(len(stores))

    def submit(s: JobStore) -> tuple[JobRecord, bool]:
        job = new_job(idempotency_key="same")
        barrier.wait()
        return s.submit(job)

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            results = list(pool.map(submit, stores))
        assert sum(created for _, created in results) == 1
        assert len({job.id for job, _ in results}) == 1
        assert len(stores[0].list()) == 1
    finally:
        for s in stores:
            s.close()


# --- cancel --------------------------------------------------------------------------------------

def test_cancel_only_a_queued_job(store: JobStore) -> None:
    queued, running = submitted(store, T0), submitted(store, T0 + 1)
    assert store.claim("w", 30.0, T0 + 0.5) is not None  # takes `queued`; claim `running` next
    assert store.cancel("no-such-job", now=T0 + 2) is None
    taken = store.get(queued.id)
    assert store.cancel(queued.id, now=T0 + 2) == taken  # running: unchanged
    cancelled = store.cancel(running.id, now=T0 + 2)
    assert cancelled is not None
    assert (cancelled.status, cancelled.finished_at, cancelled.updated_at) == (JobStatus.CANCELLED, T0 + 2, T0 + 2)
    assert store.get(running.id) == cancelled
    assert store.cancel(running.id, now=T0 + 3) == cancelled  # already cancelled: unchanged
    assert store.claim("w", 30.0, T0 + 10) is None  # a cancelled job is never claimed
    assert [j.id for j in store.list(JobStatus.CANCELLED)] == [running.id]


# --- claim ---------------------------------------------------------------------------------------

def test_claim_takes_the_oldest_available_job(store: JobStore) -> None:
    a = submitted(store, T0)
    b = submitted(store, T0 + 1)
    later = submitted(store, T0 + 2, available_at=T0 + 100)
    assert store.claim("w", 1000.0, T0 - 1) is None  # nothing available yet
    first = store.claim("w", 1000.0, T0 + 10)
    assert first is not None
    assert (first.id, first.status, first.worker, first.attempts) == (a.id, JobStatus.RUNNING, "w", 1)
    assert (first.lease_until, first.started_at, first.updated_at) == (T0 + 1010, T0 + 10, T0 + 10)
    assert store.get(a.id) == first
    second = store.claim("w", 1000.0, T0 + 10)
    assert second is not None and second.id == b.id
    assert store.claim("w", 1000.0, T0 + 99) is None  # `later` waits for its available_at
    third = store.claim("w", 1000.0, T0 + 100)
    assert third is not None and third.id == later.id


def test_claim_only_for_the_given_models(store: JobStore) -> None:
    other = submitted(store, T0, model="other")
    mine = submitted(store, T0 + 1, model="mine")
    assert store.claim("w", 30.0, T0 + 5, models=set()) is None
    got = store.claim("w", 30.0, T0 + 5, models={"mine", "third"})
    assert got is not None and got.id == mine.id
    assert store.claim("w", 30.0, T0 + 5, models={"mine"}) is None
    got = store.claim("w", 30.0, T0 + 5)  # None: every model
    assert got is not None and got.id == other.id


def test_expired_lease_is_redelivered_and_the_late_worker_is_fenced_off(store: JobStore) -> None:
    job = submitted(store)
    first = store.claim("w1", 30.0, T0)
    assert first is not None and first.lease_until == T0 + 30
    assert store.claim("w2", 30.0, T0 + 30) is None  # lease still held (until < now is required)
    again = store.claim("w2", 30.0, T0 + 31)
    assert again is not None
    assert (again.id, again.worker, again.attempts, again.lease_until) == (job.id, "w2", 2, T0 + 61)
    assert not store.extend(job.id, "w1", 30.0, T0 + 32)
    assert not store.complete(job.id, "w1", b'"late"', None, T0 + 32, TTL)
    assert not store.fail(job.id, "w1", "late", T0 + 32, None, TTL)
    assert store.get(job.id) == again
    assert store.complete(job.id, "w2", b'"ok"', None, T0 + 33, TTL)
    done = store.get(job.id)
    assert done is not None
    assert (done.status, done.result, done.worker, done.attempts) == (JobStatus.SUCCEEDED, b'"ok"', "w2", 2)
    assert (done.finished_at, done.expires_at, done.lease_until) == (T0 + 33, T0 + 33 + TTL, None)


def test_heartbeat_extends_the_lease(store: JobStore) -> None:
    job = submitted(store)
    assert store.claim("w1", 30.0, T0) is not None
    assert store.extend(job.id, "w1", 30.0, T0 + 20)
    held = store.get(job.id)
    assert held is not None and held.lease_until == T0 + 50
    assert store.claim("w2", 30.0, T0 + 40) is None
    stolen = store.claim("w2", 30.0, T0 + 51)
    assert stolen is not None and stolen.worker == "w2"
    assert not store.extend("no-such-job", "w2", 30.0, T0 + 52)


def test_a_job_whose_worker_dies_on_its_last_attempt_is_dead_lettered(store: JobStore) -> None:
    job = submitted(store, max_attempts=2)
    assert store.claim("w1", 10.0, T0) is not None
    assert store.claim("w2", 10.0, T0 + 11) is not None  # attempt 2 of 2
    assert store.claim("w3", 10.0, T0 + 22) is None  # out of attempts: not handed to w3
    dead = store.get(job.id)
    assert dead is not None
    assert (dead.status, dead.attempts, dead.error) == (JobStatus.FAILED, 2, lost_lease_error(2, 2, "w2"))
    assert (dead.finished_at, dead.lease_until) == (T0 + 22, None)
    assert dead.expires_at is not None and dead.expires_at > T0 + 22
    assert not store.complete(job.id, "w2", b"1", None, T0 + 23, TTL)


# --- complete and fail ---------------------------------------------------------------------------

def test_complete_and_fail_are_fenced(store: JobStore) -> None:
    job = submitted(store)
    assert not store.complete(job.id, "w", b"1", None, T0, TTL)  # queued: nobody holds it
    assert not store.fail(job.id, "w", "boom", T0, None, TTL)
    assert store.claim("w", 30.0, T0) is not None
    held = store.get(job.id)
    assert not store.complete(job.id, "intruder", b"1", None, T0 + 1, TTL)
    assert not store.fail(job.id, "intruder", "boom", T0 + 1, None, TTL)
    assert not store.complete("no-such-job", "w", b"1", None, T0 + 1, TTL)
    assert store.get(job.id) == held
    assert store.complete(job.id, "w", None, "s3://bucket/out.json", T0 + 2, TTL)
    done = store.get(job.id)
    assert done is not None
    assert (done.status, done.result, done.output_uri) == (JobStatus.SUCCEEDED, None, "s3://bucket/out.json")
    # exactly once: a second complete (or a fail) after success changes nothing
    assert not store.complete(job.id, "w", b"2", None, T0 + 3, TTL)
    assert not store.fail(job.id, "w", "boom", T0 + 3, T0 + 4, TTL)
    assert store.get(job.id) == done


def test_retry_with_backoff_then_dead_letter(store: JobStore) -> None:
    job = submitted(store, max_attempts=3)
    for attempt, now in enumerate([T0, T0 + 10, T0 + 30], start=1):
        assert store.claim("w", 5.0, now - 1) is None  # the backoff is not over yet
        claimed = store.claim("w", 5.0, now)
        assert claimed is not None and claimed.attempts == attempt
        retry_at = now + 10 * attempt  # the next attempt's `now`
        assert store.fail(job.id, "w", f"boom {attempt}", now + 1, retry_at, TTL)
        if attempt < 3:
            again = store.get(job.id)
            assert again is not None
            assert (again.status, again.available_at, again.error) == (JobStatus.QUEUED, retry_at, f"boom {attempt}")
            assert (again.worker, again.lease_until, again.finished_at) == (None, None, None)
            assert store.stats(now + 1).backlog == 1
    dead = store.get(job.id)
    assert dead is not None and dead.status is JobStatus.FAILED
    assert (dead.error, dead.attempts, dead.finished_at, dead.expires_at) == ("boom 3", 3, T0 + 31, T0 + 31 + TTL)
    assert store.claim("w", 5.0, T0 + 1000) is None
    assert [j.id for j in store.list(JobStatus.FAILED)] == [job.id]


def test_fail_without_retry_dead_letters_at_once(store: JobStore) -> None:
    job = submitted(store, max_attempts=5)
    assert store.claim("w", 5.0, T0) is not None
    assert store.fail(job.id, "w", "bad input", T0 + 1, None, TTL)
    dead = store.get(job.id)
    assert dead is not None and (dead.status, dead.attempts, dead.error) == (JobStatus.FAILED, 1, "bad input")


# --- TTL and stats -------------------------------------------------------------------------------

def test_results_expire_into_tombstones(store: JobStore) -> None:
    ok, bad, waiting = submitted(store, T0), submitted(store, T0 + 1), submitted(store, T0 + 2)
    assert store.claim("w", 30.0, T0 + 5) is not None
    assert store.claim("w", 30.0, T0 + 5) is not None
    assert store.complete(ok.id, "w", b'{"y": 1}', None, T0 + 6, 100.0)
    assert store.fail(bad.id, "w", "boom", T0 + 7, None, 100.0)
    assert store.expire(T0 + 106) == 0  # ok expires at T0 + 106: not yet (expires_at < now)
    assert store.expire(T0 + 106.5) == 1
    assert store.expire(T0 + 200) == 1
    assert store.expire(T0 + 300) == 0
    gone, dead = store.get(ok.id), store.get(bad.id)
    assert gone is not None and dead is not None
    assert (gone.status, gone.result, gone.request) == (JobStatus.EXPIRED, None, b"")
    assert (dead.status, dead.error) == (JobStatus.EXPIRED, "boom")
    assert gone.to_public()["status"] == "expired"
    assert store.get(waiting.id) == waiting  # queued jobs never expire
    assert {j.id for j in store.list(JobStatus.EXPIRED)} == {ok.id, bad.id}
    assert store.list(JobStatus.SUCCEEDED) == []


def test_stats(store: JobStore) -> None:
    empty = store.stats(T0)
    assert (empty.backlog, empty.running, empty.oldest_queued_age_s) == (0, 0, 0.0)
    assert empty.by_status == dict.fromkeys(JobStatus, 0)
    submitted(store, T0)
    submitted(store, T0 + 2, model="other")
    submitted(store, T0 + 3, available_at=T0 + 50)
    done = submitted(store, T0 + 4)
    assert store.claim("w", 30.0, T0 + 5) is not None  # the T0 job
    stats = store.stats(T0 + 10)
    assert (stats.backlog, stats.running, stats.oldest_queued_age_s) == (3, 1, 8.0)
    assert stats.by_model == {"m": ModelBacklog(2, 1, 6.0), "other": ModelBacklog(1, 0, 8.0)}
    assert store.claim("w", 30.0, T0 + 10) is not None  # T0 + 2
    claimed = store.claim("w", 30.0, T0 + 10)
    assert claimed is not None and claimed.id == done.id
    assert store.complete(done.id, "w", b"1", None, T0 + 11, TTL)
    stats = store.stats(T0 + 20)
    assert (stats.backlog, stats.running, stats.oldest_queued_age_s) == (1, 2, 0.0)  # only a future job waits
    assert stats.by_status[JobStatus.SUCCEEDED] == 1
    assert sum(stats.by_status.values()) == 4
    assert stats.by_model == {"m": ModelBacklog(1, 1, 0.0), "other": ModelBacklog(0, 1, 0.0)}
    assert empty.by_model == {}


# --- concurrency and durability ------------------------------------------------------------------

def _drain(store: JobStore, worker: str, now: float) -> list[str]:
    got = []
    while (job := store.claim(worker, 60.0, now)) is not None:
        assert store.complete(job.id, worker, b"1", None, now, TTL), job.id
        got.append(job.id)
    return got


def _submit_many(store: JobStore, n: int) -> set[str]:
    return {submitted(store, T0 + i * 0.001).id for i in range(n)}


def _all_succeeded_once(store: JobStore, ids: set[str], claimed: list[str]) -> None:
    assert len(claimed) == len(ids), "a job was claimed twice or never"
    assert set(claimed) == ids
    jobs = store.list(limit=len(ids) + 10)
    assert {(j.status, j.attempts) for j in jobs} == {(JobStatus.SUCCEEDED, 1)}


def test_concurrent_claimers_in_threads_take_each_job_once(store: JobStore, store_url: str) -> None:
    ids = _submit_many(store, 200)
    stores = [store, store, open_job_store(store_url), open_job_store(store_url)]  # shared and own connections
    barrier = threading.Barrier(len(stores))

    def run(i: int) -> list[str]:
        barrier.wait()
        return _drain(stores[i], f"w{i}", T0 + 10)

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            claimed = [job_id for got in pool.map(run, range(len(stores))) for job_id in got]
    finally:
        stores[2].close()
        stores[3].close()
    _all_succeeded_once(store, ids, claimed)


CLAIMER = """
import json, sys, threading
from inferlane.store.jobs import open_job_store

url, name, now = sys.argv[1], sys.argv[2], float(sys.argv[3])
stores = [open_job_store(url) for _ in range(2)]
got, errors = [], []

def run(i):
    store, worker = stores[i], f"{name}-t{i}"
    try:
        while (job := store.claim(worker, 60.0, now)) is not None:
            if not store.complete(job.id, worker, b"1", None, now, 3600.0):
                errors.append(f"{worker} lost {job.id}")
            got.append(job.id)
    except Exception as e:
        errors.append(repr(e))

print("ready", flush=True)
sys.stdin.readline()
threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"got": got, "errors": errors}), flush=True)
"""


def test_concurrent_claimers_in_processes_take_each_job_once(store: JobStore, store_url: str) -> None:
    ids = _submit_many(store, 200)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, store_url, f"p{i}", str(T0 + 10)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    try:
        for p in procs:  # both started and connected before either claims
            assert p.stdout is not None and p.stdout.readline() == b"ready\n", p.stderr and p.stderr.read()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    claimed: list[str] = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
        report = json.loads(out)
        assert report["errors"] == [], report["errors"]
        claimed += report["got"]
    _all_succeeded_once(store, ids, claimed)


def test_jobs_survive_reopening_the_store(store: JobStore, store_url: str) -> None:
    """A new store object on the same file or server sees everything (the fixture closes `store` again)."""
    done = submitted(store, T0, idempotency_key="k")
    waiting = submitted(store, T0 + 1)
    assert store.claim("w", 30.0, T0 + 2) is not None
    assert store.complete(done.id, "w", b'{"y": 2}', None, T0 + 3, TTL)
    before = (store.list(), store.stats(T0 + 4))
    store.close()
    reopened = open_job_store(store_url)
    try:
        assert (reopened.list(), reopened.stats(T0 + 4)) == before
        assert reopened.get(waiting.id) == waiting
        assert reopened.submit(new_job(T0 + 5, idempotency_key="k"))[0].id == done.id
        claimed = reopened.claim("w", 30.0, T0 + 6)
        assert claimed is not None and claimed.id == waiting.id
    finally:
        reopened.close()


KILLED_AFTER_SUBMIT = """
import os, signal, sys
from inferlane.store.jobs import JobRecord, open_job_store

job, _ = open_job_store(sys.argv[1]).submit(JobRecord.new("m", now=1.0, request=b"{}"))
print(job.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no clean shutdown
"""


def test_a_submitted_job_survives_its_process_being_killed(store_url: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_SUBMIT, store_url], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    reopened = open_job_store(store_url)
    try:
        job = reopened.get(proc.stdout.decode().strip())
        assert job is not None and job.status is JobStatus.QUEUED and job.request == b"{}"
    finally:
        reopened.close()


# --- factory and public API ----------------------------------------------------------------------

def test_open_job_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.chdir(tmp_path)
    for url, path in [("sqlite:///rel/jobs.db", tmp_path / "rel" / "jobs.db"),
                      (f"sqlite:///{tmp_path / 'abs.db'}", tmp_path / "abs.db"),
                      ("bare.db", tmp_path / "bare.db")]:
        s = open_job_store(url)
        try:
            assert isinstance(s, SqliteJobStore) and path.exists(), url
        finally:
            s.close()
    r = open_job_store(redis_url)
    try:
        assert isinstance(r, RedisJobStore)
    finally:
        r.close()


@pytest.mark.parametrize("url", ["postgresql://db/jobs", "sqlite://relative.db", "sqlite:///", "", "http://x"])
def test_open_job_store_rejects_other_urls(url: str) -> None:
    with pytest.raises(ConfigError, match=r"sqlite:///relative/path\.db.*redis://host:port/db"):
        open_job_store(url)


def test_missing_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'inferlane\[redis\]'"):
        open_job_store("redis://127.0.0.1:1/0")


def test_exported_members() -> None:
    names = inferlane.store.jobs.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(inferlane.store.jobs, name), name
    public = {n for n in dir(inferlane.store.jobs) if not n.startswith("_")}
    modules = {"base", "factory", "redis", "sqlite"}
    assert public - modules <= set(names), public - modules - set(names)
