"""Drift monitoring: each served version's recent output distribution against a reference, as PSI.

    monitor = DriftMonitor(registry, metrics)   # subscribes to registry.router; reads reference files now
    task = asyncio.create_task(monitor.run())   # folds the outcomes and sets the gauges every second
    monitor.report("fraud")                     # per version and lane, each output's PSI, JSON-ready

Per (model, version, lane) and per numeric output (and, with ``drift.inputs``, per numeric input):

- the **reference** is the version's first ``reference_size`` predictions after it started serving in
  this process or was promoted (a canary's early traffic is one sticky share of the keys, so a
  promoted version starts a fresh reference), or the rows of ``reference_file``, an output of
  ``inferlane batch run``. Once complete, it is kept only as its bin edges and shares;
- the **window** is the most recent ``window_size`` predictions, kept only as one bin number per value
  in a ring (one byte a value) and the count per bin;
- the PSI is rollout/stats.py's (bins at the reference's quantiles, the sampling noise taken off), and
  is set in ``inferlane_drift_psi{model,version,lane,output}`` (``inferlane_drift_input_psi{...,input}``).

Cost on the serving path: the router's listener appends the outcome to a list (already built for the
rollout controller; nothing is copied), and every ``FOLD_EVERY`` outcomes the list is folded in one
vectorised pass, so a request pays well under a microsecond on average and memory stays bounded
(``FOLD_EVERY`` outcomes pending, plus the reference and the ring per tensor). Everything here runs on
the event loop, as the router's listeners do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from inferlane.core.errors import ConfigError, ModelNotFound
from inferlane.core.metrics import Metrics
from inferlane.core.spec import DriftSpec, TensorSpec
from inferlane.rollout.registry import ModelRegistry
from inferlane.rollout.router import Outcome, Router
from inferlane.rollout.stats import (
    NUMERIC_KINDS,
    VALUES_PER_BIN,
    PsiTest,
    bin_index,
    bin_shares,
    psi_bins,
    psi_test_shares,
    quantile_edges,
)

log = logging.getLogger(__name__)

FOLD_EVERY = 256
"""Outcomes kept before they are folded into the windows (and the most ever pending)."""
REFRESH_S = 1.0
"""How often :meth:`DriftMonitor.run` folds what is pending, sets the gauges and forgets unloaded versions."""
MAX_VALUES = 4_000_000
"""Most values in one tensor's reference or window (a wide output gets fewer predictions)."""
SHIFTED, MODERATE = 0.2, 0.1
"""The usual reading of PSI: below 0.1 stable, up to 0.2 a moderate shift, above 0.2 a significant one."""
OUTPUTS, INPUTS = "outputs", "inputs"


def verdict(psi: float | None) -> str | None:
    """``stable``, ``moderate`` or ``shifted`` by the usual PSI thresholds (None before measuring)."""
    if psi is None:
        return None
    return "shifted" if psi > SHIFTED else "moderate" if psi > MODERATE else "stable"


@dataclass(frozen=True, slots=True)
class Reference:
    """A finished reference, kept only as its bins."""

    edges: np.ndarray
    """Interior bin edges (the reference's quantiles)."""
    shares: np.ndarray
    """The reference's share of values per bin."""
    values: int
    source: str
    """``first 1000 predictions`` or the file it came from."""

    @classmethod
    def of(cls, values: np.ndarray, window_values: int, source: str) -> Reference:
        edges = quantile_edges(values, psi_bins(len(values), window_values))
        return cls(edges, bin_shares(values, edges), len(values), source)


class Track:
    """One tensor of one (model, version, lane): its reference and its rolling window.

        track = Track(width=2, reference_size=1000, window_size=1000)
        track.add(values)            # float64 values of any number of predictions, row-major
        track.psi()                  # None until the reference is complete and the window has values
    """

    __slots__ = ("_counts", "_filled", "_pending_ref", "_pos", "_ref_filled", "_ring", "reference",
                 "reference_size", "seen", "width")

    def __init__(self, width: int, reference_size: int, window_size: int,
                 reference: Reference | None = None) -> None:
        self.width = max(1, width)
        per_tensor = max(1, MAX_VALUES // self.width)
        self.reference_size = min(reference_size, per_tensor)
        self.reference = reference
        self.seen = 0
        """Values added in all."""
        self._pending_ref: np.ndarray | None = None
        self._ref_filled = 0
        self._ring = np.zeros(min(window_size, per_tensor) * self.width, dtype=np.uint8)  # bins <= BINS < 256
        self._pos = 0
        self._filled = 0
        self._counts = np.zeros(0, dtype=np.int64)
        if reference is not None:
            self._counts = np.zeros(len(reference.edges) + 1, dtype=np.int64)

    @property
    def window_values(self) -> int:
        return self._filled

    @property
    def reference_values(self) -> int:
        return self.reference.values if self.reference is not None else self._ref_filled

    def add(self, values: np.ndarray) -> None:
        self.seen += len(values)
        if self.reference is None:
            values = self._collect(values)
            if self.reference is None or not len(values):
                return
        assert self.reference is not None
        self._push(bin_index(values, self.reference.edges))

    def _collect(self, values: np.ndarray) -> np.ndarray:
        """Fill the reference; the values beyond it are returned for the window."""
        capacity = self.reference_size * self.width
        if self._pending_ref is None:
            self._pending_ref = np.empty(capacity, dtype=np.float64)
        take = min(len(values), capacity - self._ref_filled)
        self._pending_ref[self._ref_filled:self._ref_filled + take] = values[:take]
        self._ref_filled += take
        if self._ref_filled == capacity:
            self.reference = Reference.of(self._pending_ref, len(self._ring),
                                          f"first {self.reference_size} predictions")
            self._counts = np.zeros(len(self.reference.edges) + 1, dtype=np.int64)
            self._pending_ref = None
        return values[take:]

    def _push(self, bins: np.ndarray) -> None:
        """The newest values' bins into the ring, evicting the oldest once it is full."""
        ring, n = self._ring, len(bins)
        cap, size = len(ring), len(self._counts)
        if n >= cap:
            ring[:] = bins[n - cap:]
            self._pos, self._filled = 0, cap
            self._counts = np.bincount(ring, minlength=size).astype(np.int64)
            return
        first = min(n, cap - self._pos)
        # While the ring is filling, the slots from _pos on are empty and those before it are the oldest.
        self._replace(self._pos, bins[:first], evict=self._filled == cap)
        if first < n:
            self._replace(0, bins[first:], evict=True)
        self._pos = (self._pos + n) % cap
        self._filled = min(cap, self._filled + n)

    def _replace(self, start: int, bins: np.ndarray, *, evict: bool) -> None:
        end = start + len(bins)
        size = len(self._counts)
        if evict:
            self._counts -= np.bincount(self._ring[start:end], minlength=size)
        self._counts += np.bincount(bins, minlength=size)
        self._ring[start:end] = bins

    def psi(self) -> PsiTest | None:
        """The window against the reference; None until the reference is complete and the window holds
        ``VALUES_PER_BIN`` values per bin (or is full)."""
        ref = self.reference
        if ref is None or self._filled < min(len(self._ring), VALUES_PER_BIN * len(self._counts)):
            return None
        return psi_test_shares(ref.shares, ref.values, self._counts / self._filled, self._filled)

    def describe(self) -> dict[str, Any]:
        t = self.psi()
        value = None if t is None else round(t.value, 6)
        doc: dict[str, Any] = {
            "state": "measuring" if t is not None else "filling window" if self.reference is not None
            else "collecting reference",
            "psi": value, "verdict": verdict(value),
            "raw": None if t is None else round(t.raw, 6), "noise": None if t is None else round(t.noise, 6),
            "reference": self.reference.source if self.reference is not None else None,
            "reference_predictions": self.reference_values // self.width,
            "reference_size": self.reference.values // self.width if self.reference is not None
            else self.reference_size,
            "window_predictions": self._filled // self.width,
            "window_size": len(self._ring) // self.width,
        }
        return doc


# ---- reference files: outputs of `inferlane batch run` ---------------------------------------------------

def _data_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".parquet", ".jsonl")
                  and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts))


def _parquet_columns(path: Path, names: list[str]) -> dict[str, list[np.ndarray]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading a Parquet reference needs pyarrow: "
                          "pip install 'inferlane[batch]'") from None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ConfigError(f"{path}: not a readable Parquet file: {e}") from None
    out: dict[str, list[np.ndarray]] = {}
    for name in names:
        if name not in table.column_names:
            continue
        col = table.column(name).combine_chunks()
        while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) \
                or pa.types.is_large_list(col.type):
            col = col.flatten()
        try:
            out[name] = [np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)]
        except (TypeError, ValueError, pa.ArrowException):
            raise ConfigError(f"{path}: column {name!r} is not numeric ({col.type})") from None
    return out


def _jsonl_columns(path: Path, names: list[str]) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                    for name in names:
                        if isinstance(row, dict) and name in row:
                            out.setdefault(name, []).append(np.asarray(row[name], dtype=np.float64).ravel())
                except (orjson.JSONDecodeError, TypeError, ValueError) as e:
                    raise ConfigError(f"{path}, line {number}: not a JSON object of numeric outputs: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    return out


def read_reference(path: Path, outputs: Iterable[str]) -> dict[str, np.ndarray]:
    """Every finite value of each named output in a Parquet or JSONL file (or a batch output folder
    of them); ConfigError names the file and what is wrong."""
    names = list(outputs)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    files = _data_files(path)
    if not files:
        raise ConfigError(f"{path}: holds no .parquet or .jsonl file (write one with inferlane batch run)")
    parts: dict[str, list[np.ndarray]] = {}
    for file in files:
        suffix = file.suffix.lower()
        if suffix not in (".parquet", ".jsonl"):
            raise ConfigError(f"{file}: a reference is a .parquet or .jsonl output of inferlane batch run")
        found = (_parquet_columns if suffix == ".parquet" else _jsonl_columns)(file, names)
        for name, arrays in found.items():
            parts.setdefault(name, []).extend(arrays)
    missing = [n for n in names if n not in parts]
    if missing:
        raise ConfigError(f"{path}: no column {missing[0]!r}; a reference needs one column per numeric output "
                          f"({', '.join(names)}), as inferlane batch run writes them")
    values = {}
    for name, arrays in parts.items():
        v = np.concatenate(arrays) if arrays else np.zeros(0)
        values[name] = v[np.isfinite(v)]
        if len(values[name]) < 2 * VALUES_PER_BIN:
            raise ConfigError(f"{path}: column {name!r} has {len(values[name])} values; a reference needs "
                              f"at least {2 * VALUES_PER_BIN}")
    return values


# ---- the monitor -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _ModelDrift:
    """One model's drift settings, read once."""

    spec: DriftSpec
    outputs: dict[str, int]
    """Numeric outputs tracked, with their values per prediction."""
    inputs: dict[str, int]
    references: dict[str, Reference]
    """Per output, the reference from ``reference_file`` (empty without one)."""


def _width(t: TensorSpec) -> int:
    return t.row_elements or 1  # a variable dimension: the window counts values


def _numeric(specs: Iterable[TensorSpec]) -> dict[str, int]:
    return {t.name: _width(t) for t in specs if t.datatype != "BYTES"}


Key = tuple[str, str, str]
"""(model, version, lane)."""


class DriftMonitor:
    """See the module docstring. ConfigError (one line naming the file) for a bad ``reference_file``."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self.router: Router = registry.router
        self._models: dict[str, _ModelDrift | None] = {}
        """Per model its settings, None when drift is off (or its reference file broke after start)."""
        self._tracks: dict[Key, dict[tuple[str, str], Track]] = {}
        """Per (model, version, lane): per (kind, tensor) its track."""
        self._stable: dict[str, str] = {}
        self._pending: list[Outcome] = []
        self._psi = metrics.gauge("inferlane_drift_psi", "PSI of an output's recent values (drift.window_size "
                                  "predictions) against its reference, less sampling noise", ("output",))
        self._input_psi = metrics.gauge("inferlane_drift_input_psi", "PSI of an input's recent values against "
                                        "the version's first drift.reference_size predictions", ("input",))
        for name in list(registry.entries):
            self._models[name] = self._configure(name)  # a bad reference file fails the start, in one line
        self.router.subscribe(self.record)

    def _configure(self, model: str) -> _ModelDrift | None:
        entry = self.registry.entries.get(model)
        if entry is None or not entry.config.drift.enabled:
            return None
        spec = entry.config.drift
        outputs = _numeric(entry.config.outputs)
        references: dict[str, Reference] = {}
        if spec.reference_file is not None and outputs:
            path = entry.path / spec.reference_file
            try:
                values = read_reference(path, outputs)
            except ConfigError as e:
                raise ConfigError(f"model {model}: drift.reference_file: {e.message}") from None
            for name, v in values.items():
                window = min(spec.window_size, MAX_VALUES // outputs[name]) * outputs[name]
                references[name] = Reference.of(v, window, f"file {spec.reference_file} "
                                                           f"({len(v) // outputs[name]} predictions)")
        return _ModelDrift(spec, outputs, _numeric(entry.config.inputs) if spec.inputs else {}, references)

    def _settings(self, model: str) -> _ModelDrift | None:
        if model not in self._models:  # a model folder that appeared while serving
            try:
                self._models[model] = self._configure(model)
            except ConfigError as e:
                log.error("drift monitoring of model %s is off: %s", model, e.message)
                self._models[model] = None
        return self._models[model]

    # -- the listener (every unpinned outcome, on the event loop) --------------------------------------

    def record(self, o: Outcome) -> None:
        """Keep one outcome for the next fold: an append, and a fold every ``FOLD_EVERY`` outcomes."""
        if not o.ok or o.outputs is None or self._models.get(o.model, o) is None:  # failed, or drift is off
            return
        pending = self._pending
        pending.append(o)
        if len(pending) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> set[Key]:
        """Move the pending outcomes into their windows, in one vectorised pass per tensor; sets the
        gauges of what changed and returns its keys."""
        pending, self._pending = self._pending, []
        groups: dict[Key, list[Outcome]] = {}
        for o in pending:
            groups.setdefault((o.model, o.version, "shadow" if o.shadow else "online"), []).append(o)
        for key, outcomes in groups.items():
            settings = self._settings(key[0])
            if settings is None:
                continue
            self._follow_promotion(key[0])
            tracks = self._tracks.setdefault(key, {})
            for kind, tensors in ((OUTPUTS, settings.outputs), (INPUTS, settings.inputs)):
                for name, width in tensors.items():
                    values = _values(outcomes, kind, name)
                    if values is None:
                        continue
                    track = tracks.get((kind, name))
                    if track is None:
                        track = tracks[(kind, name)] = Track(width, settings.spec.reference_size,
                                                             settings.spec.window_size,
                                                             settings.references.get(name) if kind == OUTPUTS else None)
                    track.add(values)
            self._set_gauges(key, tracks)
        return set(groups)

    def _follow_promotion(self, model: str) -> None:
        """A version that became stable (promoted) starts a fresh reference: until now it served a share."""
        try:
            stable = self.router.route(model).stable
        except ModelNotFound:
            return
        before = self._stable.get(model)
        self._stable[model] = stable
        if before is not None and before != stable:
            log.info("model %s: version %s became stable; its drift reference starts again", model, stable)
            self._forget((model, stable, "online"))

    def _set_gauges(self, key: Key, tracks: Mapping[tuple[str, str], Track]) -> None:
        for (kind, name), track in tracks.items():
            t = track.psi()
            if t is not None:
                gauge = self._psi if kind == OUTPUTS else self._input_psi
                gauge.labels(*key, name).set(t.value)

    def _forget(self, key: Key) -> None:
        for kind, name in self._tracks.pop(key, {}):
            gauge = self._psi if kind == OUTPUTS else self._input_psi
            with contextlib.suppress(KeyError):  # never measured
                gauge.remove(*key, name)

    # -- periodic work and reading ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Fold what is pending and forget versions no longer loaded (their gauges go too)."""
        self.fold()
        for key in list(self._tracks):
            model, version, _ = key
            if version not in self.registry.versions(model):
                self._forget(key)

    async def run(self, interval_s: float = REFRESH_S) -> None:
        """:meth:`refresh` every ``interval_s`` until cancelled (quiet models' gauges stay current)."""
        while True:
            self.refresh()
            await asyncio.sleep(interval_s)

    def report(self, model: str) -> dict[str, Any]:
        """JSON-ready: the model's settings and, per version and lane, each tensor's state and PSI."""
        self.fold()
        settings = self._settings(model)
        if settings is None:
            return {"model": model, "enabled": False, "versions": []}
        spec = settings.spec
        route = self.router.route(model)
        versions = []
        for (m, version, lane), tracks in sorted(self._tracks.items()):
            if m != model:
                continue
            doc: dict[str, Any] = {"version": version, "lane": lane, "stable": version == route.stable}
            for kind in (OUTPUTS, INPUTS):
                found = {name: t.describe() for (k, name), t in sorted(tracks.items()) if k == kind}
                if found or kind == OUTPUTS:
                    doc[kind] = found
            versions.append(doc)
        return {"model": model, "enabled": True, "reference_size": spec.reference_size,
                "window_size": spec.window_size, "inputs": spec.inputs, "reference_file": spec.reference_file,
                "versions": versions}


def _values(outcomes: list[Outcome], kind: str, name: str) -> np.ndarray | None:
    """Every value of one tensor over ``outcomes``, flattened (float64); None when none has it."""
    parts = []
    for o in outcomes:
        tensors = o.outputs if kind == OUTPUTS else o.inputs
        if tensors is None:
            continue
        arr = tensors.get(name)
        if arr is not None and arr.dtype.kind in NUMERIC_KINDS:
            parts.append(arr.reshape(-1))
    if not parts:
        return None
    values = np.concatenate(parts).astype(np.float64, copy=False)
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


__all__ = ["DriftMonitor", "Reference", "Track", "read_reference", "verdict"]
