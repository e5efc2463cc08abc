"""What a rollout measures: per model version, the outcomes of one window, and the comparisons.

    stats = WindowStats()
    router.subscribe(stats.record)                  # every unpinned online outcome, on the event loop
    stats.watch("fraud")                            # only watched models are kept (a dict lookup otherwise)
    canary = stats.summary("fraud", "3")            # counts, error rate, p50/p95/p99, output values
    psi(stable.values["probabilities"], canary.values["probabilities"])

A window holds the outcomes since :meth:`WindowStats.reset`. Counts are exact; latencies and output
values come from the most recent ``max_samples`` outcomes of each version (a bounded buffer, so a
busy model's window costs bounded memory and bounded time to summarise).

PSI (population stability index) compares two samples of one output: the bins are the stable
sample's quantiles (10 bins), each side's share per bin is floored at ``EPSILON`` so an empty bin
stays finite, and ``PSI = sum((actual - expected) * ln(actual / expected))``. Two finite samples of
one distribution do not give 0: their PSI is about ``(bins - 1) * (1/n_expected + 1/n_actual)``
(the chi-squared approximation), so :func:`psi_test` reports the PSI minus that noise, and the
noise's standard deviation, for the controller's checks (docs/rollouts.md, "Checks"). With few
values it also uses fewer bins (at least 20 values of the smaller sample per bin): sparse bins make
two samples of one distribution look far apart. rollout/drift.py applies the same rule (one place:
:func:`psi_bins`, :func:`quantile_edges`, :func:`bin_index`, :func:`psi_test_shares`) to a served
version's recent outputs against a reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from inferlane.rollout.router import Outcome

BINS = 10
EPSILON = 1e-4
"""The floor of a bin's share: an empty bin on one side contributes a large but finite term."""
MAX_SAMPLES = 20_000
"""Outcomes kept per version and window for latency percentiles and output distributions."""
VALUES_PER_BIN = 20
"""For :func:`psi_test`: fewer values per bin than this on the smaller side and the bins shrink."""
AGREEMENT_RTOL = 1e-6
"""Shadow outputs agree with live ones when equal within this relative tolerance."""
NUMERIC_KINDS = "biuf"
"""NumPy dtype kinds whose values are compared (bool, integers, floats); BYTES outputs are not."""
FOLD_EVERY = 256
"""Outcomes appended before they are folded into the arrays, without waiting for a read: the fold's
cost is spread over the requests (about 1 ms per fold) instead of landing on the event loop in one
piece at the next read (20 ms and more for a second of outcomes at a few thousand requests/s, once
per second in shadow mode: the live p99 saw it)."""


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value; ``edges`` are the interior bin edges (bins 0 to len(edges))."""
    return np.searchsorted(edges, values, side="right")


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of ``values`` in each bin; ``edges`` are the interior bin edges (len(edges) + 1 bins)."""
    counts = np.bincount(bin_index(values, edges), minlength=len(edges) + 1).astype(np.float64)
    return counts / max(1, len(values))


def psi_from_shares(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
                    epsilon: float = EPSILON) -> float:
    """PSI of two binned distributions (shares per bin, each summing to 1)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(expected: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Interior bin edges at ``expected``'s quantiles; repeated edges (a discrete output) merge."""
    return np.unique(np.quantile(expected, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = BINS, epsilon: float = EPSILON) -> float:
    """PSI of ``actual`` against ``expected`` with bins at ``expected``'s quantiles."""
    exp = np.asarray(expected, dtype=np.float64).ravel()
    act = np.asarray(actual, dtype=np.float64).ravel()
    edges = quantile_edges(exp, bins)
    return psi_from_shares(bin_shares(exp, edges), bin_shares(act, edges), epsilon)


@dataclass(frozen=True, slots=True)
class PsiTest:
    """One PSI comparison with its sampling noise."""

    raw: float
    """The PSI of the two samples as measured."""
    noise: float
    """What two samples of one distribution of these sizes measure on average."""
    sd: float
    """The standard deviation of that noise."""
    expected_n: int
    actual_n: int

    @property
    def value(self) -> float:
        """The PSI beyond the noise (never below 0): the estimate compared with ``max_psi``."""
        return max(0.0, self.raw - self.noise)


def psi_bins(expected_n: int, actual_n: int, bins: int = BINS) -> int:
    """Bins for two samples of these sizes: ``VALUES_PER_BIN`` values of the smaller side per bin, at
    most ``bins``, at least 2 (sparse bins would make same-distribution samples look apart)."""
    return max(2, min(bins, min(expected_n, actual_n) // VALUES_PER_BIN))


def psi_test_shares(expected: np.ndarray, expected_n: int, actual: np.ndarray, actual_n: int) -> PsiTest:
    """:func:`psi_test` of two samples already binned alike (their shares per bin and their sizes)."""
    raw = psi_from_shares(expected, actual)
    dof = len(expected) - 1  # bins - 1 after merging repeated edges
    spread = 1.0 / max(1, expected_n) + 1.0 / max(1, actual_n)
    return PsiTest(raw, dof * spread, math.sqrt(2.0 * dof) * spread, expected_n, actual_n)


def psi_test(expected: np.ndarray, actual: np.ndarray, bins: int = BINS) -> PsiTest:
    """PSI with its noise, in :func:`psi_bins` bins at ``expected``'s quantiles."""
    exp = np.asarray(expected, dtype=np.float64).ravel()
    act = np.asarray(actual, dtype=np.float64).ravel()
    edges = quantile_edges(exp, psi_bins(len(exp), len(act), bins))
    return psi_test_shares(bin_shares(exp, edges), len(exp), bin_shares(act, edges), len(act))


@dataclass(frozen=True, slots=True)
class Summary:
    """One version's outcomes in the current window."""

    samples: int = 0
    errors: int = 0
    latencies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Latencies (seconds) of the answered outcomes kept in the buffer."""
    values: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Per numeric output, every value of the kept outcomes, flattened (float64)."""
    agreed: int = 0
    """Shadow outcomes only: how many matched the live answer."""
    compared: int = 0
    live_values: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Shadow outcomes only: the live answers to the same inputs, flattened per output."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.samples if self.samples else 0.0

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.latencies, q)) if len(self.latencies) else math.nan

    def describe(self) -> dict[str, float | int | None]:
        """JSON-ready counts and percentiles (None where there is nothing to measure)."""

        def f(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        # one sort for the three percentiles
        p50, p95, p99 = np.quantile(self.latencies, (0.5, 0.95, 0.99)) if len(self.latencies) else (math.nan,) * 3
        return {"samples": self.samples, "errors": self.errors, "error_rate": round(self.error_rate, 6),
                "p50_s": f(float(p50)), "p95_s": f(float(p95)), "p99_s": f(float(p99))}


def agrees(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], rtol: float = AGREEMENT_RTOL) -> bool:
    """Every output of ``a`` equals ``b``'s within ``rtol`` (shapes equal, NaNs equal)."""
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        xa, ya = np.asarray(x), np.asarray(b[name])
        if xa.shape != ya.shape:
            return False
        if xa.dtype == ya.dtype and xa.tobytes() == ya.tobytes():
            continue  # bit-identical, the usual case (and ~20x cheaper than allclose on small arrays)
        if xa.dtype.kind in NUMERIC_KINDS and ya.dtype.kind in NUMERIC_KINDS:
            if not np.allclose(xa, ya, rtol=rtol, atol=0.0, equal_nan=True):
                return False
        elif not np.array_equal(xa, ya):
            return False
    return True


_EMPTY = np.zeros(0)
_NO_COUNTS = np.zeros(0, dtype=np.int64)


def _numeric_ravel(arr: np.ndarray | None) -> np.ndarray:
    """The values of one numeric output, flattened; nothing for a missing or non-numeric one."""
    if arr is None:
        return _EMPTY
    a = np.asarray(arr)
    return a.ravel() if a.dtype.kind in NUMERIC_KINDS else _EMPTY


class _Buffer:
    """One version's (or its shadow's) outcomes since the window started.

    ``add`` (every request, on the event loop) only appends a reference to the outcome's arrays;
    the arrays the checks read are extended with what came since, every ``FOLD_EVERY`` outcomes
    and at each read (the controller's tick), so a read costs what arrived since the previous
    fold, not the whole window."""

    __slots__ = ("_latencies", "_live", "_new", "_values", "agreed", "compared", "errors", "max_samples",
                 "samples")

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self.samples = 0
        self.errors = 0
        self.agreed = 0
        self.compared = 0
        # (latency, or None when failed; outputs; live outputs of a shadow outcome) since the last fold
        self._new: list[tuple[float | None, Mapping[str, np.ndarray] | None, Mapping[str, np.ndarray] | None]] = []
        self._latencies = _EMPTY
        """Latencies (s) of the last ``max_samples`` outcomes (NaN for a failed one)."""
        self._values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        """Per numeric output: the values of the last ``max_samples`` outcomes that had it, and how
        many values each of those outcomes gave (to drop whole outcomes when trimming)."""
        self._live: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, o: Outcome) -> None:
        self.samples += 1
        if not o.ok:
            self.errors += 1
            self._new.append((None, None, None))
        else:
            live = None
            if o.shadow and o.outputs is not None and o.live_outputs is not None:
                self.compared += 1
                self.agreed += agrees(o.outputs, o.live_outputs)
                live = o.live_outputs
            self._new.append((o.latency_s, o.outputs, live))
        if len(self._new) >= min(FOLD_EVERY, self.max_samples):
            self._fold()

    def _fold(self) -> None:
        new, self._new = self._new, []
        if not new:
            return
        # The window is the last max_samples outcomes, failed ones included (NaN latency, no values).
        latest = np.fromiter((math.nan if lat is None else lat for lat, _, _ in new), dtype=np.float64, count=len(new))
        self._latencies = np.concatenate([self._latencies, latest])[-self.max_samples:]
        for kept, at in ((self._values, 1), (self._live, 2)):
            outputs: list[Mapping[str, np.ndarray] | None] = [item[at] for item in new]  # type: ignore[misc]
            names = set(kept).union(*{tuple(o) for o in outputs if o})  # one version: usually one set of names
            for name in names:
                # One entry per outcome (empty when it has no such numeric output), so trimming
                # drops whole outcomes; the dtypes are unified once, by the concatenation.
                arrays = [_numeric_ravel(None if o is None else o.get(name)) for o in outputs]
                if name not in kept and not any(a.size for a in arrays):
                    continue  # a BYTES output: no values to compare
                values, counts = kept.get(name, (_EMPTY, _NO_COUNTS))
                values = np.concatenate([values, *arrays], dtype=np.float64)
                counts = np.concatenate([counts, np.fromiter((a.size for a in arrays), np.int64, len(arrays))])
                excess = len(counts) - self.max_samples
                if excess > 0:
                    values, counts = values[int(counts[:excess].sum()):], counts[excess:]
                kept[name] = (values, counts)

    def summary(self) -> Summary:
        self._fold()
        latencies = self._latencies[~np.isnan(self._latencies)]
        return Summary(self.samples, self.errors, latencies,
                       {name: v for name, (v, _) in self._values.items()}, self.agreed, self.compared,
                       {name: v for name, (v, _) in self._live.items()})


class WindowStats:
    """Outcomes per (model, version, shadow) since the model's window started; fed by ``Router.subscribe``."""

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self.max_samples = max_samples
        self._watched: dict[str, dict[tuple[str, bool], _Buffer]] = {}

    def watch(self, model: str) -> None:
        """Start keeping ``model``'s outcomes (a fresh window)."""
        self._watched[model] = {}

    def unwatch(self, model: str) -> None:
        self._watched.pop(model, None)

    def reset(self, model: str) -> None:
        """A fresh window for ``model`` (when watched)."""
        if model in self._watched:
            self._watched[model] = {}

    def record(self, o: Outcome) -> None:
        """Keep one outcome (cheap: called on the event loop for every unpinned request)."""
        buffers = self._watched.get(o.model)
        if buffers is None:
            return
        buf = buffers.get((o.version, o.shadow))
        if buf is None:
            buf = buffers[(o.version, o.shadow)] = _Buffer(self.max_samples)
        buf.add(o)

    def samples(self, model: str, version: str, shadow: bool = False) -> int:
        buf = self._watched.get(model, {}).get((version, shadow))
        return 0 if buf is None else buf.samples

    def summary(self, model: str, version: str, shadow: bool = False) -> Summary:
        buf = self._watched.get(model, {}).get((version, shadow))
        return Summary() if buf is None else buf.summary()
