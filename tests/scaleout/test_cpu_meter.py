"""The supervisor's CPU meter on real processes: a busy child reads about one CPU, an idle one about none."""

from __future__ import annotations

import subprocess
import sys
import time

from inferlane.server.supervisor.replicas import CpuMeter, cpu_seconds


def test_a_spinning_process_uses_about_one_cpu_and_a_sleeping_one_none() -> None:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    nap = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy, idle = CpuMeter(smoothing_s=0), CpuMeter(smoothing_s=0)  # each reading: the last interval's rate
        busy.read([spin.pid])
        idle.read([nap.pid])
        time.sleep(1.0)
        b, i = busy.read([spin.pid]), idle.read([nap.pid])
        assert b is not None and i is not None
        assert 0.3 < b <= 1.1, b  # one CPU, less what the other processes of a 2-core machine take
        assert i < 0.05, i
    finally:
        spin.kill()
        nap.kill()
        spin.wait()
        nap.wait()
    assert cpu_seconds(spin.pid) is None  # gone: nothing to read


def test_a_process_that_cannot_be_read_counts_nothing() -> None:
    meter = CpuMeter()
    assert meter.read([2**22 + 12345]) is None
    assert meter.read([]) is None
