"""The load generator: ``wrk`` (C, epoll), one thread pinned to the client core, keep-alive
connections with one request in flight each. A Lua script cycles through one-row V2 JSON POST
bodies and, when the run ends, prints wrk's own figures as one JSON line that this module parses.

    script.write_text(lua_script(bodies))
    result = run_wrk(wrk_command(url, 64, 10, script, prefix=["taskset", "-c", "0"]), timeout_s=60)
    result.rps, result.p99_ms, result.non_2xx
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.online.config import WRK_TIMEOUT

INSTALL_WRK = "apt-get install -y wrk"
MARKER = "WRK_RESULT "

# wrk calls init() once per thread, request() for every request and done() once at the end with
# the summary and the latency histogram (microseconds). errors.status counts responses >= 400.
_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {
%s
}
local requests = {}
local i = 0

function init(args)
  for k, body in ipairs(bodies) do requests[k] = wrk.format(nil, nil, nil, body) end
end

function request()
  i = i %% #requests + 1
  return requests[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('%s{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"timeout":%%d,"status":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


class WrkFailed(RuntimeError):
    """wrk did not run, or ended without its result line."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    """Responses completed in the run (any status)."""
    seconds: float
    """wrk's own measured duration."""
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    """Responses with status >= 400 (wrk's errors.status)."""
    socket_errors: int
    """Connect, read, write errors and timeouts (no response within WRK_TIMEOUT)."""
    client_cpu_s: float
    """CPU time wrk used (user + system), all of the run."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else float("nan")


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkFailed(f"the online benchmark drives its load with wrk, which is not installed: run  {INSTALL_WRK}")
    return path


def lua_script(bodies: list[bytes]) -> str:
    """The wrk script cycling through ``bodies`` (JSON, so they never contain a Lua long-string end)."""
    items = ",\n".join(f"  [==[{b.decode()}]==]" for b in bodies)
    return _LUA % (items, MARKER)


def wrk_command(url: str, concurrency: int, duration_s: int, script: Path, prefix: list[str]) -> list[str]:
    return [*prefix, require_wrk(), "-t1", f"-c{concurrency}", f"-d{duration_s}s", "--timeout", WRK_TIMEOUT,
            "-s", str(script), url]


def run_wrk(cmd: list[str], timeout_s: float) -> WrkResult:
    """Run wrk to the end and parse its result line; raises WrkFailed when there is none."""
    # wrk is this process's only child that ends during the run, so the children's resource usage
    # grows by exactly its CPU time.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise WrkFailed(f"wrk did not finish within {timeout_s:g} s") from e
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip()[-500:]
        raise WrkFailed(f"wrk exited with code {done.returncode} without a result: {tail}")
    doc = json.loads(line[len(MARKER):])
    return WrkResult(
        requests=doc["requests"], seconds=doc["duration_us"] / 1e6, p50_ms=doc["p50_us"] / 1e3,
        p99_ms=doc["p99_us"] / 1e3, max_ms=doc["max_us"] / 1e3, non_2xx=doc["status"],
        socket_errors=doc["connect"] + doc["read"] + doc["write"] + doc["timeout"],
        client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
