"""What the online benchmark measures: models, servers, modes, concurrencies, the targets, and the
run's options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferlane.testing import LOOPBACK

HOST = LOOPBACK
UVICORN: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "access_log": False, "log_level": "warning",
                           "server_header": False, "proxy_headers": False}
"""How the bare and naive endpoints run uvicorn: the settings ``inferlane serve`` uses."""
N_FEATURES = 30
CONCURRENCY = (1, 8, 64)
"""wrk connections, each with one request in flight (a closed loop)."""
MODELS: dict[str, tuple[int, ...]] = {"small": (256, 256), "heavy": (1024, 1024, 1024)}
"""Random-weight ONNX MLPs: 30 -> hidden layers -> 2."""
BATCHING_ON: dict[str, Any] = {"max_batch_size": 64, "max_queue_delay_ms": 5}
BATCHING_OFF: dict[str, Any] = {"enabled": False}
RAW_BATCH = 64
DISTINCT_ROWS = 64
"""Distinct one-row request bodies the load cycles through."""
SOCKET_ERRORS_ALLOWED = 3
"""More socket errors (connect, read, write, timeout) than this in a cell break it; any non-2xx does."""
WRK_TIMEOUT = "5s"
"""wrk's per-request timeout: a slower response counts as a socket error."""
CLIENT_BOUND_CPU = 0.90
"""A cell whose wrk used at least this share of its core is flagged: the client may be the limit."""
NOISY_CPU = 0.10
"""A cell during which other processes used at least this share of a core is flagged noisy."""


@dataclass(frozen=True)
class Endpoint:
    """One thing the load is pointed at: a server serving one model one way."""

    server: str
    """``bare`` (constant body), ``naive`` (Starlette + ONNX Runtime per request) or ``inferlane``."""
    model: str
    """``small`` or ``heavy``; ``-`` for the bare endpoint."""
    mode: str
    """``constant``, ``per request`` (naive), ``batching on`` or ``batching off`` (inferlane)."""

    @property
    def served_name(self) -> str:
        """The model name in the URL (inferlane serves batching off as ``<model>-nobatch``)."""
        if self.server == "inferlane" and self.mode == "batching off":
            return f"{self.model}-nobatch"
        return "small" if self.model == "-" else self.model

    @property
    def path(self) -> str:
        return f"/v2/models/{self.served_name}/infer"

    @property
    def label(self) -> str:
        return f"{self.server} ({self.mode})" if self.model == "-" else f"{self.server} {self.model} ({self.mode})"

    @property
    def slug(self) -> str:
        """A file-name-safe name: ``bare``, ``naive-small``, ``inferlane-small-nobatch``."""
        return self.server if self.model == "-" else f"{self.server}-{self.served_name}"


BARE = Endpoint("bare", "-", "constant")


def naive(model: str) -> Endpoint:
    return Endpoint("naive", model, "per request")


def inferlane(model: str, batching: bool = True) -> Endpoint:
    return Endpoint("inferlane", model, "batching on" if batching else "batching off")


@dataclass(frozen=True)
class Target:
    """A ratio measured in the run and the bound it should meet."""

    figure: str
    limit: float
    at_most: bool
    """True: the ratio should be <= limit; False: >= limit."""


TARGETS: dict[str, Target] = {
    "c1_p50": Target("c=1 p50, inferlane / naive", 1.3, True),
    "c8_rps": Target("c=8 rps, inferlane / naive", 1.0, False),
    "c64_ideal_small": Target("c=64 rps, inferlane / ideal", 0.6, False),
    "c64_ideal_heavy": Target("c=64 rps, inferlane / ideal", 0.8, False),
    "c64_tail": Target("c=64 p99 / p50, inferlane", 2.5, True),
    "c1_cpu": Target("c=1 server CPU per request, inferlane / naive", 1.5, True),
}
"""inferlane here is always batching on; each target is checked per model."""


@dataclass(frozen=True)
class Options:
    warmup_s: int
    """wrk seconds before every measured cell (wrk counts whole seconds); the first cell of every
    endpoint gets at least one second."""
    duration_s: int
    """wrk seconds per measured run."""
    repeat: int
    """Measured runs per cell; the cell reports the median of each figure."""
    raw_s: float
    server_core: int
    client_core: int
    py_spy: Path | None
    wait_quiet_s: float = 0.0
    retry_noisy: int = 0
