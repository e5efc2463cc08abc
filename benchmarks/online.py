"""Online-lane benchmark: inferlane serve vs. the Python HTTP floor vs. raw ONNX Runtime.

    .venv/bin/python benchmarks/online.py                 # full run (about 4-5 minutes)
    .venv/bin/python benchmarks/online.py --quick         # smoke run (under a minute)
    .venv/bin/python benchmarks/online.py --json-out results.json --py-spy profiles/

The server under test is pinned to one core and the load generator to another, so the numbers
say what one server core does. See benchmarks/README.md for what every row means.

The same file is also the load driver, the bare HTTP endpoint and the raw ONNX Runtime probe:
the benchmark re-runs itself with the hidden options ``--_driver``, ``--_bare`` and ``--_raw``
in pinned subprocesses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
N_FEATURES = 30
CONCURRENCY = (1, 16, 64)
MODELS: dict[str, tuple[int, ...]] = {"small": (256, 256), "heavy": (1024, 1024, 1024)}
MODES = ("batching on", "batching off")
BATCHING_ON: dict[str, Any] = {"max_batch_size": 64, "max_queue_delay_ms": 2, "max_queue_size": 8192}
BATCHING_OFF: dict[str, Any] = {"enabled": False, "max_queue_size": 8192}
RAW_BATCH = 64
# Targets, at concurrency 64 with batching on: (fraction of ideal, p99 limit in ms or None).
TARGETS: dict[str, tuple[float, float | None]] = {"heavy": (0.80, None), "small": (0.60, 50.0)}
# Other servers on the small MLP at concurrency 64, same machine and pinning (rps, p99 ms).
REFERENCE: list[tuple[str, float, float | None]] = [
    ("Seldon MLServer", 1231, 160.0),
    ("KServe", 1131, None),
    ("LitServe", 691, None),
    ("BentoML", 431, None),
    ("naive Starlette calling ORT per request", 4450, None),
    ("bare Starlette constant", 16151, None),
]
CLIENT_BOUND_CPU = 0.90
"""A cell whose client used at least this share of its core is flagged: the client may be the
limit there, not the server."""
STALLED_CPU = 0.85
"""The bare endpoint at concurrency 16 or more below this share of its core is flagged stalled."""
NOISY_CPU = 0.10
"""A cell during which other processes used at least this share of a core is flagged noisy."""


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def infer_body(row: list[float]) -> bytes:
    """One Open Inference Protocol V2 request: a single row of 30 FP32 features."""
    import orjson

    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, N_FEATURES],
                                     "data": row}]})


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def served_name(model: str, mode: str) -> str:
    return model if mode == "batching on" else f"{model}-nobatch"


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def all_cpu_seconds() -> dict[int, float]:
    """CPU seconds of every process on the machine, by pid (processes that vanish are skipped)."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = proc_cpu_seconds(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


def this_script() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve())]


# ---------------------------------------------------------------------------------------------
# --_driver: the load driver (runs pinned to the client core)
# ---------------------------------------------------------------------------------------------


@dataclass
class DriverConfig:
    port: int
    path: str
    concurrency: int
    warmup_s: float
    duration_s: float
    seed: int = 11
    distinct_bodies: int = 512


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def _drive(cfg: DriverConfig) -> dict[str, Any]:
    from inferlane.demo.loadgen import build_request, run_load
    from inferlane.demo.models import synthetic_transactions

    x, _ = synthetic_transactions(cfg.distinct_bodies, seed=cfg.seed)
    raws = [build_request(HOST, cfg.port, cfg.path, infer_body(row)) for row in x.tolist()]

    def batch(n: int) -> list[bytes]:
        return [raws[i % len(raws)] for i in range(n)]

    c = cfg.concurrency
    # Warm-up: short bursts until warmup_s has passed; the last burst's rate sizes the measured
    # run, so every cell measures for about duration_s whatever its throughput.
    rate = 0.0
    warm_requests = 0
    t_end = time.perf_counter() + cfg.warmup_s
    n = max(4 * c, 32)
    while True:
        res = await run_load(HOST, cfg.port, batch(n), c)
        warm_requests += len(res.latencies)
        rate = res.rps
        left = t_end - time.perf_counter()
        if left <= 0:
            break
        n = max(4 * c, int(rate * min(0.5, left)))
    _emit({"event": "start"})
    n = max(10 * c, int(rate * cfg.duration_s))
    cpu0 = time.process_time()
    res = await run_load(HOST, cfg.port, batch(n), c)
    cpu = time.process_time() - cpu0
    lat_ms = sorted(v * 1e3 for v in res.latencies)
    return {
        "event": "done", "requests": len(res.latencies), "seconds": res.seconds, "rps": res.rps,
        "p50_ms": res.percentile(50) * 1e3, "p99_ms": res.percentile(99) * 1e3,
        "mean_ms": sum(lat_ms) / len(lat_ms) if lat_ms else float("nan"),
        "max_ms": lat_ms[-1] if lat_ms else float("nan"),
        "statuses": {str(k): v for k, v in sorted(res.statuses.items())},
        "errors": len(res.latencies) - res.ok, "client_cpu_s": cpu,
        "warmup_requests": warm_requests,
    }


def driver_main(cfg: DriverConfig) -> int:
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            doc = runner.run(_drive(cfg))
    except Exception as e:  # report, never hang the orchestrator
        doc = {"event": "done", "exception": f"{type(e).__name__}: {e}"}
    _emit(doc)
    return 0


# ---------------------------------------------------------------------------------------------
# --_bare: the Python HTTP floor (a Starlette app that returns a constant body)
# ---------------------------------------------------------------------------------------------

BARE_RESPONSE = (b'{"model_name":"small","model_version":"1","outputs":[{"name":"y",'
                 b'"datatype":"FP32","shape":[1,2],"data":[0.4997,0.5003]}]}')


def bare_main(port: int) -> int:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        await request.body()  # read the request like a real endpoint, then ignore it
        return Response(BARE_RESPONSE, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"]),
                            Route("/v2/health/ready", ready, methods=["GET"])])
    uvicorn.run(app, host=HOST, port=port, loop="uvloop", http="httptools", access_log=False,
                log_level="warning", server_header=False)
    return 0


# ---------------------------------------------------------------------------------------------
# --_raw: raw ONNX Runtime throughput, in-process, one thread, data in memory
# ---------------------------------------------------------------------------------------------


def raw_main(spec: dict[str, Any]) -> int:
    import numpy as np
    import onnxruntime as ort

    seconds = float(spec["seconds"])
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for name, path in spec["models"].items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        result: dict[str, float] = {}
        for batch in (RAW_BATCH, 1):
            x = rng.standard_normal((batch, N_FEATURES)).astype(np.float32)
            feed = {"x": x}
            for _ in range(20):
                sess.run(["y"], feed)
            runs = 0
            t0 = time.perf_counter()
            deadline = t0 + seconds
            while True:
                sess.run(["y"], feed)
                runs += 1
                now = time.perf_counter()
                if now >= deadline:
                    break
            result[f"rows_per_s_b{batch}"] = runs * batch / (now - t0)
            result[f"ms_per_run_b{batch}"] = (now - t0) / runs * 1e3
        out[name] = result
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------------------------


@dataclass
class Cell:
    section: str
    model: str
    mode: str
    concurrency: int
    rps: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_batch: float | None = None
    forward_ms: float | None = None
    """Mean time per forward pass as the server measured it (inferlane_forward_seconds)."""
    errors: int = 0
    requests: int = 0
    seconds: float = 0.0
    server_cpu: float = float("nan")
    """Share of its core the server process used during the measured run."""
    client_cpu: float = float("nan")
    """Share of its core the load driver used during the measured run."""
    other_cpu: float = float("nan")
    """CPU every other process on the machine used during the measured run (share of one core):
    anything well above zero means the cell shared the machine with foreign work."""
    retransmits: int = 0
    """TCP segments the machine retransmitted during the measured run (loopback drops)."""
    statuses: dict[str, int] = field(default_factory=dict)
    exception: str | None = None

    @property
    def client_bound(self) -> bool:
        return self.client_cpu >= CLIENT_BOUND_CPU

    @property
    def noisy(self) -> bool:
        return self.other_cpu >= NOISY_CPU

    @property
    def stalled(self) -> bool:
        """The bare endpoint under concurrent load always saturates its core; when it did not,
        something outside both processes held them up (seen as TCP retransmits, or a stall)."""
        return self.retransmits > 0 or (self.section == "HTTP floor" and self.concurrency >= 16
                                        and self.server_cpu < STALLED_CPU)

    @property
    def suspect(self) -> bool:
        return self.noisy or self.stalled or self.exception is not None


@dataclass
class Options:
    warmup_s: float
    duration_s: float
    raw_s: float
    server_core: int
    client_core: int
    concurrency: tuple[int, ...]
    py_spy: Path | None
    verbose: bool
    wait_quiet_s: float = 0.0
    retry_noisy: int = 0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def model_totals(port: int, model: str) -> dict[str, float]:
    """Running totals for one model from the server's /metrics: ``batch_size_sum`` and
    ``batch_size_count`` (rows and batches) and ``forward_seconds_sum`` (time in forward passes,
    as the event loop sees it: merge, run, split and the hand-off to and from the thread)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    totals = dict.fromkeys(("batch_size_sum", "batch_size_count", "forward_seconds_sum"), 0.0)
    pattern = re.compile(r'^inferlane_(batch_size_sum|batch_size_count|forward_seconds_sum)'
                         r'\{([^}]*)\} (\S+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m is not None and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))).get("model") == model:
            totals[m.group(1)] += float(m.group(3))
    return totals


def tcp_retransmits() -> int:
    """The machine's TCP segments retransmitted so far (RetransSegs in /proc/net/snmp)."""
    with open("/proc/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("RetransSegs")])


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)]


def wait_quiet(opts: Options, server_pid: int | None = None) -> None:
    """With --wait-quiet, wait (up to that long) until the rest of the machine is idle: other
    processes below NOISY_CPU of a core over one second."""
    deadline = time.monotonic() + opts.wait_quiet_s
    ours = {os.getpid(), server_pid}
    waited = False
    while time.monotonic() < deadline:
        before, t0 = all_cpu_seconds(), time.perf_counter()
        time.sleep(1.0)
        after, wall = all_cpu_seconds(), time.perf_counter() - t0
        busy = sum(v - before.get(pid, 0.0) for pid, v in after.items() if pid not in ours) / wall
        if busy < NOISY_CPU:
            if waited:
                log("the machine is quiet again")
            return
        if not waited:
            log(f"other processes use {busy:.0%} of a core; waiting up to "
                f"{opts.wait_quiet_s:g} s for them to finish")
            waited = True
    if waited:
        log("still busy; measuring anyway (the cell will be flagged noisy?)")


def measure_cell(opts: Options, proto: Cell, port: int, path: str, server_pid: int,
                 profile_to: Path | None, batch_model: str | None) -> Cell:
    """Measure one cell; with --retry-noisy, measure it again while it looks disturbed."""
    for attempt in range(opts.retry_noisy + 1):
        cell = replace(proto)
        run_driver(opts, port, path, server_pid, cell, profile_to, batch_model)
        if not cell.suspect or attempt == opts.retry_noisy:
            break
        log(f"the cell looks disturbed (other processes {cell.other_cpu:.0%} of a core, server "
            f"{cell.server_cpu:.0%}, {cell.retransmits} TCP retransmits); measuring it again "
            f"({attempt + 1} of {opts.retry_noisy})")
    return cell


def run_driver(opts: Options, port: int, path: str, server_pid: int, cell: Cell,
               profile_to: Path | None = None, batch_model: str | None = None) -> None:
    """Run one measured cell through a pinned driver subprocess; fills ``cell`` in place.

    With ``batch_model``, the mean batch size comes from the server's /metrics, read when the
    measured run starts and when it ends (so the warm-up is not counted)."""
    cfg = DriverConfig(port=port, path=path, concurrency=cell.concurrency,
                       warmup_s=opts.warmup_s, duration_s=opts.duration_s)
    wait_quiet(opts, server_pid)
    cmd = [*pin(opts.client_core), *this_script(), "--_driver", json.dumps(asdict(cfg))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(opts.warmup_s * 4 + opts.duration_s * 4 + 120, proc.kill)
    watchdog.start()
    spy: subprocess.Popen[bytes] | None = None
    cpu0 = t0 = 0.0
    others0: dict[int, float] = {}
    totals0: dict[str, float] = {}
    retrans0 = 0
    done: dict[str, Any] = {"exception": "the driver exited without a result"}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            doc = json.loads(line)
            if doc["event"] == "start":
                others0 = all_cpu_seconds()
                cpu0, t0 = proc_cpu_seconds(server_pid), time.perf_counter()
                if profile_to is not None:
                    spy = start_py_spy(opts, server_pid, profile_to)
                retrans0 = tcp_retransmits()
                if batch_model is not None:
                    totals0 = model_totals(port, batch_model)
            elif doc["event"] == "done":
                if "exception" not in doc:
                    wall = time.perf_counter() - t0
                    cell.server_cpu = (proc_cpu_seconds(server_pid) - cpu0) / wall
                    ours = {server_pid, proc.pid, os.getpid(), spy.pid if spy else -1}
                    others = sum(v - others0.get(pid, 0.0)
                                 for pid, v in all_cpu_seconds().items() if pid not in ours)
                    cell.other_cpu = others / wall
                    cell.retransmits = tcp_retransmits() - retrans0
                    if batch_model is not None:
                        d = {k: v - totals0[k] for k, v in model_totals(port, batch_model).items()}
                        if d["batch_size_count"] > 0:
                            cell.mean_batch = d["batch_size_sum"] / d["batch_size_count"]
                            cell.forward_ms = d["forward_seconds_sum"] / d["batch_size_count"] * 1e3
                done = doc
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if spy is not None:
        spy.wait(timeout=opts.duration_s + 60)
    if "exception" in done:
        cell.exception = done["exception"]
        cell.errors = max(cell.errors, 1)
        return
    cell.rps, cell.p50_ms, cell.p99_ms = done["rps"], done["p50_ms"], done["p99_ms"]
    cell.errors, cell.requests, cell.seconds = done["errors"], done["requests"], done["seconds"]
    cell.statuses = done["statuses"]
    cell.client_cpu = done["client_cpu_s"] / done["seconds"] if done["seconds"] else float("nan")


def start_py_spy(opts: Options, pid: int, out: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    cmd = [*pin(opts.client_core), py_spy, "record", "--pid", str(pid), "--format", "raw",
           "--rate", "250", "--nonblocking", "--threads",
           "--duration", str(max(1, int(opts.duration_s) - 1)), "--output", str(out)]
    log(f"py-spy: {shlex.join(cmd)}")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Where a sample's time goes: the innermost frame whose file matches one of these (checked in
# order) names the component. py-spy shortens paths to "package/module.py".
COMPONENTS: list[tuple[str, str]] = [
    ("onnxruntime/", "ONNX Runtime session.run"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("inferlane/core/metrics.py", "metrics (prometheus_client)"),
    ("inferlane/lanes/online.py", "online lane (incl. metrics)"),
    ("inferlane/transport/http/codec.py", "inferlane codec (V2 JSON parse/encode)"),
    ("inferlane/core/batcher.py", "inferlane batcher"),
    ("inferlane/core/clock.py", "inferlane batcher"),
    ("inferlane/core/model.py", "inferlane model (checks, forward glue)"),
    ("inferlane/core/runtimes/", "inferlane runtime adapter"),
    ("inferlane/transport/http/app.py", "inferlane HTTP handler (app.py)"),
    ("numpy/", "numpy"),
    ("starlette/", "Starlette (routing, middleware, responses)"),
    ("uvicorn/", "uvicorn (httptools protocol)"),
    ("concurrent/futures/", "thread pool / futures"),
    ("threading.py", "thread pool / futures"),
    ("asyncio/runners.py", "event loop (uvloop, native: epoll, sockets, callbacks)"),
    ("asyncio/", "asyncio (Python part)"),
]


def summarize_py_spy(raw: Path, top: int = 12) -> list[str]:
    """Shares of samples per thread, per component and per function (self and, for inferlane's
    own functions, inclusive) from py-spy's raw (collapsed stacks) output."""
    if not raw.is_file():
        return [f"(no py-spy output at {raw})"]
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    components: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        thread, *frames = stack.split(";")
        total += n
        threads[re.sub(r"^thread \(\d+\): ", "", thread)] += n
        components[_component(frames)] += n
        if frames:
            own[_frame(frames[-1])] += n
        for f in {_frame(f) for f in frames if "inferlane/" in f and "cli/" not in f
                  and "__main__" not in f and "server/app.py" not in f}:
            ours[f] += n
    if not total:
        return ["(py-spy recorded no samples)"]

    def block(title: str, counts: Counter[str], limit: int | None = None) -> list[str]:
        return [title] + [f"  {n / total:6.1%}  {k}" for k, n in counts.most_common(limit)]

    return [f"{total} samples of non-idle threads (py-spy --nonblocking)",
            *block("by thread:", threads),
            *block("by component (innermost frame that names one):", components),
            *block(f"top {top} functions by self time (top of the stack):", own, top),
            *block(f"top {top} inferlane functions by inclusive time:", ours, top)]


def _component(frames: list[str]) -> str:
    if not frames:
        return "no Python frame (native code, waiting for the GIL)"
    for frame in reversed(frames):
        for needle, name in COMPONENTS:
            if needle in frame:
                return name
    return "other Python"


def _frame(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (path/file.py)' so one function is one entry."""
    m = re.match(r"^(.*) \((.*?):\d+\)$", frame)
    if m is None:
        return frame
    return f"{m.group(1)} ({m.group(2)})"


def build_repository(repo: Path) -> None:
    from inferlane.demo.models import write_mlp_model

    for model, hidden in MODELS.items():
        for mode in MODES:
            write_mlp_model(repo, served_name(model, mode), hidden, threads=1,
                            batching=BATCHING_ON if mode == "batching on" else BATCHING_OFF)


def measure_raw(opts: Options, repo: Path) -> dict[str, dict[str, float]]:
    spec = {"seconds": opts.raw_s,
            "models": {m: str(repo / m / "1" / "model.onnx") for m in MODELS}}
    out = subprocess.run([*pin(opts.server_core), *this_script(), "--_raw", json.dumps(spec)],
                         check=True, capture_output=True, text=True)
    result: dict[str, dict[str, float]] = json.loads(out.stdout)
    return result


def measure_bare(opts: Options, workdir: Path) -> list[Cell]:
    from inferlane.demo.serverproc import free_port, stop_server, wait_ready

    port = free_port()
    with open(workdir / "bare.log", "wb") as logf:
        proc = subprocess.Popen([*pin(opts.server_core), *this_script(), "--_bare", str(port)],
                                stdout=logf, stderr=subprocess.STDOUT)
    cells = []
    try:
        wait_ready(port, proc, timeout=60)
        for c in opts.concurrency:
            profile = None
            if opts.py_spy is not None and c == max(opts.concurrency):
                profile = opts.py_spy / f"bare-c{c}.txt"
            log(f"bare Starlette endpoint, concurrency {c}")
            cells.append(measure_cell(opts, Cell("HTTP floor", "-", "bare constant", c), port,
                                      infer_path("small"), proc.pid, profile, None))
    finally:
        stop_server(proc)
    return cells


def measure_inferlane(opts: Options, repo: Path, workdir: Path) -> list[Cell]:
    from inferlane.demo.serverproc import free_port, start_server, stop_server, wait_ready

    port = free_port()
    proc = start_server(repo, port, prefix=pin(opts.server_core), log_path=workdir / "server.log")
    cells = []
    try:
        wait_ready(port, proc, timeout=180)
        for model in MODELS:
            for mode in MODES:
                name = served_name(model, mode)
                for c in opts.concurrency:
                    profile = None
                    if opts.py_spy is not None and c == max(opts.concurrency):
                        profile = opts.py_spy / f"inferlane-{name}-c{c}.txt"
                    log(f"inferlane {model} ({mode}), concurrency {c}")
                    cells.append(measure_cell(opts, Cell("inferlane", model, mode, c), port,
                                              infer_path(name), proc.pid, profile, name))
                    if proc.poll() is not None:
                        raise RuntimeError(f"the server exited with code {proc.returncode}; "
                                           f"see {workdir / 'server.log'}")
    finally:
        code = stop_server(proc)
        if code not in (0, None):
            log(f"the server exited with code {code}")
    return cells


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _f(v: float | None, fmt: str, width: int) -> str:
    if v is None or v != v:  # None or NaN
        return f"{'-':>{width}}"
    return f"{v:{width}{fmt}}"


def format_cells(cells: list[Cell]) -> list[str]:
    head = (f"{'server':<11} {'model':<6} {'mode':<13} {'conc':>4} {'rps':>8} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'mean batch':>10} {'fwd ms':>7} {'errors':>6} {'srv cpu':>7} "
            f"{'cli cpu':>7} {'other':>6}")
    lines = [head, "-" * len(head)]
    for c in cells:
        flags = [name for name, on in (("client-bound?", c.client_bound), ("noisy?", c.noisy),
                                       ("stalled?", c.stalled)) if on]
        lines.append(
            f"{c.section:<11} {c.model:<6} {c.mode:<13} {c.concurrency:>4} {_f(c.rps, '.0f', 8)} "
            f"{_f(c.p50_ms, '.2f', 8)} {_f(c.p99_ms, '.2f', 8)} {_f(c.mean_batch, '.1f', 10)} "
            f"{_f(c.forward_ms, '.2f', 7)} {c.errors:>6} {_f(c.server_cpu * 100, '.0f', 6)}% "
            f"{_f(c.client_cpu * 100, '.0f', 6)}% {_f(c.other_cpu * 100, '.0f', 5)}%"
            + "".join(f"  {f}" for f in flags))
        if c.exception:
            lines.append(f"    ! {c.exception}")
    return lines


def client_headroom(cells: list[Cell]) -> list[str]:
    """Whether the load driver could have been the limit anywhere."""
    lines = []
    fastest = max((c for c in cells if c.client_cpu > 0), key=lambda c: c.rps, default=None)
    if fastest is not None:
        capacity = fastest.rps / fastest.client_cpu
        lines.append(f"client headroom: at {fastest.rps:,.0f} rps ({fastest.section}, "
                     f"c={fastest.concurrency}) the driver used {fastest.client_cpu:.0%} of its "
                     f"core, i.e. about {capacity:,.0f} rps at 100%")
    bound = [c for c in cells if c.client_bound]
    if bound:
        lines.append(f"  {len(bound)} cell(s) flagged client-bound?: the driver used >= "
                     f"{CLIENT_BOUND_CPU:.0%} of its core there, so the server may have more to give")
    else:
        lines.append(f"  no cell had the driver at >= {CLIENT_BOUND_CPU:.0%} of its core: "
                     "it was not the limit in any cell")
    noisy = [c for c in cells if c.noisy]
    if noisy:
        lines.append(f"  {len(noisy)} cell(s) flagged noisy?: other processes used >= "
                     f"{NOISY_CPU:.0%} of a core during them; re-run on a quiet machine")
    stalled = [c for c in cells if c.stalled]
    if stalled:
        lines.append(f"  {len(stalled)} cell(s) flagged stalled?: TCP retransmits during the "
                     f"cell, or the bare endpoint below {STALLED_CPU:.0%} of its core; re-run")
    return lines


def compute_ideal(cells: list[Cell], raw: dict[str, dict[str, float]],
                  top_c: int) -> list[dict[str, Any]]:
    bare = next((c for c in cells if c.section == "HTTP floor" and c.concurrency == top_c), None)
    rows = []
    for model in MODELS:
        got = next((c for c in cells if c.section == "inferlane" and c.model == model
                    and c.mode == "batching on" and c.concurrency == top_c), None)
        if bare is None or got is None or not bare.rps or bare.rps != bare.rps:
            continue
        s_row = 1.0 / raw[model][f"rows_per_s_b{RAW_BATCH}"]
        s_req = 1.0 / bare.rps
        ideal = 1.0 / (s_row + s_req)
        fraction = got.rps / ideal
        min_fraction, p99_limit = TARGETS[model]
        ok = fraction >= min_fraction and got.errors == 0 and (
            p99_limit is None or got.p99_ms < p99_limit)
        target = f">= {min_fraction:.0%} of ideal" + (
            f", p99 < {p99_limit:.0f} ms" if p99_limit is not None else "")
        rows.append({"model": model, "concurrency": top_c, "raw_us_per_row": s_row * 1e6,
                     "bare_us_per_request": s_req * 1e6, "ideal_rps": ideal,
                     "achieved_rps": got.rps, "p99_ms": got.p99_ms, "fraction": fraction,
                     "target": target, "pass": ok,
                     "bare_client_bound": bare.client_bound, "noisy": bare.suspect or got.suspect})
    return rows


def report(opts: Options, cells: list[Cell], raw: dict[str, dict[str, float]],
           ideal: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out: list[str] = []
    out.append(f"inferlane online benchmark - {meta['started']} - {meta['host']} "
               f"({meta['cpus']} CPUs, load average at start {meta['load_start']})")
    out.append(f"server pinned to core {opts.server_core}, load driver pinned to core "
               f"{opts.client_core}; client: inferlane.demo.loadgen.run_load (asyncio HTTP/1.1 "
               f"keep-alive, uvloop), one request in flight per connection")
    out.append(f"source: {meta['source']}")
    out.append(f"per cell: {opts.warmup_s:g} s warm-up, then about {opts.duration_s:g} s "
               f"measured; each request is one row of {N_FEATURES} FP32 features (V2 JSON)")
    out.append("")
    out.extend(format_cells(cells))
    out.extend(client_headroom(cells))
    out.append("")
    out.append(f"raw ONNX Runtime, in-process, 1 thread, pinned to core {opts.server_core}, "
               f"data in memory ({opts.raw_s:g} s per figure):")
    out.append(f"  {'model':<6} {'rows/s @b64':>12} {'us/row @b64':>12} {'ms/batch @b64':>14} "
               f"{'rows/s @b1':>11}")
    for model in MODELS:
        r = raw[model]
        out.append(f"  {model:<6} {r['rows_per_s_b64']:>12.0f} {1e6 / r['rows_per_s_b64']:>12.2f} "
                   f"{r['ms_per_run_b64']:>14.3f} {r['rows_per_s_b1']:>11.0f}")
    out.append("")
    if ideal:
        top_c = ideal[0]["concurrency"]
        out.append(f"ideal at concurrency {top_c}, batching on: 1 / (raw s/row @b64 + bare-endpoint "
                   f"s/request @c{top_c})")
        out.append(f"  {'model':<6} {'us/row':>8} {'us/req':>8} {'ideal rps':>10} "
                   f"{'achieved':>9} {'fraction':>9} {'p99 ms':>8}  target")
        for d in ideal:
            verdict = "PASS" if d["pass"] else "MISS"
            if d["noisy"]:
                verdict += " (disturbed inputs: re-run before trusting this)"
            out.append(f"  {d['model']:<6} {d['raw_us_per_row']:>8.2f} "
                       f"{d['bare_us_per_request']:>8.2f} {d['ideal_rps']:>10.0f} "
                       f"{d['achieved_rps']:>9.0f} {d['fraction']:>9.1%} {d['p99_ms']:>8.2f}  "
                       f"{d['target']}: {verdict}")
        if any(d["bare_client_bound"] for d in ideal):
            out.append("  note: the client was near 100% of its core on the bare endpoint, so the "
                       "HTTP floor (and the ideal) may be understated")
        out.append("")
    out.append("reference, measured earlier on this machine, not this run "
               "(small MLP, concurrency 64, same pinning):")
    for name, rps, p99 in REFERENCE:
        out.append(f"  {name:<42} {rps:>7,.0f} rps" + (f"  (p99 {p99:.0f} ms)" if p99 else ""))
    out.append("")
    out.append(f"command: {meta['command']}")
    out.append(f"took {meta['elapsed_s']:.0f} s; load average at end {meta['load_end']}")
    return "\n".join(out)


def source_state() -> str:
    """inferlane's version and, in a git checkout, the commit and whether src/ has edits."""
    from inferlane import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root,
                               check=True, capture_output=True, text=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return f"inferlane {__version__}"
    edits = f" + uncommitted edits in {len(dirty)} file(s) under src/" if dirty else ""
    return f"inferlane {__version__}, commit {commit}{edits}"


def orchestrate(args: argparse.Namespace, opts: Options) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    for core in (opts.server_core, opts.client_core):
        if core not in cpus:
            sys.exit(f"core {core} is not available to this process (cores: {cpus})")
    if opts.server_core == opts.client_core:
        sys.exit("--server-core and --client-core must differ")
    if shutil.which("taskset") is None:
        sys.exit("taskset (util-linux) is required to pin the processes")
    # The orchestrator only waits and reads /proc and /metrics between and around cells; keep
    # even that off the server core.
    os.sched_setaffinity(0, {opts.client_core})
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "host": os.uname().nodename, "cpus": os.cpu_count(),
        "load_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "command": shlex.join(sys.orig_argv), "source": source_state(),
    }
    if opts.py_spy is not None:
        opts.py_spy.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inferlane-bench-") as tmp:
        work = Path(tmp)
        repo = work / "models"
        log(f"writing the model repository to {repo}")
        build_repository(repo)
        wait_quiet(opts)
        log("raw ONNX Runtime throughput")
        raw = measure_raw(opts, repo)
        cells = measure_bare(opts, work)
        cells += measure_inferlane(opts, repo, work)
        if opts.verbose:
            sys.stderr.write((work / "server.log").read_text(errors="replace"))
    meta["elapsed_s"] = time.time() - started
    meta["load_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    ideal = compute_ideal(cells, raw, max(opts.concurrency))
    text = report(opts, cells, raw, ideal, meta)
    print(text)
    if opts.py_spy is not None:
        print()
        for prof in sorted(opts.py_spy.glob("*.txt"), key=lambda p: p.stat().st_mtime):
            print(f"py-spy profile of the server process: {prof}")
            print("\n".join("  " + line for line in summarize_py_spy(prof)))
    if args.json_out is not None:
        doc = {**meta, "options": {k: str(v) if isinstance(v, Path) else v
                                   for k, v in asdict(opts).items()},
               "client": "inferlane.demo.loadgen.run_load (asyncio, uvloop)",
               "cells": [asdict(c) | {"client_bound": c.client_bound, "noisy": c.noisy,
                                       "stalled": c.stalled} for c in cells],
               "raw_onnx": raw, "ideal": ideal,
               "reference": [{"server": n, "rps": r, "p99_ms": p} for n, r, p in REFERENCE],
               "table": text}
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json_out}")
    failed = any(c.exception for c in cells)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/online.py",
        description=(
            "Benchmark inferlane's online lane on one pinned core. Builds two random-weight MLPs "
            "(small 30-256-256-2, heavy 30-1024-1024-1024-2), each with dynamic batching on and "
            "off, serves them with `inferlane serve` pinned to --server-core, and drives "
            "single-row V2 JSON requests from a load driver pinned to --client-core at "
            "concurrency 1, 16 and 64. Baselines in the same run: a bare Starlette endpoint "
            "returning a constant body (the Python HTTP floor) and raw in-process ONNX Runtime "
            "at batch 64. Prints one table, the ideal throughput and the pass/miss targets."),
        epilog="See benchmarks/README.md for what each row and column means.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 0.5 s warm-up and 1.5 s per cell (under a minute in all)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per cell (default 10, or 1.5 with --quick)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of warm-up before each cell (default 2, or 0.5 with --quick)")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY),
                   help="concurrency levels: connections, one request in flight each (default: 1 16 64)")
    p.add_argument("--server-core", type=int, default=1, help="core the servers run on (default: 1)")
    p.add_argument("--client-core", type=int, default=0, help="core the load driver runs on (default: 0)")
    p.add_argument("--json-out", type=Path, default=None, metavar="PATH",
                   help="also write the results (and the table text) as JSON to PATH")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                   help="record the server process with py-spy (raw collapsed stacks into DIR) "
                        "during every highest-concurrency cell and print where its time goes; "
                        "py-spy runs on the client core and slightly perturbs those cells")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each cell, wait up to SECONDS for other processes on the machine "
                        "to go idle (below 10%% of a core); default 0: measure at once")
    p.add_argument("--retry-noisy", type=int, default=0, metavar="N",
                   help="measure a cell again, up to N times, when it looks disturbed: other "
                        "processes used 10%% of a core or more, TCP retransmits, or a stalled "
                        "bare endpoint (default 0)")
    p.add_argument("--verbose", action="store_true", help="print the server's log at the end")
    p.add_argument("--_driver", help=argparse.SUPPRESS)
    p.add_argument("--_bare", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_raw", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._driver is not None:
        return driver_main(DriverConfig(**json.loads(args._driver)))
    if args._bare is not None:
        return bare_main(args._bare)
    if args._raw is not None:
        return raw_main(json.loads(args._raw))
    opts = Options(
        warmup_s=args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0),
        duration_s=args.duration if args.duration is not None else (1.5 if args.quick else 10.0),
        raw_s=0.5 if args.quick else 2.0,
        server_core=args.server_core, client_core=args.client_core,
        concurrency=tuple(args.concurrency), py_spy=args.py_spy, verbose=args.verbose,
        wait_quiet_s=args.wait_quiet, retry_noisy=args.retry_noisy)
    return orchestrate(args, opts)


if __name__ == "__main__":
    sys.exit(main())
