"""The ideal throughput and the targets, each a ratio of figures measured in the same run.

    ideal rps = 1 / (raw seconds per row at batch 64 + bare-endpoint seconds per request at c=64)

a server that paid only the Python HTTP floor per request plus the model's own batched cost per
row, one after the other on the same core. "inferlane" below is always batching on.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.online.cells import Cell
from benchmarks.online.config import BARE, MODELS, RAW_BATCH, TARGETS, Endpoint, Target, inferlane, naive


@dataclass(frozen=True)
class Ideal:
    model: str
    raw_us_per_row: float
    bare_us_per_request: float

    @property
    def rps(self) -> float:
        return 1e6 / (self.raw_us_per_row + self.bare_us_per_request)


@dataclass(frozen=True)
class Verdict:
    target: Target
    model: str
    value: float
    """The measured ratio; NaN when an input cell has no figure."""
    noisy: bool
    """An input cell was flagged (``Cell.flagged``): re-run before trusting it."""

    @property
    def passed(self) -> bool:
        if self.value != self.value:
            return False
        return self.value <= self.target.limit if self.target.at_most else self.value >= self.target.limit

    @property
    def word(self) -> str:
        return "n/a" if self.value != self.value else "PASS" if self.passed else "MISS"


def find(cells: list[Cell], endpoint: Endpoint, concurrency: int) -> Cell | None:
    return next((c for c in cells if c.endpoint == endpoint and c.concurrency == concurrency), None)


def ideals(cells: list[Cell], raw: dict[str, dict[str, float]]) -> dict[str, Ideal]:
    bare = find(cells, BARE, 64)
    if bare is None or not bare.rps > 0:
        return {}
    return {m: Ideal(m, 1e6 / raw[m][f"rows_per_s_b{RAW_BATCH}"], 1e6 / bare.rps) for m in MODELS if m in raw}


def _verdict(target: Target, model: str, value: float, *inputs: Cell | None) -> Verdict:
    flagged = any(c is None or c.flagged for c in inputs)
    return Verdict(target, model, value, flagged)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def verdicts(cells: list[Cell], ideal: dict[str, Ideal]) -> list[Verdict]:
    nan = float("nan")
    out: list[Verdict] = []
    for model in MODELS:
        ours1, base1 = find(cells, inferlane(model), 1), find(cells, naive(model), 1)
        ours8, base8 = find(cells, inferlane(model), 8), find(cells, naive(model), 8)
        ours64, bare64 = find(cells, inferlane(model), 64), find(cells, BARE, 64)
        out += [
            _verdict(TARGETS["c1_p50"], model, _ratio(ours1.p50_ms, base1.p50_ms) if ours1 and base1 else nan,
                     ours1, base1),
            _verdict(TARGETS["c8_rps"], model, _ratio(ours8.rps, base8.rps) if ours8 and base8 else nan,
                     ours8, base8),
            _verdict(TARGETS[f"c64_ideal_{model}"], model,
                     _ratio(ours64.rps, ideal[model].rps) if ours64 and model in ideal else nan, ours64, bare64),
            _verdict(TARGETS["c64_tail"], model, _ratio(ours64.p99_ms, ours64.p50_ms) if ours64 else nan, ours64),
            _verdict(TARGETS["c1_cpu"], model,
                     _ratio(ours1.cpu_us_per_request, base1.cpu_us_per_request) if ours1 and base1 else nan,
                     ours1, base1),
        ]
    return out
