"""Measure one model version on this machine: forward latency and rows/s by batch size.

The numbers the batcher settings and the advisor's cost math need come from here, not from guesses:

    prof = profile_model("models/fraud")                # batch sizes 1, 2, 4, ... 1024
    prof.knee.batch_size                                 # where throughput stops paying off
    prof.batching_for(50.0)                              # max_batch_size / max_queue_delay_ms for p99 50 ms

Rules (docs/choosing.md, "Profile a model"):

- **Throughput** at a batch size is ``batch_size / p50 forward time``. The sizes are timed in
  turn, one pass of each per cycle, so a burst of load from elsewhere on a shared machine slows
  every size alike and the median ignores it.
- **The knee** is the smallest batch size whose rows/s reach ``KNEE_FRACTION`` (90 %) of the peak:
  past it, bigger batches buy at most 10 % more throughput and cost latency.
- **The batching advice** for a p99 budget: a request may wait up to ``max_queue_delay_ms``, then for
  the batch already in flight, then for its own batch, so its worst case is ``delay + 2 x forward p99``.
  The delay is ``DELAY_SHARE`` (10 %) of the budget (the seeds' 5-10 ms window on a 50-100 ms
  budget); ``max_batch_size`` is the largest measured size up to the knee whose worst case fits.

The model loads as the server loads it (``ModelVersion.load`` with the serving thread plan of
core/cpus.py), and runs through ``ModelVersion.forward``, the one forward pass every lane uses.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from inferlane.core.errors import ConfigError, InferlaneError, InvalidInput, PayloadTooLarge
from inferlane.core.spec import ModelConfig

KNEE_FRACTION = 0.9
"""The knee: the smallest batch size reaching this share of the peak rows/s."""
DELAY_SHARE = 0.1
"""max_queue_delay_ms as a share of the p99 budget."""
DEFAULT_SIZES = tuple(2 ** i for i in range(11))
"""1, 2, 4, ... 1024."""
MIN_REPEATS, MAX_REPEATS = 3, 1000
"""Timed forward passes per batch size: at least this many, at most that many (one per cycle)."""
SLOW_FORWARD_S = 10.0
"""A forward pass slower than this ends the sweep: larger batches would only be slower."""

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    """One batch size, measured."""

    batch_size: int
    repeats: int
    """Timed forward passes (after one untimed pass)."""
    p50_ms: float
    p99_ms: float
    rows_per_s: float
    """``batch_size / p50``."""
    batch_bytes: int
    """Bytes of the inputs and outputs of one batch."""
    rss_growth_bytes: int
    """How much the process's peak resident memory grew while this size ran (0 when smaller sizes
    already needed as much)."""


@dataclass(frozen=True, slots=True)
class BatchingAdvice:
    """Dynamic batcher settings for a p99 budget (model.yaml ``batching:``)."""

    p99_budget_ms: float
    max_batch_size: int
    max_queue_delay_ms: float
    worst_case_ms: float
    """``max_queue_delay_ms + 2 x forward p99`` at ``max_batch_size``."""
    rows_per_s: float
    """Throughput of one replica at ``max_batch_size``."""
    fits: bool
    """False when even a batch of one cannot meet the budget."""
    reason: str


@dataclass(frozen=True, slots=True)
class Profile:
    """A model version's measured curve; ``to_dict``/``from_dict`` for ``--json`` and ``--profile``."""

    model: str
    version: str
    runtime: str
    device: str
    threads: int
    threads_reason: str
    points: tuple[ProfilePoint, ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ConfigError("a profile needs at least one measured batch size")

    @property
    def peak(self) -> ProfilePoint:
        return max(self.points, key=lambda p: p.rows_per_s)

    @property
    def knee(self) -> ProfilePoint:
        return knee(self.points)

    def batching_for(self, p99_ms: float) -> BatchingAdvice:
        return recommend_batching(self.points, p99_ms)

    def scaled(self, factor: float) -> Profile:
        """The same curve with every forward ``factor`` times slower (the advisor's what-ifs)."""
        pts = tuple(ProfilePoint(p.batch_size, p.repeats, p.p50_ms * factor, p.p99_ms * factor,
                                 p.rows_per_s / factor, p.batch_bytes, p.rss_growth_bytes) for p in self.points)
        return Profile(self.model, self.version, self.runtime, self.device, self.threads, self.threads_reason, pts)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["points"] = [asdict(p) for p in self.points]
        doc["knee_batch_size"] = self.knee.batch_size
        doc["peak_rows_per_s"] = self.peak.rows_per_s
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Profile:
        try:
            points = tuple(ProfilePoint(**p) for p in doc["points"])
            return cls(str(doc["model"]), str(doc["version"]), str(doc["runtime"]), str(doc["device"]),
                       int(doc["threads"]), str(doc["threads_reason"]), points)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a profile written by inferlane profile --json: {e!r}") from e


def knee(points: Sequence[ProfilePoint]) -> ProfilePoint:
    """The smallest batch size whose rows/s reach ``KNEE_FRACTION`` of the peak."""
    peak = max(p.rows_per_s for p in points)
    return min((p for p in points if p.rows_per_s >= KNEE_FRACTION * peak), key=lambda p: p.batch_size)


def recommend_batching(points: Sequence[ProfilePoint], p99_ms: float) -> BatchingAdvice:
    """The largest batch size up to the knee whose ``delay + 2 x forward p99`` fits ``p99_ms``."""
    if not p99_ms > 0:
        raise ConfigError(f"the p99 budget must be a positive number of milliseconds, not {p99_ms}")
    k = knee(points)
    delay = round(DELAY_SHARE * p99_ms, 3)
    ordered = sorted((p for p in points if p.batch_size <= k.batch_size), key=lambda p: p.batch_size)
    fitting = [p for p in ordered if delay + 2 * p.p99_ms <= p99_ms]
    if fitting:
        best = fitting[-1]
        why = (f"largest measured batch up to the knee ({k.batch_size}) whose worst case "
               f"{delay:g} ms delay + 2 x {best.p99_ms:.2f} ms forward fits the {p99_ms:g} ms budget")
        return BatchingAdvice(p99_ms, best.batch_size, delay, delay + 2 * best.p99_ms, best.rows_per_s, True, why)
    one = ordered[0]
    delay = max(0.0, round(p99_ms - 2 * one.p99_ms, 3))
    why = (f"even a batch of {one.batch_size} needs 2 x {one.p99_ms:.2f} ms forward, over the {p99_ms:g} ms "
           "budget: a faster model or machine, or a pattern where nobody waits (async jobs, batch)")
    return BatchingAdvice(p99_ms, one.batch_size, delay, delay + 2 * one.p99_ms, one.rows_per_s, False, why)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``1,2,4,8``: positive, distinct, increasing integers."""
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ConfigError(f"--batch-sizes {text!r}: expected whole numbers separated by commas, "
                          "such as 1,2,4,8") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"--batch-sizes {text!r}: every batch size must be at least 1")
    if list(sizes) != sorted(set(sizes)):
        raise ConfigError(f"--batch-sizes {text!r}: list each size once, smallest first")
    return sizes


def _nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    total = 0
    for a in arrays.values():
        total += sum(len(v) for v in a.ravel()) if a.dtype == object else a.nbytes
    return total


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


Forward = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(slots=True)
class _Size:
    batch: dict[str, np.ndarray]
    batch_bytes: int
    rss_growth_bytes: int
    times: list[float]


def _warm(forward: Forward, batch: dict[str, np.ndarray]) -> tuple[_Size, float]:
    """One untimed pass: the batch's memory (bytes in and out, peak RSS growth) and its duration."""
    before = _peak_rss_bytes()
    t0 = time.perf_counter()
    out = forward(batch)
    seconds = time.perf_counter() - t0
    return _Size(batch, _nbytes(batch) + _nbytes(out), max(0, _peak_rss_bytes() - before), []), seconds


def measure(forward: Forward, batches: Sequence[dict[str, np.ndarray]], seconds: float,
            progress: Progress | None = None) -> list[ProfilePoint]:
    """Time ``forward`` on each batch (smallest first): one untimed pass each, then passes that take
    every size in turn (one pass of each per cycle), so load from elsewhere on the machine hits every
    size alike instead of bending the curve at one of them; ``seconds`` per size in all, at least
    ``MIN_REPEATS`` and at most ``MAX_REPEATS`` cycles. A size whose untimed pass takes over
    ``SLOW_FORWARD_S`` is the last one measured."""
    sizes: list[_Size] = []
    for batch in batches:
        size, took = _warm(forward, batch)
        sizes.append(size)
        if took > SLOW_FORWARD_S:
            if progress:
                progress(f"a forward pass of {len(size.batch[next(iter(batch))])} rows took {took:.1f} s: "
                         "larger sizes not measured")
            break
    budget = seconds * len(sizes)
    spent, cycles, reported = 0.0, 0, 0
    while cycles < MAX_REPEATS and (spent < budget or cycles < MIN_REPEATS):
        for size in sizes:
            t0 = time.perf_counter()
            forward(size.batch)
            dt = time.perf_counter() - t0
            size.times.append(dt)
            spent += dt
        cycles += 1
        if progress and budget > 0 and spent / budget >= (reported + 1) / 4 and reported < 3:
            reported += 1
            progress(f"measured {min(spent, budget):.1f} of {budget:.1f} s ({cycles} passes of each size)")
    points = []
    for size in sizes:
        rows = next(iter(size.batch.values())).shape[0]
        ms = np.asarray(size.times) * 1e3
        p50 = float(np.percentile(ms, 50))
        points.append(ProfilePoint(rows, len(size.times), p50, float(np.percentile(ms, 99)),
                                   rows / max(p50 / 1e3, 1e-12), size.batch_bytes, size.rss_growth_bytes))
    return points


def profile_model(folder: str | Path, version: str | None = None, *, sizes: Sequence[int] = DEFAULT_SIZES,
                  seconds_per_size: float = 0.2, threads: int = 0, progress: Progress | None = None) -> Profile:
    """Load the model folder as the server does and measure each batch size in ``sizes`` (those
    over the model's element budget ``batching.max_batch_elements``, when set, are skipped)."""
    from inferlane.core.model import ModelVersion
    from inferlane.core.repository import locate_version

    entry, version = locate_version(folder, version)
    mv = ModelVersion.load(entry.config, entry.path, version, role="serving", threads=threads)
    try:
        cap = _row_cap(mv.config)
        batches = []
        for size in sizes:
            if cap is not None and size > cap:
                if progress:
                    progress(f"batch {size}: skipped, over batching.max_batch_elements ({cap} rows)")
                continue
            batch = mv.sample_inputs(size)
            try:
                mv.check_inputs(batch, per_request=False)
            except (InvalidInput, PayloadTooLarge) as e:
                if progress:
                    progress(f"batch {size}: skipped, the model refuses it ({e.message})")
                continue
            batches.append(batch)
        try:
            points = measure(mv.forward, batches, seconds_per_size, progress)
        except InferlaneError as e:
            raise ConfigError(f"{entry.path}: a forward pass failed while profiling: {e.message}") from e
        except Exception as e:
            raise ConfigError(f"{entry.path}: a forward pass failed while profiling: {type(e).__name__}: {e}") from e
        if progress:
            for point in points:
                progress(f"batch {point.batch_size:>5}: p50 {point.p50_ms:8.3f} ms  {point.rows_per_s:12,.0f} rows/s")
        if not points:
            raise ConfigError(f"{entry.path}: no batch size to measure (every one is over the model's "
                              "batching.max_batch_elements)")
        plan = mv.threads
        device = getattr(mv.runtime, "device", None)
        return Profile(entry.name, version, entry.config.runtime, str(device) if device else "cpu",
                       plan.threads if plan else threads, plan.reason if plan else "", tuple(points))
    finally:
        mv.close()


def _row_cap(config: ModelConfig) -> int | None:
    explicit = config.batching.max_batch_elements
    if explicit is None:
        return None
    per_row = [s.row_elements for s in config.inputs]
    if any(e is None for e in per_row):
        return None
    return max(1, explicit // max(1, sum(e or 0 for e in per_row)))


def load_profile(path: str | Path) -> Profile:
    """A profile saved with ``inferlane profile --json``; ConfigError when unreadable."""
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except OSError as e:
        raise ConfigError(f"--profile {path}: cannot read it ({e.strerror})") from e
    except orjson.JSONDecodeError as e:
        raise ConfigError(f"--profile {path}: not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"--profile {path}: not a profile written by inferlane profile --json")
    return Profile.from_dict(doc.get("profile", doc))

