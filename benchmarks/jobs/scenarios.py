"""The servers and stores the jobs benchmark runs against, and its three scenarios:

  accept   a server with INFERLANE_JOBS_WORKERS=0 (it only accepts jobs): --jobs submits from the
           submitter process. Submit throughput and the 202's latency.
  idle     a server with its default in-process workers, one job at a time: submit, then poll every
           2 ms until it succeeded. Submit-to-result latency from the job record and as seen.
  load     the same server: --jobs submitted at once while the workers drain them. Submit and drain
           throughput, submit-to-result latency from every job record.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.common import ROOT, module_command
from benchmarks.jobs.submitter import HOST, SUBMIT_PATH
from inferlane.testing import ServerProcess, redis_server, serve, wait_until
from inferlane.testing.services.redis import AppendFsync


@dataclass
class Row:
    store: str
    scenario: str
    jobs: int
    submit_rate: float | None = None
    submit_p50: float | None = None
    submit_p99: float | None = None
    done_rate: float | None = None
    result_p50: float | None = None
    result_p99: float | None = None
    seen_p50: float | None = None
    seen_p99: float | None = None


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def fraud_body(rows: np.ndarray) -> bytes:
    return orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape),
                                     "data": rows.ravel().tolist()}]})


def write_bodies(path: Path, x: np.ndarray) -> Path:
    """One single-row job body per line."""
    path.write_bytes(b"\n".join(fraud_body(row[None, :]) for row in x))
    return path


@contextlib.contextmanager
def inferlane_server(repo: Path, store_url: str, log_path: Path, workers: int | None) -> Iterator[ServerProcess]:
    env = {"INFERLANE_JOBS_STORE": store_url}
    if workers is not None:
        env["INFERLANE_JOBS_WORKERS"] = str(workers)
    with serve(repo, log_path=log_path, env=env) as server:
        yield server


@contextlib.contextmanager
def store_urls(store: str, folder: Path, fsync: AppendFsync) -> Iterator[tuple[str, str, str]]:
    """(label, store URL for the accept-only server, store URL for the server with workers)."""
    if store == "sqlite":
        yield "sqlite", f"sqlite:///{folder / 'accept.db'}", f"sqlite:///{folder / 'workers.db'}"
    else:
        with redis_server(folder, appendfsync=fsync) as url:
            yield f"redis (fsync {fsync})", url, url


def flush(store_url: str) -> None:
    if store_url.startswith("redis://"):
        import redis

        client = redis.Redis.from_url(store_url)
        client.flushdb()
        client.close()


def run_submitter(port: int, concurrency: int, bodies: Path) -> dict[str, Any]:
    out = subprocess.run(module_command("benchmarks.jobs.submitter", str(port), str(concurrency), str(bodies)),
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    result: dict[str, Any] = json.loads(out)
    if set(result["statuses"]) != {"202"}:
        raise RuntimeError(f"submits answered {result['statuses']}")
    return result


def records(store_url: str, ids: list[str]) -> list[tuple[float, float]]:
    """(created_at, finished_at) of each job, read from the store itself (after the run); every job
    must have succeeded in one attempt."""
    from inferlane.store.jobs import open_job_store

    store = open_job_store(store_url)
    try:
        out = []
        for job_id in ids:
            job = store.get(job_id)
            if job is None or job.status.value != "succeeded" or job.finished_at is None or job.attempts != 1:
                raise RuntimeError(f"job {job_id} did not succeed in one attempt: {job}")
            out.append((job.created_at, job.finished_at))
        return out
    finally:
        store.close()


def drained(port: int) -> bool:
    """Nothing queued or running: every move between the two is atomic in the store."""
    import httpx

    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as c:
        return not any(c.get("/v2/jobs", params={"status": s, "limit": "1"}).json()["jobs"]
                       for s in ("queued", "running"))


def wait_drained(port: int, timeout_s: float = 600.0) -> None:
    wait_until(lambda: drained(port), "the jobs are drained", timeout_s)


def accept_only(store: str, port: int, bodies: Path, jobs: int, concurrency: int) -> Row:
    res = run_submitter(port, concurrency, bodies)
    lat, seconds = res["latencies"], res["seconds"]
    return Row(store, "accept (workers=0)", jobs, submit_rate=jobs / seconds,
               submit_p50=percentile_ms(lat, 50), submit_p99=percentile_ms(lat, 99))


def idle(store: str, url: str, port: int, x: np.ndarray) -> Row:
    import httpx

    seen: list[float] = []
    ids: list[str] = []
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as c:
        for row in x:
            t0 = time.perf_counter()
            r = c.post(SUBMIT_PATH, content=fraud_body(row[None, :]), headers={"Content-Type": "application/json"})
            if r.status_code != 202:
                raise RuntimeError(f"submit answered {r.status_code}: {r.text}")
            job_id = r.json()["id"]
            while (status := c.get(f"/v2/jobs/{job_id}").json()["status"]) not in ("succeeded", "failed"):
                time.sleep(0.002)  # the poll interval is part of what "seen" measures (up to 2 ms)
            if status != "succeeded":
                raise RuntimeError(f"job {job_id} {status}")
            seen.append(time.perf_counter() - t0)
            ids.append(job_id)
            time.sleep(0.01)  # idle between jobs: the scenario is one job at a time on a quiet server
    lat = [f - c0 for c0, f in records(url, ids)]
    return Row(store, "idle (1 at a time)", len(ids), result_p50=percentile_ms(lat, 50),
               result_p99=percentile_ms(lat, 99), seen_p50=percentile_ms(seen, 50), seen_p99=percentile_ms(seen, 99))


def under_load(store: str, url: str, port: int, bodies: Path, jobs: int, concurrency: int) -> Row:
    res = run_submitter(port, concurrency, bodies)
    wait_drained(port)
    rec = records(url, res["ids"])
    lat = [f - c0 for c0, f in rec]
    span = max(f for _, f in rec) - min(c0 for c0, _ in rec)
    return Row(store, f"load ({concurrency} submitting)", jobs, submit_rate=jobs / res["seconds"],
               submit_p50=percentile_ms(res["latencies"], 50), submit_p99=percentile_ms(res["latencies"], 99),
               done_rate=jobs / span, result_p50=percentile_ms(lat, 50), result_p99=percentile_ms(lat, 99))
