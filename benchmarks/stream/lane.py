"""``inferlane stream run`` as a subprocess: started, watched through its progress lines, stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.stream.kafka_transport import Kafka
from benchmarks.stream.redis_transport import Redis
from inferlane.testing import exited, stop_process, wait_until

Transport = Kafka | Redis


@dataclass
class Lane:
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def started(self, transport: Transport) -> bool:
        text = self.stderr.read_text(errors="replace")
        if transport.name == "kafka":
            return re.search(r"partitions assigned: (?!none)", text) is not None
        return "stream stream-bench" in text  # printed once source, sink and dead letters are open

    def written(self) -> int:
        """Outputs the sink acknowledged, from the lane's latest progress line (--log-every 1)."""
        found = re.findall(r"'out': (\d+)", self.stderr.read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def finish(self, timeout: float = 120.0) -> dict[str, Any]:
        """SIGTERM (the lane finishes and commits in-flight batches, exits 0); its JSON report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"the lane did not stop within {timeout:.0f} s of SIGTERM") from None
        lines = self.stdout.read_text().strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            raise RuntimeError(f"the lane exited with {self.proc.returncode}:\n"
                               f"{self.stderr.read_text(errors='replace')[-3000:]}")
        report: dict[str, Any] = json.loads(lines[-1])
        return report


def start_lane(work: Path, label: str, model_dir: Path, transport: Transport, source: str, sink: str,
               max_wait: float, max_batch: int, idle_exit: float, extra: list[str]) -> Lane:
    group = f"stream-bench-{label}"
    cmd = [sys.executable, "-m", "inferlane.cli.main", "stream", "run", "--model", str(model_dir),
           "--source", transport.url(source), "--group", group, "--sink", transport.url(sink),
           "--dlq", str(work / f"{label}.dead.jsonl"), "--key", "id", "--max-batch", str(max_batch),
           "--max-wait-ms", f"{max_wait:g}", "--idle-exit", f"{idle_exit:g}", "--json", "--log-every", "1", *extra]
    out, err = work / f"{label}.out", work / f"{label}.log"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, cwd=work, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lane = Lane(proc, out, err)
    try:
        wait_until(lambda: lane.started(transport), f"lane {label} has started", 60, abort_if=[exited(proc, err)])
    except BaseException:
        stop_process(proc, 10.0)
        raise
    return lane
