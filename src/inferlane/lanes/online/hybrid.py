"""The hybrid lane: answers precomputed in bulk, served by key with a freshness bound, scored live
when the stored answer is missing, too old or from another version; and online features, fetched
by key and merged with the request's own fields before the model (docs/hybrid.md).

    keyed = KeyedLane(online_lane)
    result = await keyed.infer(mv, inputs_or_None, ["u-1", "u-2"], timeout_s=0.1)
    result.sources      # ["precomputed", "live"]: per key, where its answer came from
    result.ages         # [312.5, None]: seconds since the stored answer was computed

The rule for a stored answer, per key (``hybrid`` in model.yaml):

- ``missing``: nothing stored (or a value that cannot be decoded, or lacks a declared output);
- ``other_version``: computed by another version than the one the router chose for this request;
- ``stale``: computed longer than ``hybrid.max_age`` ago;
- else ``hit``: answered from the store, bit for bit what the batch lane wrote.

Everything but a hit is scored live when the request carries inputs (and written back with
``hybrid.write_back``). A request with keys and no inputs is answered from the store only: 404
naming the reason of every key that is not a hit. A store that fails (down, too slow) is skipped
for ``RETRY_AFTER_S`` and counted; requests with inputs are scored live meanwhile, those without
get 503. The stores are shared by URL: a hybrid store and a feature store with one URL are one
client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from inferlane.core import codec
from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable
from inferlane.core.inputs.signature import shape_ok
from inferlane.core.metrics import Metrics
from inferlane.core.model import ModelVersion
from inferlane.core.spec import FeaturesSpec, ModelConfig
from inferlane.core.urls import redact, redact_text
from inferlane.lanes.online import OnlineLane, OnlineResult
from inferlane.store import kv

log = logging.getLogger(__name__)

HIT, MISSING, STALE, OTHER_VERSION, UNAVAILABLE = "hit", "missing", "stale", "other_version", "unavailable"
PRECOMPUTED, LIVE = "precomputed", "live"
RETRY_AFTER_S = 1.0
"""After a failure, a store is skipped for this long before it is tried again."""
TIMEOUTS_TO_DOWN = 5
"""Lookups past ``lookup_timeout_ms`` in a row that mark a store down (one that refuses connections
is down at the first failure)."""
WRITE_BACK_LIMIT = 256
"""Write-backs in flight at once per process; more are dropped (counted), never queued."""
KEY_PARAMETER = "key"


class NotPrecomputed(NotFound):
    """A request without inputs whose key(s) have no servable stored answer (404 with the reasons)."""

    def __init__(self, model: str, reasons: dict[str, str]) -> None:
        first = next(iter(reasons.items()))
        more = f" (and {len(reasons) - 1} more keys)" if len(reasons) > 1 else ""
        super().__init__(f"model {model}: no precomputed answer for key {first[0][:100]!r}: {first[1]}{more}; "
                         "send the inputs to score it live")
        self.details = {"reason": first[1], "reasons": reasons} if len(reasons) > 1 else {"reason": first[1]}


class StoreUnavailable(Unavailable):
    """The store cannot be read now and the request has no inputs to score live."""


def request_keys(parameters: Mapping[str, Any], max_keys: int) -> list[str] | None:
    """``parameters.key``: one key (a string) or a list of them; None when absent."""
    raw = parameters.get(KEY_PARAMETER)
    if raw is None:
        return None
    if isinstance(raw, str):
        return [kv.check_key(raw, "parameters.key")]
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("parameters.key must be a string or a non-empty list of strings")
    if len(raw) > max_keys:
        raise PayloadTooLarge(f"parameters.key has {len(raw)} keys; this model takes at most {max_keys} per request")
    keys = [kv.check_key(k, f"parameters.key[{i}]") for i, k in enumerate(raw)]
    if len(set(keys)) != len(keys):
        raise InvalidInput("parameters.key lists a key twice")
    return keys


def max_keys(config: ModelConfig) -> int:
    """Keys one request may name (``hybrid.max_keys``; 1000 for a features-only model)."""
    return config.hybrid.max_keys if config.hybrid is not None else 1000


@dataclass(frozen=True, slots=True)
class Routing:
    """Where one V2 request goes, as every transport decides it (:func:`route_request`)."""

    model: ModelVersion
    keys: list[str] | None
    """``parameters.key`` when the model answers by key (``hybrid:`` or ``features:``), else None."""
    key: str | None
    """The routing key (sticky canary): the header's, ``parameters.routing_key``, or the one key."""


def route_request(lane: OnlineLane, keyed: bool, mv: ModelVersion, inputs: Mapping[str, np.ndarray],
                  parameters: Mapping[str, Any], *, pinned: bool, key: str | None) -> Routing:
    """The one rule, for HTTP and gRPC alike, after the request was decoded against ``mv`` (the
    router's first choice): which keys it asks for, its routing key, and the version that answers.
    ``keyed``: the server answers by key; ``pinned``: the request named its version."""
    keys = None
    if keyed and KeyedLane.wants(mv.config):
        keys = request_keys(parameters, max_keys(mv.config))
        if keys is None and mv.config.features is not None:
            raise InvalidInput(f"model {mv.name} takes stored features by key: send parameters.key")
    elif not inputs:
        raise InvalidInput(f"model {mv.name} answers no request by key (no hybrid: or features: section): send inputs")
    if key is None:
        if parameters:
            key = codec.routing_key(parameters.get("routing_key"), "parameters.routing_key")
        if key is None and keys is not None and len(keys) == 1:
            key = keys[0]  # one user sees one version
        if key is not None and not pinned:
            mv = lane.registry.get(mv.name, None, key)
    return Routing(mv, keys, key)


# -- stores ---------------------------------------------------------------------------------------


class StoreLink:
    """One key-value store as the server uses it: the async client, the skip-after-failure rule,
    health for ``/v2/health/ready`` and the store's metrics."""

    def __init__(self, url: str, metrics: Metrics, flag: str) -> None:
        self.url = url
        self.description = redact(url)
        self.store: kv.AsyncKVStore = kv.open_async_kv(url, flag=flag)
        self.error: str | None = None
        self.down_since: float | None = None
        self._retry_at = 0.0
        self._errors = metrics.counter("inferlane_store_errors_total",
                                       "Failed or too slow key-value store operations", ("store", "op"))
        self._timeouts = 0
        """Timeouts in a row."""
        self._waiting: list[tuple[Sequence[str], asyncio.Future[list[bytes | None] | None]]] = []
        self._reader: asyncio.Task[None] | None = None
        """The task reading for the waiting requests, while one runs."""
        self._up_child = metrics.gauge("inferlane_store_up", "1 while the key-value store answers, 0 after a failure",
                                       ("store",)).labels("", "", "hybrid", self.description)
        self._up_child.set(1)

    @property
    def up(self) -> bool:
        return self.down_since is None

    def health(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"up": self.up}
        if self.down_since is not None:
            doc["error"] = self.error
            doc["down_for_s"] = round(time.time() - self.down_since, 3)
        return doc

    def failed(self, op: str, e: BaseException) -> None:
        """Count a failed operation. A read that could not connect (or the ``TIMEOUTS_TO_DOWN``-th
        timeout in a row) marks the store down: it is skipped for ``RETRY_AFTER_S``. A single timeout
        only sends its own request live: an event loop busy with other requests can fire the
        timer before it reads a reply that already arrived."""
        self._errors.labels("", "", "hybrid", self.description, op).inc()
        if op == "write":  # a failed write-back costs nothing but its answer: reads decide health
            return
        timed_out = isinstance(e, TimeoutError)
        if timed_out:
            self._timeouts += 1
            if self._timeouts < TIMEOUTS_TO_DOWN:
                return
        reason = "timed out" if timed_out else redact_text(str(e))[:300] or type(e).__name__
        if self.down_since is None:
            self.down_since = time.time()
            log.warning("key-value store %s failed (%s): requests with inputs are scored live; retrying every %.0f s",
                        self.description, reason, RETRY_AFTER_S)
        self.error = reason
        self._retry_at = time.monotonic() + RETRY_AFTER_S
        self._up_child.set(0)

    async def get_many(self, keys: Sequence[str], timeout_s: float) -> list[bytes | None] | None:
        """The stored values, or None when the store failed now or is down (within RETRY_AFTER_S of a failure)."""
        if self.down_since is not None and time.monotonic() < self._retry_at:
            return None
        if not self.store.remote:
            # An embedded store answers on the loop itself, in one call no timer could interrupt: its
            # reads need no timer (one per lookup was 6 % of a hit's CPU).
            try:
                found = await self.store.get_many(keys)
            except (kv.StoreError, OSError) as e:
                self.failed("read", e)
                return None
            self._answered()
            return found
        try:
            async with asyncio.timeout(timeout_s):  # a timer, not a task per lookup as wait_for makes
                waiter: asyncio.Future[list[bytes | None] | None] = asyncio.get_running_loop().create_future()
                self._waiting.append((keys, waiter))
                if self._reader is None:
                    self._reader = asyncio.get_running_loop().create_task(self._read_waiting())
                return await waiter
        except (kv.StoreError, TimeoutError, OSError) as e:
            self.failed("read", e)
            return None

    async def _read_waiting(self) -> None:
        """Gather reads: the keys of every request waiting go to the store in one read; requests that
        arrive while it runs wait for the next one. At light load a request's read starts at once; under
        load one round trip (and one client call, ~100 us of CPU with redis-py) serves many requests."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                keys = [k for ks, _ in batch for k in ks]
                try:
                    found = await self.store.get_many(keys)
                except (kv.StoreError, OSError) as e:
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(e)
                    continue
                self._answered()
                at = 0
                for ks, waiter in batch:
                    if not waiter.done():  # not timed out meanwhile
                        waiter.set_result(found[at:at + len(ks)])
                    at += len(ks)
        finally:
            self._reader = None

    def _answered(self) -> None:
        self._timeouts = 0
        if self.down_since is not None:
            log.warning("key-value store %s answers again after %.1f s", self.description,
                        time.time() - self.down_since)
            self.down_since = None
            self.error = None
            self._up_child.set(1)

    async def aclose(self) -> None:
        await self.store.aclose()


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyedResult:
    model: ModelVersion
    outputs: dict[str, np.ndarray]
    sources: list[str]
    """Per key: ``precomputed`` or ``live``."""
    ages: list[float | None]
    """Per key: seconds since its stored answer was computed (None when scored live)."""
    lookup_s: float
    """Time spent reading the stores (precomputed answers and features)."""
    features_s: float
    live: OnlineResult | None
    """The live part, when any key was scored live."""
    total_s: float

    @property
    def source(self) -> str:
        """``precomputed``, ``live``, or ``mixed`` when the keys differ."""
        first = self.sources[0]
        return first if all(s == first for s in self.sources) else "mixed"

    @property
    def age_s(self) -> float | None:
        """The oldest precomputed answer's age (None when every key was scored live)."""
        ages = [a for a in self.ages if a is not None]
        return max(ages) if ages else None

    def parameters(self) -> dict[str, Any]:
        """What the V2 response's ``parameters`` carry."""
        doc: dict[str, Any] = {"source": self.source, "age_s": None if self.age_s is None else round(self.age_s, 3),
                               "model_version": self.model.version}
        if len(self.sources) > 1:
            doc["sources"] = self.sources
            doc["ages_s"] = [None if a is None else round(a, 3) for a in self.ages]
        return doc


@dataclass(slots=True)
class _Series:
    lookups: Counter
    lookup_seconds: Histogram
    write_backs: Counter
    features: Counter


@dataclass(frozen=True, slots=True)
class _Children:
    lookups: dict[str, Counter]
    lookup_seconds: Histogram
    expected: tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]
    """(name, dtype, declared shape) of each output: what a stored answer must hold to be served."""


class KeyedLane:
    """Requests that carry keys, for models with ``hybrid:`` or ``features:`` in model.yaml."""

    def __init__(self, online: OnlineLane) -> None:
        self.online = online
        self.metrics = online.metrics
        self._links: dict[str, StoreLink] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._by_version: dict[tuple[str, str], _Children] = {}
        m = self.metrics
        self._series = _Series(
            m.counter("inferlane_hybrid_lookups_total", "Keys looked up for precomputed answers, by result "
                      "(hit, missing, stale, other_version, unavailable)", ("result",)),
            m.histogram("inferlane_hybrid_lookup_seconds", "Time to read the stored answers of one request"),
            m.counter("inferlane_hybrid_write_backs_total", "Live answers written back to the store, by outcome "
                      "(written, older, failed, dropped)", ("outcome",)),
            m.counter("inferlane_feature_lookups_total", "Keys looked up for stored features, by result "
                      "(hit, missing, stale, unavailable)", ("result",)),
        )

    @staticmethod
    def wants(config: ModelConfig) -> bool:
        return config.hybrid is not None or config.features is not None

    def _children(self, mv: ModelVersion) -> _Children:
        """The labelled series and the expected outputs of one version, made once (no label lookups per request)."""
        found = self._by_version.get((mv.name, mv.version))
        if found is None:
            labels = (mv.name, mv.version, "hybrid")
            found = _Children(
                {r: self._series.lookups.labels(*labels, r) for r in (HIT, MISSING, STALE, OTHER_VERSION, UNAVAILABLE)},
                self._series.lookup_seconds.labels(*labels),
                tuple((spec.name, to_numpy(spec.datatype), spec.shape) for spec in mv.config.outputs))
            self._by_version[(mv.name, mv.version)] = found
        return found

    def link(self, url: str, flag: str) -> StoreLink:
        found = self._links.get(url)
        if found is None:
            found = self._links[url] = StoreLink(url, self.metrics, flag)
        return found

    def open_stores(self, configs: Sequence[ModelConfig]) -> None:
        """Open the stores these models name (at start: a wrong URL is a start-up error, not a 500 later)."""
        for c in configs:
            if c.hybrid is not None:
                self.link(c.hybrid_store, f"{c.name}: hybrid.store")
            if c.features is not None:
                self.link(c.features_store, f"{c.name}: features.store")

    def health(self) -> dict[str, Any]:
        """Per store: whether it answers (``/v2/health/ready`` detail)."""
        return {link.description: link.health() for link in self._links.values()}

    async def aclose(self) -> None:
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=5)
        for link in self._links.values():
            await link.aclose()

    # -- one request ------------------------------------------------------------------------------

    async def infer(self, mv: ModelVersion, inputs: Mapping[str, np.ndarray] | None, keys: list[str],
                    timeout_s: float | None = None, *, routed: bool = False, key: str | None = None) -> KeyedResult:
        """Answer ``keys`` (one row each) from the store where it may, live otherwise."""
        start = time.monotonic()
        config = mv.config
        hybrid = config.hybrid
        if inputs is not None:
            _check_rows(inputs, len(keys))
        n = len(keys)
        results: list[str] = [MISSING] * n
        stored: list[kv.Stored | None] = [None] * n
        lookup_s = 0.0
        if hybrid is not None:
            t0 = time.monotonic()
            link = self.link(config.hybrid_store, f"{config.name}: hybrid.store")
            raw = await link.get_many(keys, hybrid.lookup_timeout_ms / 1000.0)
            lookup_s = time.monotonic() - t0
            children = self._children(mv)
            children.lookup_seconds.observe(lookup_s)
            if raw is None:
                results = [UNAVAILABLE] * n
            else:
                now = time.time()
                for i, value in enumerate(raw):
                    results[i], stored[i] = _judge(value, children.expected, mv, now, hybrid.max_age)
            if n == 1:
                children.lookups[results[0]].inc()
            else:
                for r in set(results):
                    children.lookups[r].inc(results.count(r))
        live_rows = [i for i, r in enumerate(results) if r != HIT]
        if live_rows and inputs is None:
            if hybrid is None:
                raise InvalidInput(f"model {config.name} has no precomputed answers (no hybrid: section); "
                                   "send the inputs with the key")
            if results[live_rows[0]] == UNAVAILABLE:
                link = self.link(config.hybrid_store, "")
                raise StoreUnavailable(f"model {config.name}: the store {link.description} cannot be read "
                                       f"({link.error}); send the inputs to score live")
            raise NotPrecomputed(config.name, {keys[i]: results[i] for i in live_rows})
        now = time.time()
        ages: list[float | None] = [None if s is None or results[i] != HIT else max(0.0, now - s.computed_at)
                                    for i, s in enumerate(stored)]
        live: OnlineResult | None = None
        features_s = 0.0
        live_outputs: dict[str, np.ndarray] | None = None
        if live_rows:
            assert inputs is not None
            part = inputs if len(live_rows) == n else {k: v[live_rows] for k, v in inputs.items()}
            part_keys = [keys[i] for i in live_rows]
            if config.features is not None:
                t0 = time.monotonic()
                part = await self._with_features(mv, config.features, part, part_keys)
                features_s = time.monotonic() - t0
            remaining = None if timeout_s is None else max(0.0, timeout_s - (time.monotonic() - start))
            live = await self.online.infer_on(mv, part, remaining, routed=routed, key=key)
            mv = live.model  # the router's current choice if mv started unloading
            live_outputs = live.prediction.outputs
            if hybrid is not None and hybrid.write_back:
                self._write_back(mv, part_keys, live_outputs)
        outputs = _merge(config, n, live_rows, live_outputs, stored)
        sources = [LIVE if r != HIT else PRECOMPUTED for r in results]
        total = time.monotonic() - start
        if not live_rows:  # a live part is counted by the online lane
            self.online.observe(mv.name, mv.version, "200", total, "hybrid")
        return KeyedResult(mv, outputs, sources, ages, lookup_s, features_s, live, total)

    # -- online features --------------------------------------------------------------------------

    async def _with_features(self, mv: ModelVersion, spec: FeaturesSpec, inputs: Mapping[str, np.ndarray],
                             keys: list[str]) -> dict[str, np.ndarray]:
        """The model's inputs: ``spec.input`` assembled from request fields and stored features in
        the declared order, the request's other inputs as they are."""
        config = mv.config
        target = next(s for s in config.inputs if s.name == spec.input)
        n = len(keys)
        missing_fields = [f for f in spec.request_fields if f not in inputs]
        if missing_fields:
            raise InvalidInput(f"model {config.name} needs the request fields {list(spec.request_fields)} as inputs "
                               f"(one value per key); missing {missing_fields}")
        link = self.link(config.features_store, f"{config.name}: features.store")
        raw = await link.get_many(keys, spec.lookup_timeout_ms / 1000.0)
        counter = self._series.features
        if raw is None:
            counter.labels(mv.name, mv.version, "features", UNAVAILABLE).inc(n)
            raise Unavailable(f"model {config.name}: the feature store {link.description} cannot be read "
                              f"({link.error})")
        now = time.time()
        dtype = to_numpy(target.datatype)
        matrix = np.empty((n, len(spec.fields)), dtype=dtype)
        stored_cols: dict[str, list[float | None]] = {f: [None] * n for f in spec.store_fields}
        results = {HIT: 0, MISSING: 0, STALE: 0}
        for i, value in enumerate(raw):
            row = _feature_row(value, spec, now)
            if isinstance(row, str):
                results[row] += 1
                if spec.missing == "reject":
                    raise InvalidInput(f"model {config.name}: no stored features for key {keys[i][:100]!r} ({row})")
                continue
            results[HIT] += 1
            for f in spec.store_fields:
                stored_cols[f][i] = row.get(f)
        for r, count in results.items():
            if count:
                counter.labels(mv.name, mv.version, "features", r).inc(count)
        for j, field in enumerate(spec.fields):
            if field.source == "request":
                col = np.asarray(inputs[field.name])
                if col.shape not in ((n,), (n, 1)):
                    raise InvalidInput(f"input {field.name!r} must have shape [{n}] or [{n}, 1] (one value per key), "
                                       f"not {list(col.shape)}")
                if col.dtype == object or col.dtype.kind not in "biuf":
                    raise InvalidInput(f"input {field.name!r} must be numeric")
                matrix[:, j] = col.reshape(n)
            else:
                default = 0.0 if field.default is None else field.default
                values = stored_cols[field.name]
                if spec.missing == "reject" and any(v is None for v in values):
                    i = values.index(None)
                    raise InvalidInput(f"model {config.name}: the stored features of key {keys[i][:100]!r} "
                                       f"lack {field.name!r}")
                matrix[:, j] = [default if v is None else v for v in values]
        out = {k: v for k, v in inputs.items() if k not in spec.request_fields}
        out[spec.input] = matrix
        return out

    # -- write-back -------------------------------------------------------------------------------

    def _write_back(self, mv: ModelVersion, keys: list[str], outputs: Mapping[str, np.ndarray]) -> None:
        hybrid = mv.config.hybrid
        assert hybrid is not None
        counter = self._series.write_backs
        if len(self._writes) >= WRITE_BACK_LIMIT:
            counter.labels(mv.name, mv.version, "hybrid", "dropped").inc(len(keys))
            return
        link = self.link(mv.config.hybrid_store, "")
        if not link.up:
            counter.labels(mv.name, mv.version, "hybrid", "failed").inc(len(keys))
            return
        values = kv.encode_rows(mv.name, mv.version, time.time(), outputs)

        async def write() -> None:
            try:
                written = await link.store.put_many(list(zip(keys, values, strict=True)), hybrid.write_back_ttl)
            except (kv.StoreError, OSError) as e:
                link.failed("write", e)
                counter.labels(mv.name, mv.version, "hybrid", "failed").inc(len(keys))
                return
            counter.labels(mv.name, mv.version, "hybrid", "written").inc(written)
            if written < len(keys):
                counter.labels(mv.name, mv.version, "hybrid", "older").inc(len(keys) - written)

        task = asyncio.get_running_loop().create_task(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)


def _check_rows(inputs: Mapping[str, np.ndarray], n: int) -> None:
    for name, arr in inputs.items():
        rows = arr.shape[0] if arr.ndim else 1
        if rows != n:
            raise InvalidInput(f"input {name!r} has {rows} rows but parameters.key names {n} keys: "
                               f"send one row per key, in the same order")


def _judge(value: bytes | None, expected: tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...],
           mv: ModelVersion, now: float, max_age: float) -> tuple[str, kv.Stored | None]:
    """One stored value against the rule: (result, the decoded value when it is a hit)."""
    if value is None:
        return MISSING, None
    try:
        s = kv.decode(value)
    except ValueError:
        log.warning("model %s: a stored answer cannot be decoded; scoring it live", mv.name)
        return MISSING, None
    if s.version != mv.version or s.model != mv.name:
        return OTHER_VERSION, None
    if now - s.computed_at > max_age:
        return STALE, None
    arrays = s.arrays
    for name, dtype, shape in expected:
        arr = arrays.get(name)
        if arr is None or arr.dtype != dtype or not shape_ok((1, *arr.shape), shape):
            return MISSING, None
    return HIT, s


def _feature_row(value: bytes | None, spec: FeaturesSpec, now: float) -> dict[str, float] | str:
    """The stored features of one key as scalars, or the reason there are none."""
    if value is None:
        return MISSING
    try:
        s = kv.decode(value)
    except ValueError:
        return MISSING
    if spec.max_age is not None and now - s.computed_at > spec.max_age:
        return STALE
    row: dict[str, float] = {}
    for f in spec.store_fields:
        arr = s.arrays.get(f)
        if arr is not None and arr.size == 1 and arr.dtype.kind in "biuf":
            row[f] = arr.reshape(()).item()
    return row


def _merge(config: ModelConfig, n: int, live_rows: list[int], live: Mapping[str, np.ndarray] | None,
           stored: list[kv.Stored | None]) -> dict[str, np.ndarray]:
    """Every output with one row per key: stored rows for hits, live rows for the rest, in key order."""
    if live is not None and len(live_rows) == n:
        return dict(live)
    if n == 1:  # one precomputed answer: its rows as a batch of one
        only = stored[0]
        assert only is not None
        return {spec.name: only.arrays[spec.name][None] for spec in config.outputs}
    out: dict[str, np.ndarray] = {}
    for spec in config.outputs:
        rows: list[np.ndarray] = []
        live_pos = 0
        for i in range(n):
            s = stored[i]
            if s is not None:
                rows.append(s.arrays[spec.name])
            else:
                assert live is not None
                rows.append(live[spec.name][live_pos])
                live_pos += 1
        try:
            out[spec.name] = np.stack(rows).astype(to_numpy(spec.datatype), copy=False)
        except ValueError:
            raise InvalidInput(f"output {spec.name!r}: the stored and live rows have different shapes "
                               "(a variable dimension); ask for fewer keys per request") from None
    return out
