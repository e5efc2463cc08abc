"""The events the benchmark produces and the outputs it reads back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson


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


def throughput(out: Outputs) -> float:
    """Outputs written after the first write, over the time from the first write to the last."""
    if out.records == 0:
        return float("nan")
    first, last = int(out.scored_ms.min()), int(out.scored_ms.max())
    if last == first:
        return float("nan")
    return float((out.scored_ms > first).sum()) / ((last - first) / 1000)
