"""What the hybrid benchmark runs against: the fraud demo model twice (one copy per store), the input
rows, and the request bodies of both kinds for the same rows.

    models = write_repository(work / "models", {"sqlite": "store://fraud", "redis": f"{url}?prefix=fraud"})
    write_bodies(work / "input", work, rows)   # work/hit.jsonl (key only), work/live.jsonl (inputs, no key)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import yaml

MODELS = {"sqlite": "fraud_sqlite", "redis": "fraud_redis"}
"""Store → the model serving from it (each copy's answers are stored under its own name)."""
DISTINCT_BODIES = 1000
"""Rows the requests cycle through (random keys of the precomputed ones)."""
BATCHING = {"max_queue_size": 4096}
"""A queue that holds the open loop's backlog: an overloaded phase is slow, not refused."""


def write_repository(repo: Path, stores: dict[str, str]) -> dict[str, Path]:
    """One fraud model (trained once), copied per store with a ``hybrid:`` section naming it; returns
    store → model folder."""
    from inferlane.demo.models import write_fraud_model

    base = write_fraud_model(repo, "fraud_base", rows=4000, batching=BATCHING)
    folders = {}
    for store, url in stores.items():
        folder = repo / MODELS[store]
        shutil.copytree(base, folder)
        cfg = yaml.safe_load((folder / "model.yaml").read_text())
        cfg.update(name=MODELS[store], hybrid={"store": url, "max_age": "7d"})
        (folder / "model.yaml").write_text(yaml.safe_dump(cfg))
        folders[store] = folder
    shutil.rmtree(base)
    return folders


def write_bodies(inp: Path, work: Path, rows: int) -> dict[str, Path]:
    """Request bodies for DISTINCT_BODIES random rows of the input, one JSON body per line: ``hit`` (the
    row's key only, answered from the store) and ``live`` (the same row's features, no key, scored);
    returns kind → file."""
    import pyarrow.parquet as pq

    first = pq.read_table(sorted(inp.glob("*.parquet"))[0])
    ids = np.random.default_rng(1).choice(min(rows, first.num_rows), DISTINCT_BODIES, replace=False)
    key = first.column("id").to_numpy()
    x = np.column_stack([c.to_numpy() for c in first.drop_columns(["id"]).columns]).astype(np.float32)
    hit = [orjson.dumps({"parameters": {"key": str(key[i])}}) for i in ids]
    live = [orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, x.shape[1]],
                                      "data": x[i].tolist()}]}) for i in ids]
    files = {"hit": work / "hit.jsonl", "live": work / "live.jsonl"}
    files["hit"].write_bytes(b"\n".join(hit) + b"\n")
    files["live"].write_bytes(b"\n".join(live) + b"\n")
    return files
