"""Devices: which one a model runs on (``device:``), and whether a version fits there.

    device = resolve_device("auto", cuda_available=lambda: False)     # "cpu"
    check_fits(config, path, "cpu", need=1_200_000, when="measured at load")

``auto`` is ``cuda:0`` when the runtime sees a CUDA device, else ``cpu``. A version is refused at
load, with a ConfigError naming the numbers, when it would not fit: over the model's
``device_memory_budget_bytes`` (checked with the artifact's size before loading, and with the
memory measured after), or, on a CUDA device, larger than the device's free memory. A rollout
loads the new version before unloading the old one, so a refusal leaves the running version
serving instead of running the device out of memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferlane.core.errors import ConfigError
from inferlane.core.spec import ModelConfig

log = logging.getLogger(__name__)


def resolve_device(setting: str, cuda_available: Callable[[], bool]) -> str:
    """``cpu`` or ``cuda:N`` for a ``device:`` setting (``cpu``, ``cuda``, ``cuda:N`` or ``auto``)."""
    if setting == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    return "cuda:0" if setting == "cuda" else setting


def device_index(device: str) -> int:
    """``cuda:3`` → 3."""
    return int(device.partition(":")[2] or 0)


def check_fits(config: ModelConfig, path: Path, device: str, need: int, when: str,
               free: int | None = None) -> None:
    """Refuse the version when ``need`` bytes exceed its budget, or ``free`` bytes on its device."""
    budget = config.device_memory_budget_bytes
    if budget is not None and need > budget:
        raise ConfigError(f"{path}: needs {_mib(need)} on {device} ({when}), over the model's "
                          f"device_memory_budget_bytes {_mib(budget)}; the version is not loaded")
    if free is not None and need > free:
        raise ConfigError(f"{path}: needs {_mib(need)} on {device} ({when}) but the device has "
                          f"{_mib(free)} free; the version is not loaded")


def report(config: ModelConfig, path: Path, device: str, used: int, how: str) -> None:
    """The memory a version took at load: one log line (and the budget check on the measured amount)."""
    log.info("model %s version %s: %s on %s (%s)", config.name, path.parent.name, _mib(used), device, how)
    check_fits(config, path, device, used, how)


def onnx_providers(config: ModelConfig, path: Path, providers: list[Any], available: set[str]) -> list[Any]:
    """ONNX Runtime's providers for ``config.device``: ``cuda:N`` puts the CUDA provider on device N
    first (CPU after it, for the operators CUDA lacks); ``auto`` does so when ONNX Runtime has the CUDA
    provider. The artifact's size is checked against the budget (and ONNX Runtime reports no
    per-session memory, so that size is the figure logged)."""
    cuda = "CUDAExecutionProvider" in available
    device = resolve_device(config.device, lambda: cuda)
    if device != "cpu" and not cuda:
        raise ConfigError(f"{path}: device {config.device}: this ONNX Runtime has no CUDAExecutionProvider "
                          f"(it has {sorted(available)}); install onnxruntime-gpu, or use device: cpu")
    report(config, path, device, path.stat().st_size, "artifact size; ONNX Runtime reports no session memory")
    if device == "cpu":
        return providers
    return [("CUDAExecutionProvider", {"device_id": device_index(device)}), "CPUExecutionProvider"]


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB ({n} bytes)"
