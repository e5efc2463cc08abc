"""The three measurements, per model (and per transport and max-wait for the lane):

  raw      the model alone, in this process: ``ModelVersion.open(folder).forward`` (the runtime the lane
           uses, every core) on batches of --max-batch rows back to back, data already in memory.
  backlog  --events events are produced first; then the lane drains them. events/s = the lane's own
           report: outputs over busy_s (first event consumed to last output acknowledged).
  paced    a fresh lane on an empty topic / stream while this process produces at a fixed rate;
           latency per event = scored_at_ms - event_time_ms, the first second excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import logger
from benchmarks.stream.events import Events, throughput
from benchmarks.stream.lane import Lane, Transport, start_lane
from benchmarks.stream.report import TARGET_EPS, TARGET_P99_MS, TARGET_WAIT, Row
from inferlane.testing import cpu_seconds, exited, start_py_spy, stop_process, wait_until

log = logger("stream-bench")


@dataclass
class Ctx:
    work: Path
    events: Events
    args: argparse.Namespace


def raw_limit(model_dir: Path, batch: int, seconds: float) -> tuple[int, float]:
    """(rows run, rows/s of the fastest 0.5 s window): other work on the machine only slows it down."""
    from inferlane.core.model import ModelVersion

    model = ModelVersion.open(model_dir)  # what the lane runs: every core, no spinning
    try:
        data = np.random.default_rng(0).standard_normal((batch * 64, 30), dtype=np.float32)
        for _ in range(3):
            model.forward({"x": data[:batch]})
        rows, best, i = 0, 0.0, 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            window_rows, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < min(0.5, seconds):
                lo = (i % 64) * batch
                model.forward({"x": data[lo:lo + batch]})
                window_rows += batch
                i += 1
            rows += window_rows
            best = max(best, window_rows / (time.perf_counter() - t0))
        return rows, best
    finally:
        model.close()


@contextlib.contextmanager
def lane_running(ctx: Ctx, label: str, model_dir: Path, t: Transport, source: str, sink: str, wait: float,
                 idle_exit: float) -> Iterator[Lane]:
    lane = start_lane(ctx.work, label, model_dir, t, source, sink, wait, ctx.args.max_batch, idle_exit,
                      ctx.args.lane_args)
    try:
        yield lane
    finally:
        stop_process(lane.proc, 10.0)  # already stopped by Lane.finish unless something failed


def backlog_runs(ctx: Ctx, t: Transport, models: dict[str, Path], raw: dict[str, float]) -> list[Row]:
    """Produce the backlog once; drain it once per model and max-wait, each run its own group."""
    n = ctx.args.events
    t.create(["backlog"])
    t0 = time.perf_counter()
    t.produce("backlog", ctx.events, 0, n)
    log(f"{t.name}: produced {n:,} events in {time.perf_counter() - t0:.1f} s")
    rows = []
    for name, model_dir in models.items():
        for wait in ctx.args.max_waits:
            try:
                row = drain(ctx, t, name, model_dir, wait, raw[name])
            except Exception as e:  # a lane that failed or hung: the row says so, the rest runs
                log(f"{t.name} {name} backlog max-wait {wait:g}: {e}")
                row = Row("stream", name, t.name, wait, "backlog", n, outputs=0, distinct=0, notes=[str(e)])
            if name == "small" and t.name == "kafka" and wait == TARGET_WAIT:
                ok = row.complete and row.events_per_s is not None and row.events_per_s >= TARGET_EPS
                row.target = f"{'✓' if ok else '✗'} >= {TARGET_EPS:,}/s"
            rows.append(row)
    t.delete(["backlog"])
    return rows


def drain(ctx: Ctx, t: Transport, name: str, model_dir: Path, wait: float, raw: float) -> Row:
    n = ctx.args.events
    label = f"{t.name}-{name}-backlog-w{wait:g}"
    sink = f"out-{name}-w{wait:g}"
    t.create([sink])
    with lane_running(ctx, label, model_dir, t, "backlog", sink, wait, 3) as lane:
        spy = start_py_spy(lane.proc.pid, ctx.args.py_spy / f"{label}.txt", rate=200) if ctx.args.py_spy else None
        cpu0 = (cpu_seconds(lane.proc.pid), cpu_seconds(t.pid), time.monotonic())
        # Every event written, or the lane gone (Lane.finish then says why).
        wait_until(lambda: lane.written() >= n or lane.proc.poll() is not None, f"{label}: every event written",
                   max(300, n / 2000), interval_s=0.1)
        cpu1 = (cpu_seconds(lane.proc.pid), cpu_seconds(t.pid), time.monotonic())
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        report = lane.finish()
    t_read = time.perf_counter()
    out = t.read(sink, report["events_out"])
    t_read = time.perf_counter() - t_read
    t.delete([sink])
    # The lane's own rate: outputs / (first event consumed -> last output acknowledged). Without
    # that report field (busy_s), the sink's view: outputs after the first write / first -> last write.
    busy = float(report.get("busy_s") or 0)
    rate = report["events_out"] / busy if busy > 0 else throughput(out)
    # CPU from the lane's start to its last output; the lane and the broker are idle outside the
    # drain, so the CPU is divided by the drain's own time when the lane reports it.
    seconds = busy if busy > 0 else cpu1[2] - cpu0[2]
    row = Row("stream", name, t.name, wait, "backlog", n, events_per_s=rate, x_raw=rate / raw if raw else None,
              lane_cpu=(cpu1[0] - cpu0[0]) / seconds, broker_cpu=(cpu1[1] - cpu0[1]) / seconds,
              outputs=out.records, distinct=out.distinct, dead_lettered=report.get("dead_lettered"),
              sink_events_per_s=throughput(out))
    log(f"{label}: {rate:,.0f} events/s, {out.distinct:,} of {n:,} scored (outputs read back in {t_read:.1f} s; "
        f"lane report: {report})")
    return row


def paced_runs(ctx: Ctx, t: Transport, models: dict[str, Path]) -> list[Row]:
    rows = []
    for name, model_dir in models.items():
        for wait in ctx.args.max_waits:
            rate = ctx.args.rates[name]
            try:
                row = paced(ctx, t, name, model_dir, wait, rate)
            except Exception as e:  # the same
                log(f"{t.name} {name} paced max-wait {wait:g}: {e}")
                row = Row("stream", name, t.name, wait, f"paced {rate:,.0f}/s", 0, outputs=0, distinct=0,
                          notes=[str(e)])
            if name == "small" and t.name == "kafka" and wait == TARGET_WAIT:
                ok = row.complete and row.p99_ms is not None and row.p99_ms < TARGET_P99_MS
                row.target = f"{'✓' if ok else '✗'} p99 < {TARGET_P99_MS:g} ms"
            rows.append(row)
    return rows


def paced(ctx: Ctx, t: Transport, name: str, model_dir: Path, wait: float, rate: float) -> Row:
    args = ctx.args
    label = f"{t.name}-{name}-paced-w{wait:g}"
    source, sink = f"live-{name}-w{wait:g}", f"live-out-{name}-w{wait:g}"
    t.create([source, sink])
    total = int(rate * (args.warmup + args.latency_seconds))
    with lane_running(ctx, label, model_dir, t, source, sink, wait, 60) as lane:
        started_ms = time.time() * 1000
        cpu0 = (cpu_seconds(lane.proc.pid), cpu_seconds(t.pid), time.monotonic())
        with t.paced_sender(source, ctx.events) as send:
            sent, t0 = 0, time.perf_counter()
            while sent < total:
                due = min(total, int((time.perf_counter() - t0) * rate) + 1)
                if due > sent:
                    send(sent, due)
                    sent = due
                else:
                    time.sleep(0.0005)  # the pacing clock: produce what is due, every half millisecond
        wait_until(lambda: lane.written() >= total, f"{label}: every event written", 120,
                   abort_if=[exited(lane.proc, lane.stderr)])
        cpu1 = (cpu_seconds(lane.proc.pid), cpu_seconds(t.pid), time.monotonic())
        report = lane.finish()
    out = t.read(sink, report["events_out"])
    t.delete([source, sink])
    lat = (out.scored_ms - out.event_ms)[out.event_ms >= started_ms + args.warmup * 1000]
    seconds = cpu1[2] - cpu0[2]
    row = Row("stream", name, t.name, wait, f"paced {rate:,.0f}/s", total, events_per_s=throughput(out),
              lane_cpu=(cpu1[0] - cpu0[0]) / seconds, broker_cpu=(cpu1[1] - cpu0[1]) / seconds,
              outputs=out.records, distinct=out.distinct, dead_lettered=report.get("dead_lettered"))
    if len(lat):
        row.p50_ms, row.p99_ms = (float(v) for v in np.percentile(lat, [50, 99]))
    log(f"{label}: p50 {row.p50_ms} ms, p99 {row.p99_ms} ms over {len(lat):,} events")
    return row
