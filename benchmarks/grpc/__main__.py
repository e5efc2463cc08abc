"""``python -m benchmarks.grpc``: the same ``inferlane serve`` over gRPC and over REST, in the same run.

    .venv/bin/python -m benchmarks.grpc --quick     # smoke run, 1 s cells (about 30 s)
    .venv/bin/python -m benchmarks.grpc             # 10 s cells after 2 s of warm-up (about 2 minutes)

The small and heavy MLPs of benchmarks.online (batching on, default settings) are served by one
``inferlane serve --grpc-port`` pinned to the server core. Per model and concurrency (1 and 64), a
REST cell (wrk, one-row V2 JSON bodies) then a gRPC cell (h2load, one-row ModelInferRequest in raw
contents), each a closed loop from one thread pinned to the client core. Before the load, one call per
transport checks that both answer the same bytes. The target: gRPC throughput at least REST's, per
cell pair. Exit status 1 when a cell broke (a tool failed, an error answer, a gRPC error hidden behind
HTTP/2's 200, which the server's own count of answered requests reveals); a missed target is
reported, not a failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import command_line, load_average, logger, machine_line, source_state
from benchmarks.grpc.h2load import INFER, LIVE, H2loadFailed, grpc_frame, h2load_command, infer_request, run_h2load
from benchmarks.online.config import BATCHING_ON, MODELS, N_FEATURES
from benchmarks.online.machine import batch_totals, others_cpu, pin
from benchmarks.online.models import model_yaml, request_bodies
from benchmarks.online.wrk import WrkFailed, WrkResult, lua_script, run_wrk, wrk_command
from inferlane.demo.models import synthetic_transactions
from inferlane.testing import (
    LOOPBACK,
    Column,
    ServiceError,
    all_cpu_seconds,
    format_table,
    free_port,
    log_tail,
    num,
    pct,
    process_tree,
    ratio,
    serve,
    tree_cpu_seconds,
)

log = logger("grpc-bench")
CONCURRENCY = (1, 64)
TRANSPORTS = ("rest", "grpc")
FLOOR = "-"
"""The model column of the floor cells: an empty call (REST GET /v2/health/live, gRPC ServerLive) at c=64,
what each transport costs per request before any work."""
NOISY = 0.1
"""A cell during which other processes used this share of a core or more is flagged: re-run it."""
CLIENT_BOUND = 0.9
"""A cell whose load generator used this share of its core or more is flagged: it may be the limit."""


@dataclass(frozen=True)
class Cell:
    transport: str
    model: str
    concurrency: int
    load: WrkResult | None
    server_cpu_s: float = float("nan")
    wall_s: float = float("nan")
    batch: float = float("nan")
    """Rows per forward pass the server ran during the cell (from its /metrics)."""
    other_cpu_s: float = float("nan")
    """CPU seconds every other process on the machine used during the cell."""
    error: str | None = None

    @property
    def rps(self) -> float:
        return self.load.rps if self.load else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.grpc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 s cells, no warm-up beyond the first second")
    p.add_argument("--duration", type=int, default=None, help="measured seconds per cell (default 10; 1 quick)")
    p.add_argument("--warmup", type=int, default=None, help="seconds of load before each cell (default 2; 1 quick)")
    p.add_argument("--server-core", type=int, default=1, help="core the server is pinned to (default 1)")
    p.add_argument("--client-core", type=int, default=0, help="core of wrk and h2load (default 0)")
    args = p.parse_args(argv)
    args.duration = args.duration or (1 if args.quick else 10)
    args.warmup = args.warmup or (1 if args.quick else 2)
    return args


def write_repository(repo: Path) -> None:
    """The MLPs of benchmarks.online with batching on, as ``small`` and ``heavy``."""
    import yaml

    from inferlane.demo.models import mlp_onnx_bytes

    for model, hidden in MODELS.items():
        (repo / model / "1").mkdir(parents=True)
        (repo / model / "1" / "model.onnx").write_bytes(mlp_onnx_bytes(hidden))
        (repo / model / "model.yaml").write_text(yaml.safe_dump(model_yaml(BATCHING_ON), sort_keys=False))


def answered(port: int, model: str) -> float:
    """Requests the server answered 200 for ``model`` so far (``inferlane_requests_total`` on /metrics)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("inferlane_requests_total{") and f'model="{model}"' in line and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def same_answer(http_port: int, grpc_port: int, model: str, row: np.ndarray) -> None:
    """One call per transport for ``row``: the outputs must be the same bytes (else the run is broken)."""
    import grpc
    import httpx
    import orjson

    from inferlane.transport.grpc.proto import grpc_service_pb2 as pb

    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, N_FEATURES],
                                     "data": row.tolist()}]})
    doc = httpx.post(f"http://{LOOPBACK}:{http_port}/v2/models/{model}/infer", content=body, timeout=30).json()
    rest = np.asarray(doc["outputs"][0]["data"], np.float32)
    with grpc.insecure_channel(f"{LOOPBACK}:{grpc_port}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(INFER)
        answer = pb.ModelInferResponse.FromString(call(infer_request(model, row), timeout=30))
    over_grpc = np.frombuffer(answer.raw_output_contents[0], np.float32)
    if rest.tobytes() != over_grpc.tobytes():
        raise RuntimeError(f"{model}: REST answered {rest.tolist()}, gRPC {over_grpc.tolist()}")


def measure(transport: str, model: str, concurrency: int, ports: tuple[int, int], server_pid: int,
            args: argparse.Namespace, work: Path) -> Cell:
    http_port, grpc_port = ports
    client = pin(args.client_core)
    timeout = args.duration + args.warmup + 60

    floor = model == FLOOR

    def load(seconds: int) -> WrkResult:
        if transport == "rest":
            path, script = ("/v2/health/live", "live.lua") if floor else (f"/v2/models/{model}/infer", "load.lua")
            url = f"http://{LOOPBACK}:{http_port}{path}"
            return run_wrk(wrk_command(url, concurrency, seconds, work / script, client), timeout)
        body, method = (work / "live.grpc", LIVE) if floor else (work / f"{model}.grpc", INFER)
        return run_h2load(h2load_command(grpc_port, concurrency, seconds, body, work / "h2load.log", client, method),
                          work / "h2load.log", timeout)

    try:
        load(args.warmup)
        before_ok = 0.0 if floor else answered(http_port, model)
        rows0 = batch_totals(http_port, model)
        everyone0, cpu0, t0 = all_cpu_seconds(), tree_cpu_seconds(server_pid), time.perf_counter()
        result = load(args.duration)
        wall, cpu = time.perf_counter() - t0, tree_cpu_seconds(server_pid) - cpu0
        other = others_cpu(everyone0, all_cpu_seconds(), {os.getpid(), *process_tree(server_pid)})
        ok = result.requests if floor else answered(http_port, model) - before_ok
        rows1 = batch_totals(http_port, model)
    except (WrkFailed, H2loadFailed, OSError) as e:
        return Cell(transport, model, concurrency, None, error=str(e))
    error = None
    if result.non_2xx or result.socket_errors > 3:
        error = f"{result.non_2xx} error answers, {result.socket_errors} socket errors"
    elif ok < result.requests - concurrency:  # calls still in flight when the tool stopped may be uncounted
        error = f"the server answered {ok:.0f} requests with 200 but the client counted {result.requests}"
    batch = float("nan")
    if rows0 is not None and rows1 is not None and rows1[1] > rows0[1]:
        batch = (rows1[0] - rows0[0]) / (rows1[1] - rows0[1])
    return Cell(transport, model, concurrency, result, cpu, wall, batch, other, error)


def table(cells: list[Cell]) -> str:
    columns = [Column("transport", left=True), Column("model", left=True), Column("conc"), Column("rps"),
               Column("p50 ms"), Column("p99 ms"), Column("srv cpu"), Column("cpu us/req"), Column("batch"),
               Column("client cpu"), Column("other"), Column("flags", left=True)]
    rows = []
    for c in cells:
        r = c.load
        flags = "BROKEN" if c.error else ""
        if r is not None and r.client_cpu_s / c.wall_s >= CLIENT_BOUND:
            flags = (flags + " client-bound?").strip()
        if c.other_cpu_s / c.wall_s >= NOISY:
            flags = (flags + " noisy?").strip()
        rows.append([c.transport, c.model, str(c.concurrency), num(c.rps, ",.0f"),
                     num(r.p50_ms if r else None, ".2f"), num(r.p99_ms if r else None, ".2f"),
                     pct(c.server_cpu_s / c.wall_s), num(c.server_cpu_s / r.requests * 1e6 if r and r.requests
                                                         else None, ",.0f"),
                     num(c.batch, ".1f"), pct(r.client_cpu_s / c.wall_s if r else None),
                     pct(c.other_cpu_s / c.wall_s), flags])
    return format_table(columns, rows)


def targets(cells: list[Cell]) -> str:
    by = {(c.transport, c.model, c.concurrency): c for c in cells}
    rows = []
    for model, conc in [(m, c) for m in MODELS for c in CONCURRENCY]:
        g, r = by.get(("grpc", model, conc)), by.get(("rest", model, conc))
        value = g.rps / r.rps if g and r and r.rps == r.rps and r.rps > 0 else float("nan")
        verdict = "n/a" if value != value else ("PASS" if value >= 1.0 else "MISS")
        if g and r and (g.other_cpu_s / g.wall_s >= NOISY or r.other_cpu_s / r.wall_s >= NOISY):
            verdict += " (noisy inputs: re-run)"
        rows.append([f"c={conc} rps, gRPC / REST", model, ratio(value), ">= 1", verdict])
    for model in MODELS:  # what a saturated core sets the throughput by, and less sensitive to neighbours
        g, r = by.get(("grpc", model, 64)), by.get(("rest", model, 64))
        value = float("nan")
        if g and r and g.load and r.load and g.load.requests and r.load.requests:
            value = (r.server_cpu_s / r.load.requests) / (g.server_cpu_s / g.load.requests)
        rows.append(["c=64 server CPU per request, REST / gRPC", model, ratio(value), "(>= 1)", "for reading"])
    return format_table([Column("figure", left=True), Column("model", left=True), Column("measured"),
                         Column("target"), Column("verdict", left=True)], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = time.perf_counter(), load_average()
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="inferlane-grpc-bench-") as tmp:
        work = Path(tmp)
        write_repository(work / "models")
        (work / "load.lua").write_text(lua_script(request_bodies()))
        (work / "live.lua").write_text(lua_script([b""]).replace('wrk.method = "POST"', 'wrk.method = "GET"'))
        (work / "live.grpc").write_bytes(grpc_frame(b""))
        row = synthetic_transactions(1, seed=11)[0][0]  # the first row of the REST bodies
        for model in MODELS:
            (work / f"{model}.grpc").write_bytes(grpc_frame(infer_request(model, row)))
        grpc_port = free_port()
        log(f"starting inferlane serve --grpc-port {grpc_port} pinned to core {args.server_core}")
        try:
            with serve(work / "models", log_path=work / "server.log", prefix=pin(args.server_core),
                       extra=["--grpc-port", str(grpc_port)], ready_timeout_s=180,
                       env={"INFERLANE_JOBS_WORKERS": "0",
                            "INFERLANE_JOBS_STORE": f"sqlite:///{work / 'jobs.db'}",
                            "INFERLANE_ROLLOUT_STORE": f"sqlite:///{work / 'rollouts.db'}"}) as server:
                for model in MODELS:
                    same_answer(server.port, grpc_port, model, row)
                log("REST and gRPC answer the same bytes for both models")
                plan = [(FLOOR, 64), *((m, c) for m in MODELS for c in CONCURRENCY)]
                for (model, conc), transport in [(p, tr) for p in plan for tr in TRANSPORTS]:
                    log(f"{transport} {model} c={conc}: {args.warmup} s warm-up, {args.duration} s measured")
                    cell = measure(transport, model, conc, (server.port, grpc_port), server.proc.pid, args, work)
                    if cell.error:
                        log(f"BROKEN: {cell.error}\n{log_tail(work / 'server.log', 1500)}")
                    cells.append(cell)
        except (ServiceError, RuntimeError) as e:
            log(f"the run broke: {e}")
            return 1
    print(f"# benchmarks.grpc: gRPC (h2load) vs REST (wrk), same server, one core\n\n{command_line()}\n"
          f"{source_state()}\n")
    print(table(cells))
    print(f"noisy?: other processes used {NOISY:.0%} of a core or more during the cell (re-run it); "
          f"client-bound?: the load generator used {CLIENT_BOUND:.0%} of its core or more")
    print("\ntargets (a MISS is reported, not a failure):")
    print(targets(cells))
    print("\n" + machine_line(load_before, load_average(), time.perf_counter() - started))
    return 1 if any(c.error for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
