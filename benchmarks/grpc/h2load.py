"""The gRPC load generator: ``h2load`` (nghttp2's HTTP/2 benchmark, a C program), one thread pinned to the
client core, ``-c N -m 1``: N connections with one call in flight each, the closed loop wrk runs for
REST. Every call POSTs the same gRPC-framed ModelInferRequest (one row in ``raw_input_contents``).

    body.write_bytes(grpc_frame(infer_request("small", row)))
    result = run_h2load(h2load_command(port, "small", 64, 10, body, log, prefix=["taskset", "-c", "0"]), log, 60)

h2load sees HTTP/2 only: a call it counts as succeeded (status 200) may still carry a gRPC error in its
trailers. The benchmark checks that separately, against the server's own count of answered requests.
"""

from __future__ import annotations

import re
import resource
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np

from benchmarks.online.wrk import WrkResult
from inferlane.testing import LOOPBACK

INSTALL_H2LOAD = "apt-get install -y nghttp2-client"
INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"
"""An empty call: what the gRPC server costs per request before any work (the floor)."""


class H2loadFailed(RuntimeError):
    """h2load did not run, or ended without its summary."""


def require_h2load() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise H2loadFailed(f"the gRPC load is driven by h2load, which is not installed: run  {INSTALL_H2LOAD}")
    return path


def infer_request(model: str, row: np.ndarray) -> bytes:
    """A serialized ModelInferRequest of one FP32 row for input ``x`` (tritonclient's encoding)."""
    from inferlane.transport.grpc.proto import grpc_service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model, raw_input_contents=[row.astype(np.float32).tobytes()])
    req.inputs.add(name="x", datatype="FP32", shape=[1, row.size])
    return req.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: no compression flag, 4-byte big-endian length, the message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load_command(port: int, concurrency: int, duration_s: int, body: Path, log: Path,
                   prefix: list[str], method: str = INFER) -> list[str]:
    return [*prefix, require_h2load(), "-t1", f"-c{concurrency}", "-m1", f"-D{duration_s}", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(log),
            f"http://{LOOPBACK}:{port}{method}"]


_DONE = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                   r"(\d+) errored, (\d+) timeout")
_FINISHED = re.compile(r"finished in ([\d.]+)(m?s)")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def run_h2load(cmd: list[str], log: Path, timeout_s: float) -> WrkResult:
    """Run h2load to the end; its summary line gives the counts, its per-request log the latencies."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.unlink(missing_ok=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise H2loadFailed(f"h2load did not finish within {timeout_s:g} s") from e
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts, finished = _DONE.search(done.stdout), _FINISHED.search(done.stdout)
    if done.returncode != 0 or counts is None or finished is None:
        raise H2loadFailed(f"h2load exited with code {done.returncode} without a summary: "
                           f"{(done.stderr or done.stdout).strip()[-500:]}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    latencies: list[float] = []  # one line per request: start (us since the epoch), status, duration (us)
    statuses_bad = 0
    for line in log.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            latencies.append(float(fields[2]) / 1e3)
            statuses_bad += fields[1] != "200"
    succeeded, failed, errored, timeout = (int(counts.group(i)) for i in (4, 5, 6, 7))
    return WrkResult(
        requests=succeeded + failed, seconds=seconds,
        p50_ms=statistics.median(latencies) if latencies else float("nan"), p99_ms=_percentile(latencies, 99),
        max_ms=max(latencies, default=float("nan")),
        non_2xx=max(failed, statuses_bad), socket_errors=errored + timeout,
        client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
