"""``inferlane demo``: train, convert, serve, load-test, and walk through the error paths."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from inferlane.bench.burst import one_request, run_load
from inferlane.bench.wire import build_request
from inferlane.demo.models import N_FEATURES, synthetic_transactions, write_fraud_model, write_request
from inferlane.testing import free_port, start_server, stop_process, wait_ready

HOST = "127.0.0.1"
PATH = "/v2/models/fraud/infer"


def _body(rows: list[list[float]]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                     "shape": [len(rows), N_FEATURES], "data": rows}]})


def _batch_mean(port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("inferlane_batch_size_sum{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("inferlane_batch_size_count{"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def _get_json(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            doc: dict[str, object] = json.loads(r.read())
    except urllib.error.HTTPError as e:
        doc = json.loads(e.read())
    return doc


def _step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


async def _scenarios(port: int, requests: int, concurrency: int) -> bool:
    x, _ = synthetic_transactions(requests, seed=11)
    bodies = [build_request(HOST, port, PATH, _body([row])) for row in x.tolist()]
    sum0, n0 = await asyncio.to_thread(_batch_mean, port)
    res = await run_load(HOST, port, bodies, concurrency)
    sum1, n1 = await asyncio.to_thread(_batch_mean, port)
    mean_batch = (sum1 - sum0) / max(1.0, n1 - n0)
    print(f"\n  {'requests':>9} {'concurrency':>11} {'ok':>6} {'throughput':>12} {'p50':>8} "
          f"{'p95':>8} {'p99':>8} {'mean batch':>10}")
    print(f"  {len(res.latencies):>9} {concurrency:>11} {res.ok:>6} {res.rps:>8.0f} rps "
          f"{res.percentile(50) * 1e3:>6.2f}ms {res.percentile(95) * 1e3:>6.2f}ms "
          f"{res.percentile(99) * 1e3:>6.2f}ms {mean_batch:>10.1f}")
    good = res.ok == len(bodies)

    _step("an oversized request (2 MiB; this model's limit is 1 MiB)")
    big = b'{"inputs": [' + b" " * (2 * 1024 * 1024) + b"]}"
    status, _, body = await one_request(HOST, port, build_request(HOST, port, PATH, big))
    print(f"  HTTP {status}: {body.decode()}")
    good &= status == 413

    _step("a request whose deadline has already passed (inferlane-timeout-ms: 0)")
    status, _, body = await one_request(
        HOST, port, build_request(HOST, port, PATH, _body([x[0].tolist()]), {"inferlane-timeout-ms": "0"}))
    print(f"  HTTP {status}: {body.decode()}")
    good &= status == 504

    _step("an overload burst: 600 connections at once against a queue bounded at 256 requests")
    # Its own rows: the load burst above may have fewer than the 600 requests of 32 rows need.
    xb, _ = synthetic_transactions(2432, seed=12)
    burst = [build_request(HOST, port, PATH, _body(xb[i:i + 32].tolist())) for i in range(0, 2400, 4)]
    over = await run_load(HOST, port, burst, concurrency=600, keep_headers=True)
    retry = sorted({h.get("retry-after", "") for h, s in zip(over.headers, over.latencies, strict=False)
                    if h.get("retry-after")})
    print(f"  {dict(sorted(over.statuses.items()))} (status: count); Retry-After values seen: {retry}")
    good &= over.statuses.get(503, 0) > 0 and bool(retry)

    _step("the server after all of it")
    ready = await asyncio.to_thread(_get_json, f"http://{HOST}:{port}/v2/health/ready")
    more = bodies[:200]
    res2 = await run_load(HOST, port, more, 8)
    print(f"  ready: {ready['ready']}; {len(more)} more requests: {res2.ok} answered 200, "
          f"p99 {res2.percentile(99) * 1e3:.2f} ms")
    good = good and ready.get("ready") is True and res2.ok == len(more)
    return good


def run_demo(workdir: Path | None = None, requests: int = 4000, concurrency: int = 32) -> int:
    """Everything goes under ``workdir`` (kept afterwards: ``models/``, ``request.json``, ``jobs.db``),
    or under a temporary folder removed at the end when it is None."""
    with tempfile.TemporaryDirectory(prefix="inferlane-demo-") as tmp:
        repo = (workdir or Path(tmp)) / "models"
        _step(f"training a fraud model on synthetic card transactions (scikit-learn, seed 7) -> {repo}")
        t0 = time.perf_counter()
        model_dir = write_fraud_model(repo)
        request = write_request(repo.parent / "request.json")
        print(f"  trained and converted to ONNX in {time.perf_counter() - t0:.1f} s: "
              f"{model_dir / '1' / 'model.onnx'} + {model_dir / 'model.yaml'}; a request: {request}")
        port = free_port()
        _step(f"inferlane serve {repo} --port {port}")
        proc = start_server(repo, port, env={"INFERLANE_JOBS_STORE": f"sqlite:///{repo.parent / 'jobs.db'}"})
        try:
            t0 = time.perf_counter()
            wait_ready(port, proc)
            print(f"  ready in {time.perf_counter() - t0:.1f} s (loaded, warmed up)")
            _step(f"a burst of {requests} single-row requests over {concurrency} connections")
            ok = asyncio.run(_scenarios(port, requests, concurrency))
        finally:
            code = stop_process(proc)
        _step(f"SIGTERM: the server drained and exited with code {code}")
        ok = ok and code == 0
        print("\ndemo " + ("passed" if ok else "FAILED: see the steps above"))
        if workdir is None:
            print("the model was written to a temporary folder, now removed; to keep it, run "
                  "inferlane demo --workdir DIR")
        else:
            print(f"\nnext: inferlane serve {repo}\n"
                  f"      curl -s localhost:8000/v2/models/fraud/infer -H 'Content-Type: application/json' "
                  f"--data-binary @{request}")
        return 0 if ok else 1
