"""Jobs-lane benchmark: submit throughput and submit-to-result latency, SQLite vs Redis.

    .venv/bin/python benchmarks/jobs.py                    # full run (about 40 s on 2 cores)
    .venv/bin/python benchmarks/jobs.py --quick            # smoke run (about 20 s)
    .venv/bin/python benchmarks/jobs.py --stores sqlite --jobs 5000

For each job store (a SQLite file in a temporary folder; a redis-server this script starts on a
free port, with ``appendfsync always`` by default so that a 202 means "on disk" for both stores),
against `inferlane serve` on loopback with the fraud model (``write_fraud_model``):

  accept   a server with INFERLANE_JOBS_WORKERS=0 (it only accepts jobs): --jobs submits from a
           separate client process (the project's load generator, --concurrency keep-alive
           connections). Submit throughput and the 202's latency.
  idle     a server with its default in-process workers, one job at a time: submit, then poll
           every 2 ms until it succeeded. Submit-to-result latency from the job record
           (finished_at - created_at) and as the polling client saw it.
  load     the same server: --jobs submitted at once from the separate client process while the
           workers drain them. Submit throughput, drain throughput (jobs / (last finished_at -
           first created_at)) and submit-to-result latency from every job record.

Every job is one row of 30 float32 features (distinct rows). Times in a job record are the
server's wall clock; the client's latencies are perf_counter. The table ends with the exact
command, the machine and its load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

HOST = "127.0.0.1"
SUBMIT_PATH = "/v2/models/fraud/jobs"


def log(message: str) -> None:
    print(f"[jobs-bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def filesystem(path: Path) -> str:
    """The filesystem type holding ``path`` (fsync cost decides both stores' submit latency)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


# --- the client process (--_submit): submits every body in a file, prints JSON ---------------------

def submit_main(port: int, concurrency: int, bodies_file: str) -> int:
    from inferlane.demo.loadgen import build_request, run_load

    raw = [build_request(HOST, port, SUBMIT_PATH, line.encode())
           for line in Path(bodies_file).read_text().splitlines()]
    res = asyncio.run(run_load(HOST, port, raw, concurrency, keep_headers=True))
    print(json.dumps({"statuses": res.statuses, "seconds": res.seconds, "latencies": res.latencies,
                      "ids": [h.get("location", "").removeprefix("/v2/jobs/") for h in res.headers]}))
    return 0


def run_submitter(port: int, concurrency: int, bodies_file: Path) -> dict[str, object]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_submit", str(port), str(concurrency),
           str(bodies_file)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result: dict[str, object] = json.loads(out)
    statuses = result["statuses"]
    assert isinstance(statuses, dict)
    if set(statuses) != {"202"}:
        raise RuntimeError(f"submits answered {statuses}")
    return result


# --- services ------------------------------------------------------------------------------------

@contextmanager
def redis_server(folder: Path, fsync: str) -> Iterator[str]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server), or use --stores sqlite")
    port = free_port()
    persistence = ["--appendonly", "no"] if fsync == "off" else ["--appendonly", "yes", "--appendfsync", fsync]
    with open(folder / "redis.log", "wb") as out:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", HOST, "--save", "", *persistence,
                                 "--dir", str(folder)], stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis(host=HOST, port=port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((folder / "redis.log").read_text()) from None
                time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@contextmanager
def inferlane_server(repo: Path, store_url: str, log_path: Path, workers: int | None) -> Iterator[int]:
    from inferlane.demo.serverproc import start_server, stop_server, wait_ready

    env = {"INFERLANE_JOBS_STORE": store_url}
    if workers is not None:
        env["INFERLANE_JOBS_WORKERS"] = str(workers)
    port = free_port()
    proc = start_server(repo, port, log_path=log_path, env=env)
    try:
        wait_ready(port, proc)
        yield port
    finally:
        stop_server(proc)


@contextmanager
def store_urls(store: str, folder: Path, fsync: str) -> Iterator[tuple[str, str, str]]:
    """(label, store URL for the accept-only server, store URL for the server with workers)."""
    if store == "sqlite":
        yield "sqlite", f"sqlite:///{folder / 'accept.db'}", f"sqlite:///{folder / 'workers.db'}"
    else:
        with redis_server(folder, fsync) as url:
            yield f"redis (fsync {fsync})", url, url


def flush(store_url: str) -> None:
    if store_url.startswith("redis://"):
        import redis

        client = redis.Redis.from_url(store_url)
        client.flushdb()
        client.close()


# --- measurements --------------------------------------------------------------------------------

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


def write_bodies(path: Path, x: np.ndarray) -> Path:
    from inferlane.demo.models import N_FEATURES

    lines = [orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, N_FEATURES],
                                       "data": row.tolist()}]}) for row in x]
    path.write_bytes(b"\n".join(lines))
    return path


def records(store_url: str, ids: list[str]) -> list[tuple[float, float]]:
    """(created_at, finished_at) of each job, read from the store itself (after the run)."""
    from inferlane.store.jobs import open_job_store

    store = open_job_store(store_url)
    try:
        out = []
        for job_id in ids:
            job = store.get(job_id)
            if job is None or job.status.value != "succeeded" or job.finished_at is None:
                raise RuntimeError(f"job {job_id} did not succeed: {job}")
            out.append((job.created_at, job.finished_at))
        return out
    finally:
        store.close()


def wait_drained(port: int, timeout: float = 600.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as c:
        while True:  # nothing queued or running: every move between the two is atomic in the store
            if not any(c.get("/v2/jobs", params={"status": s, "limit": "1"}).json()["jobs"]
                       for s in ("queued", "running")):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs not drained after {timeout:.0f} s")
            time.sleep(0.05)


def accept_only(store: str, port: int, bodies: Path, jobs: int, concurrency: int) -> Row:
    res = run_submitter(port, concurrency, bodies)
    lat = res["latencies"]
    seconds = res["seconds"]
    assert isinstance(lat, list) and isinstance(seconds, float)
    return Row(store, "accept (workers=0)", jobs, submit_rate=jobs / seconds,
               submit_p50=percentile_ms(lat, 50), submit_p99=percentile_ms(lat, 99))


def idle(store: str, url: str, port: int, x: np.ndarray) -> Row:
    import httpx

    seen: list[float] = []
    ids: list[str] = []
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as c:
        for row in x:
            body = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, len(row)],
                                             "data": row.tolist()}]})
            t0 = time.perf_counter()
            r = c.post(SUBMIT_PATH, content=body, headers={"Content-Type": "application/json"})
            if r.status_code != 202:
                raise RuntimeError(f"submit answered {r.status_code}: {r.text}")
            job_id = r.json()["id"]
            while (status := c.get(f"/v2/jobs/{job_id}").json()["status"]) not in ("succeeded", "failed"):
                time.sleep(0.002)
            if status != "succeeded":
                raise RuntimeError(f"job {job_id} {status}")
            seen.append(time.perf_counter() - t0)
            ids.append(job_id)
            time.sleep(0.01)  # idle between jobs
    lat = [f - c0 for c0, f in records(url, ids)]
    return Row(store, "idle (1 at a time)", len(ids), result_p50=percentile_ms(lat, 50),
               result_p99=percentile_ms(lat, 99), seen_p50=percentile_ms(seen, 50),
               seen_p99=percentile_ms(seen, 99))


def under_load(store: str, url: str, port: int, bodies: Path, jobs: int, concurrency: int) -> Row:
    res = run_submitter(port, concurrency, bodies)
    wait_drained(port)
    ids, lat_submit, seconds = res["ids"], res["latencies"], res["seconds"]
    assert isinstance(ids, list) and isinstance(lat_submit, list) and isinstance(seconds, float)
    rec = records(url, ids)
    lat = [f - c0 for c0, f in rec]
    span = max(f for _, f in rec) - min(c0 for c0, _ in rec)
    return Row(store, f"load ({concurrency} submitting)", jobs, submit_rate=jobs / seconds,
               submit_p50=percentile_ms(lat_submit, 50), submit_p99=percentile_ms(lat_submit, 99),
               done_rate=jobs / span, result_p50=percentile_ms(lat, 50), result_p99=percentile_ms(lat, 99))


# --- output --------------------------------------------------------------------------------------

COLUMNS = [("store", "store", "s"), ("scenario", "scenario", "s"), ("jobs", "jobs", "d"),
           ("submit_rate", "submit jobs/s", ".0f"), ("submit_p50", "202 p50 ms", ".1f"),
           ("submit_p99", "202 p99 ms", ".1f"), ("done_rate", "done jobs/s", ".0f"),
           ("result_p50", "result p50 ms", ".1f"), ("result_p99", "result p99 ms", ".1f"),
           ("seen_p50", "seen p50 ms", ".1f"), ("seen_p99", "seen p99 ms", ".1f")]


def table(rows: list[Row]) -> str:
    cells = [[h for _, h, _ in COLUMNS]]
    for r in rows:
        line = []
        for attr, _, fmt in COLUMNS:
            v = getattr(r, attr)
            line.append("-" if v is None else format(v, fmt))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]

    def fmt_line(c: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths,
                                                                                                   strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt_line(cells[0]), sep, *(fmt_line(c) for c in cells[1:])])


# --- main ----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 300 jobs, 20 idle jobs (about 20 s)")
    p.add_argument("--jobs", type=int, default=None, help="jobs per accept/load run (default 2000; 300 with --quick)")
    p.add_argument("--idle-jobs", type=int, default=None, help="jobs in the idle run (default 100; 20 with --quick)")
    p.add_argument("--concurrency", type=int, default=16, help="submitting connections (default 16)")
    p.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite, redis (default both)")
    p.add_argument("--redis-fsync", choices=["always", "everysec", "off"], default="always",
                   help="redis-server appendfsync; 'off' turns persistence off (default always, like "
                        "SQLite's synchronous=FULL)")
    p.add_argument("--_submit", nargs=3, metavar=("PORT", "CONCURRENCY", "FILE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._submit is not None:
        return submit_main(int(args._submit[0]), int(args._submit[1]), args._submit[2])
    from inferlane.demo.models import synthetic_transactions, write_fraud_model

    jobs = args.jobs or (300 if args.quick else 2000)
    idle_jobs = args.idle_jobs or (20 if args.quick else 100)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not set(stores) <= {"sqlite", "redis"}:
        raise SystemExit(f"--stores takes sqlite and/or redis, not {args.stores!r}")
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="inferlane-bench-jobs-"))
    fs = filesystem(work)
    rows: list[Row] = []
    try:
        log(f"writing the fraud model in {work}")
        repo = work / "models"
        write_fraud_model(repo, rows=4000)
        x = synthetic_transactions(2 * jobs + idle_jobs + 20, seed=3)[0]
        accept_bodies = write_bodies(work / "accept.jsonl", x[:jobs])
        load_bodies = write_bodies(work / "load.jsonl", x[jobs:2 * jobs])
        idle_x = x[2 * jobs:2 * jobs + idle_jobs]
        warm_bodies = write_bodies(work / "warm.jsonl", x[2 * jobs + idle_jobs:])
        for store in stores:
            folder = work / store
            folder.mkdir()
            with store_urls(store, folder, args.redis_fsync) as (label, accept_url, workers_url):
                log(f"{label}: accept-only server, {jobs} submits")
                with inferlane_server(repo, accept_url, folder / "accept.log", workers=0) as port:
                    run_submitter(port, args.concurrency, warm_bodies)
                    rows.append(accept_only(label, port, accept_bodies, jobs, args.concurrency))
                flush(accept_url)
                url = workers_url
                log(f"{label}: server with in-process workers: {idle_jobs} idle jobs, then {jobs} at once")
                with inferlane_server(repo, url, folder / "workers.log", workers=None) as port:
                    run_submitter(port, args.concurrency, warm_bodies)
                    wait_drained(port)
                    rows.append(idle(label, url, port, idle_x))
                    rows.append(under_load(label, url, port, load_bodies, jobs, args.concurrency))
                flush(url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(table(rows))
    print(f"\ncommand: {shlex.join(sys.orig_argv)}")
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
          f"stores on {fs}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("202 = the submit's HTTP round trip (client side); result = finished_at - created_at from the job "
          "record; seen = submit until a 2 ms poll saw it succeeded (client side); done jobs/s = jobs / "
          "(last finished_at - first created_at). Server: 4 in-process workers (default) or none (accept).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
