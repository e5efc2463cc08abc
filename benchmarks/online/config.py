"""What the online benchmark measures: models, modes, concurrencies, targets, and the run's options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

HOST = "127.0.0.1"
N_FEATURES = 30
CONCURRENCY = (1, 16, 64)
MODELS: dict[str, tuple[int, ...]] = {"small": (256, 256), "heavy": (1024, 1024, 1024)}
MODES = ("batching on", "batching off")
BATCHING_ON: dict[str, Any] = {"max_batch_size": 64, "max_queue_delay_ms": 2, "max_queue_size": 8192}
BATCHING_OFF: dict[str, Any] = {"enabled": False, "max_queue_size": 8192}
RAW_BATCH = 64
TARGETS: dict[str, tuple[float, float | None]] = {"heavy": (0.80, None), "small": (0.60, 50.0)}
"""At concurrency 64 with batching on: (fraction of ideal, p99 limit in ms or None)."""
REFERENCE: list[tuple[str, float, float | None]] = [
    ("Seldon MLServer", 1231, 160.0),
    ("KServe", 1131, None),
    ("LitServe", 691, None),
    ("BentoML", 431, None),
    ("naive Starlette calling ORT per request", 4450, None),
    ("bare Starlette constant", 16151, None),
]
"""Other servers on the small MLP at concurrency 64, same machine and pinning (rps, p99 ms)."""
CLIENT_BOUND_CPU = 0.90
"""A cell whose client used at least this share of its core is flagged: the client may be the
limit there, not the server."""
STALLED_CPU = 0.85
"""The bare endpoint at concurrency 16 or more below this share of its core is flagged stalled."""
NOISY_CPU = 0.10
"""A cell during which other processes used at least this share of a core is flagged noisy."""


@dataclass
class Options:
    warmup_s: float
    duration_s: float
    raw_s: float
    server_core: int
    client_core: int
    concurrency: tuple[int, ...]
    py_spy: Path | None
    verbose: bool
    wait_quiet_s: float = 0.0
    retry_noisy: int = 0


@dataclass
class DriverConfig:
    """What the load driver (``python -m benchmarks.online.driver``) runs against one cell."""

    port: int
    path: str
    concurrency: int
    warmup_s: float
    duration_s: float
    seed: int = 11
    distinct_bodies: int = 512


def infer_body(row: list[float]) -> bytes:
    """One Open Inference Protocol V2 request: a single row of 30 FP32 features."""
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, N_FEATURES], "data": row}]})


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def served_name(model: str, mode: str) -> str:
    return model if mode == "batching on" else f"{model}-nobatch"


def build_repository(repo: Path) -> None:
    """Every model twice: with dynamic batching on, and as ``<model>-nobatch`` with it off."""
    from inferlane.demo.models import write_mlp_model

    for model, hidden in MODELS.items():
        for mode in MODES:
            write_mlp_model(repo, served_name(model, mode), hidden, threads=1,
                            batching=BATCHING_ON if mode == "batching on" else BATCHING_OFF)
