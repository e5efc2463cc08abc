"""The stream lane into a key-value store (``--sink store://NAME`` or ``redis://...?prefix=NAME``): each
scored event's outputs under its key with computed_at = now, so a stream update overrides last
night's batch value, and never a newer one; a store outage is a transient SinkError."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from inferlane.core.errors import ConfigError
from inferlane.core.model import ModelVersion
from inferlane.lanes.stream.sinks import KVSink, RecordSink, Scored, SinkError, open_stream_sink
from inferlane.store.kv import decode, encode_rows, open_kv
from inferlane.testing import RestartableRedis
from tests.stream.support import finish, fraud_events, start_lane, stream_url, xadd_events

N = 300


def batch_value(computed_at: float) -> bytes:
    """A value as the batch lane writes it (another prediction, so an override is visible)."""
    return encode_rows("fraud", "1", computed_at, {"label": np.array([7]),
                                                    "probabilities": np.array([[0.5, 0.5]], np.float32)})[0]


@pytest.mark.e2e
def test_stream_overrides_older_batch_values_and_never_newer_ones(model_repo: Path, stream_redis_url: str,
                                                                  topic_prefix: str) -> None:
    events = fraud_events(N)
    ns = f"s{topic_prefix}"
    store = open_kv(f"store://{ns}")
    try:
        # Last night's batch (e0), and a value written in the future (e1): the stream beats only the first.
        store.put_many([("e0", batch_value(time.time() - 86_400)), ("e1", batch_value(time.time() + 86_400))])
        xadd_events(stream_redis_url, f"{topic_prefix}:events", events)
        since = time.time()
        proc = start_lane(model_repo / "fraud", stream_url(stream_redis_url, f"{topic_prefix}:events"),
                          f"{topic_prefix}-scorer", f"store://{ns}", "--dlq",
                          stream_url(stream_redis_url, f"{topic_prefix}:dlq"), "--idle-exit", "2", "--max-batch", "64")
        code, _, stderr = finish(proc)
        assert code == 0, stderr[-4000:]
        got = {e["id"]: store.get_many([e["id"]])[0] for e in events}
    finally:
        store.close()

    model = ModelVersion.open(model_repo / "fraud", None, 1)
    try:
        want = model.forward({"features": np.asarray([e["features"] for e in events], dtype=np.float32)})
    finally:
        model.close()
    assert None not in got.values()
    for i, e in enumerate(events):
        raw = got[e["id"]]
        assert raw is not None
        stored = decode(raw)
        if e["id"] == "e1":  # newer than anything the stream wrote: kept
            assert int(stored.arrays["label"]) == 7 and stored.computed_at > time.time()
            continue
        assert (stored.model, stored.version) == ("fraud", "1")
        assert since <= stored.computed_at <= time.time()
        assert stored.arrays["label"].dtype == np.int64 and int(stored.arrays["label"]) == int(want["label"][i])
        assert stored.arrays["probabilities"].dtype == np.float32
        np.testing.assert_allclose(stored.arrays["probabilities"], want["probabilities"][i], rtol=1e-5, atol=1e-6)


def scored(keys: list[str | int]) -> Scored:
    n = len(keys)
    return Scored("fraud", "1", "id", keys, {"label": np.arange(n), "probabilities": np.full((n, 2), 0.5, np.float32)},
                  [0] * n)


def test_redis_prefix_sink_and_an_outage(tmp_path: Path, redis_url: str) -> None:
    sink = open_stream_sink(f"{redis_url}?prefix=sk", key_field="id")
    assert isinstance(sink, KVSink) and "prefix sk" in sink.description
    sink.write(scored(["a", 17, "", "k" * 2000]))  # keys a store cannot hold are skipped, not fatal
    store = open_kv(f"{redis_url}?prefix=sk")
    assert [v is not None for v in store.get_many(["a", "17"])] == [True, True]
    assert int(decode(store.get_many(["17"])[0] or b"").arrays["label"]) == 1
    store.close()
    sink.close()
    # A Redis URL naming a stream in its path stays a Redis stream sink.
    stream = open_stream_sink(f"{redis_url.rsplit('/', 1)[0]}/0/scores", key_field="id")
    assert isinstance(stream, RecordSink)
    stream.close()
    with pytest.raises(ConfigError, match="--table"):
        open_stream_sink("store://x", key_field="id", table="t")
    with pytest.raises(ConfigError, match="--ttl"):
        open_stream_sink(str(tmp_path / "folder"), key_field="id", ttl_s=60)
    # --ttl: the values a key-value sink writes expire in the store.
    expiring = open_stream_sink(f"{redis_url}?prefix=sttl", key_field="id", ttl_s=0.2)
    expiring.write(scored(["soon"]))
    expiring.close()
    store = open_kv(f"{redis_url}?prefix=sttl")
    assert store.get_many(["soon"])[0] is not None
    time.sleep(0.4)
    assert store.get_many(["soon"]) == [None]
    store.close()

    server = RestartableRedis(tmp_path / "redis")
    server.start()
    try:
        sink = open_stream_sink(f"{server.url}?prefix=sk", key_field="id")
        server.kill()
        with pytest.raises(SinkError) as info:
            sink.write(scored(["a"]))
        assert info.value.transient
        server.start()
        sink.write(scored(["a"]))  # recovered: the runner's retry succeeds
        sink.close()
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="cannot reach"):
        open_stream_sink(f"{server.url}?prefix=sk", key_field="id")
