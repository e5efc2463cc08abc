"""Devices: which one a model runs on (``device:``), and whether a version fits there.

    device = resolve_device("auto", cuda_available=lambda: False)          # "cpu"
    held = reserve(config, path, "cpu", 1_200_000, "artifact size, before loading")
    report(config, path, "cpu", 1_100_000, "parameters and buffers", held)   # measured after loading
    held.release()                                                          # the runtime's close()

``auto`` is ``cuda:0`` when the runtime sees a CUDA device, else ``cpu``. A version is refused at
load, with a ConfigError naming the numbers, when it would not fit:

- over the model's ``device_memory_budget_bytes`` (what one version may take);
- on a CUDA device, larger than the device's free memory;
- over its device's budget in the pool (:data:`POOL`): what every loaded version of every model
  holds on that device, together. The budgets are a server setting, not a model's:
  ``serve --device-memory-budget cuda:0=20GiB`` or ``INFERLANE_DEVICE_MEMORY_BUDGET=cuda:0=20GiB,cpu=2GiB``
  (read by every command that loads models: serve and its workers, batch, jobs, stream).

Each check runs before loading (the artifact's size) and after (the memory measured at load; the
reservation becomes that figure). A rollout loads the new version before unloading the old one, so
both are on the device at once: bounding their sum is what lets a refusal leave the running version
serving instead of running the device out of memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from inferlane.core.errors import ConfigError
from inferlane.core.spec import ModelConfig

log = logging.getLogger(__name__)

BUDGET_ENV = "INFERLANE_DEVICE_MEMORY_BUDGET"
BUDGET_FLAG = "--device-memory-budget"
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b|b)?", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_DEVICE = re.compile(r"cpu|cuda(:\d{1,3})?")


def resolve_device(setting: str, cuda_available: Callable[[], bool]) -> str:
    """``cpu`` or ``cuda:N`` for a ``device:`` setting (``cpu``, ``cuda``, ``cuda:N`` or ``auto``)."""
    if setting == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    return "cuda:0" if setting == "cuda" else setting


def device_index(device: str) -> int:
    """``cuda:3`` → 3."""
    return int(device.partition(":")[2] or 0)


# -- the budgets ------------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """Bytes in ``text``: ``20GiB``, ``512 MiB``, ``1.5GB``, ``4096`` (plain bytes); units B, KB, MB,
    GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024). ValueError unless at least 1 byte."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text[:40]!r} is not a size such as 20GiB, 512MiB, 2GB or 1000000 (bytes)")
    n = int(Decimal(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    if n < 1:
        raise ValueError(f"{text[:40]!r} is less than one byte")
    return n


def parse_budget(text: str) -> tuple[str, int]:
    """``cuda:0=20GiB`` → ``("cuda:0", 21474836480)``; ``cuda`` means ``cuda:0``. ValueError says why."""
    device, sep, size = text.partition("=")
    device = device.strip()
    if not sep or not _DEVICE.fullmatch(device):
        raise ValueError(f"{text[:60]!r} is not DEVICE=SIZE with DEVICE cpu, cuda or cuda:N (e.g. cuda:0=20GiB)")
    try:
        return resolve_device(device, lambda: False), parse_size(size)
    except ValueError as e:
        raise ValueError(f"{text[:60]!r}: {e}") from None


def device_budgets(flags: Iterable[tuple[str, int]] = (), env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Each device's budget: INFERLANE_DEVICE_MEMORY_BUDGET (comma-separated DEVICE=SIZE), with the
    parsed ``--device-memory-budget`` flags over it, device by device. ConfigError names a bad value
    or a device given twice in one place."""
    raw = (os.environ if env is None else env).get(BUDGET_ENV, "")
    budgets: dict[str, int] = {}
    for item in (part for part in raw.split(",") if part.strip()):
        try:
            device, size = parse_budget(item)
        except ValueError as e:
            raise ConfigError(f"{BUDGET_ENV}: {e}") from None
        if device in budgets:
            raise ConfigError(f"{BUDGET_ENV}: {device} is given twice ({raw[:120]!r})")
        budgets[device] = size
    given: set[str] = set()
    for device, size in flags:
        if device in given:
            raise ConfigError(f"{BUDGET_FLAG}: {device} is given twice")
        given.add(device)
        budgets[device] = size
    return budgets


def format_budgets(budgets: Mapping[str, int]) -> str:
    """The INFERLANE_DEVICE_MEMORY_BUDGET value for ``budgets`` (sizes in bytes)."""
    return ",".join(f"{device}={size}" for device, size in sorted(budgets.items()))


# -- the pool ---------------------------------------------------------------------------------------

class Reservation:
    """Bytes one loaded version holds on its device, from before its load until :meth:`release`."""

    __slots__ = ("_pool", "device", "holder", "nbytes", "released")

    def __init__(self, pool: DevicePool, device: str, holder: str, nbytes: int) -> None:
        self._pool = pool
        self.device = device
        self.holder = holder
        """Who holds it, for messages: ``model fraud version 2``."""
        self.nbytes = nbytes
        self.released = False

    def resize(self, need: int, when: str) -> None:
        """Hold ``need`` bytes instead (the amount measured at load); ConfigError, keeping the old
        amount, when the device's budget cannot take it."""
        self._pool.resize(self, need, when)

    def release(self) -> None:
        """Give the bytes back; a second call does nothing (a runtime may be closed twice)."""
        self._pool.release(self)

    @contextlib.contextmanager
    def while_loading(self) -> Iterator[None]:
        """Around a runtime's load: a load that fails gives the bytes back (the version is not loaded,
        the pool must not keep counting it); one that succeeds keeps them until ``close()``."""
        try:
            yield
        except BaseException:
            self.release()
            raise


class DevicePool:
    """The memory every loaded version holds on each device, against the device's budget.

        pool = DevicePool({"cpu": 2 * 2**30})        # None: INFERLANE_DEVICE_MEMORY_BUDGET, read at each load
        held = pool.reserve("cpu", "model fraud version 2", 1_200_000, "artifact size")
        held.resize(1_100_000, "measured at load")
        held.release()

    Reservations are counted on every device; only a device with a budget refuses one. Loads run in
    worker threads (and two may run at once), so every change happens under one lock.
    """

    def __init__(self, budgets: Mapping[str, int] | None = None) -> None:
        self._budgets = dict(budgets) if budgets is not None else None
        self._held: list[Reservation] = []
        self._lock = threading.Lock()

    def budget(self, device: str) -> int | None:
        budgets = self._budgets if self._budgets is not None else device_budgets()
        return budgets.get(device)

    def held(self, device: str) -> list[tuple[str, int]]:
        """(holder, bytes) of each reservation on ``device``, oldest first."""
        with self._lock:
            return [(r.holder, r.nbytes) for r in self._held if r.device == device]

    def reserve(self, device: str, holder: str, need: int, when: str) -> Reservation:
        """Hold ``need`` bytes on ``device`` for ``holder``; ConfigError when the budget cannot take them."""
        with self._lock:
            self._admit(device, holder, need, when, None)
            held = Reservation(self, device, holder, need)
            self._held.append(held)
            return held

    def resize(self, held: Reservation, need: int, when: str) -> None:
        with self._lock:
            if held.released:
                raise RuntimeError(f"{held.holder}: resized after its release")
            self._admit(held.device, held.holder, need, when, held)
            held.nbytes = need

    def release(self, held: Reservation) -> None:
        with self._lock:
            if not held.released:
                held.released = True
                self._held.remove(held)

    def _admit(self, device: str, holder: str, need: int, when: str, resized: Reservation | None) -> None:
        budget = self.budget(device)
        if budget is None:
            return
        others = [r for r in self._held if r.device == device and r is not resized]
        reserved = sum(r.nbytes for r in others)
        if reserved + need > budget:
            whom = ", ".join(f"{r.holder}: {_mib(r.nbytes)}" for r in others) or "nothing else is loaded there"
            raise ConfigError(f"{holder} needs {_mib(need)} on {device} ({when}) and {_mib(reserved)} is already "
                              f"reserved there ({whom}): over the {device} memory budget of {_mib(budget)} "
                              f"({BUDGET_FLAG} / {BUDGET_ENV}); the version is not loaded")


POOL = DevicePool()
"""This process's pool: every runtime reserves in it, its budgets come from INFERLANE_DEVICE_MEMORY_BUDGET."""


# -- a version's checks -----------------------------------------------------------------------------

def holder(config: ModelConfig, path: Path) -> str:
    """``model fraud version 2`` for the artifact ``.../fraud/2/model.onnx``."""
    return f"model {config.name} version {path.parent.name}"


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


def reserve(config: ModelConfig, path: Path, device: str, need: int, when: str,
            free: int | None = None) -> Reservation:
    """Before loading: the version's own checks (:func:`check_fits`), then ``need`` bytes reserved in
    :data:`POOL`. The caller releases the reservation if the load fails, and in its ``close()``."""
    check_fits(config, path, device, need, when, free)
    return POOL.reserve(device, holder(config, path), need, when)


def report(config: ModelConfig, path: Path, device: str, used: int, how: str,
           held: Reservation | None = None) -> Reservation:
    """The memory a version took at load: one log line, then the checks on that amount. ``held`` (the
    reservation made before loading) becomes ``used`` bytes; without one, ``used`` is reserved."""
    log.info("model %s version %s: %s on %s (%s)", config.name, path.parent.name, _mib(used), device, how)
    if held is None:
        return reserve(config, path, device, used, how)
    check_fits(config, path, device, used, how)
    held.resize(used, how)
    return held


def onnx_device(config: ModelConfig, path: Path, available: set[str]) -> str:
    """The device ONNX Runtime runs ``config`` on: ``cuda:N`` needs the CUDA provider, ``auto`` uses
    it when ONNX Runtime has it."""
    cuda = "CUDAExecutionProvider" in available
    device = resolve_device(config.device, lambda: cuda)
    if device != "cpu" and not cuda:
        raise ConfigError(f"{path}: device {config.device}: this ONNX Runtime has no CUDAExecutionProvider "
                          f"(it has {sorted(available)}); install onnxruntime-gpu, or use device: cpu")
    return device


def onnx_providers(device: str, providers: list[Any]) -> list[Any]:
    """ONNX Runtime's providers for ``device``: ``cuda:N`` puts the CUDA provider on device N first
    (CPU after it, for the operators CUDA lacks)."""
    if device == "cpu":
        return providers
    return [("CUDAExecutionProvider", {"device_id": device_index(device)}), "CPUExecutionProvider"]


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB ({n} bytes)"
