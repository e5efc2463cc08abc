"""``device:`` and the memory budgets: how a setting resolves, ONNX Runtime's provider choice, and
the pool of each device (what every loaded version holds there, against the server's budget):
its parsing, its ledger, and each runtime reserving at load and releasing at close.

This machine has no GPU: the CUDA paths are checked up to the point where they would need one
(a clear refusal), and benchmarks/gpu.py exercises them where a GPU is present."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from inferlane.core.errors import ConfigError
from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model
from inferlane.core.runtimes import devices
from inferlane.core.runtimes.devices import (
    BUDGET_ENV,
    DevicePool,
    device_budgets,
    device_index,
    format_budgets,
    parse_budget,
    parse_size,
    resolve_device,
)
from inferlane.core.spec import ModelConfig
from inferlane.demo.models import write_fraud_model, write_mlp_model
from tests.runtimes.builders import load, rows, write_lightgbm, write_torch


@pytest.mark.parametrize(("setting", "cuda", "device"), [
    ("cpu", True, "cpu"), ("auto", True, "cuda:0"), ("auto", False, "cpu"),
    ("cuda", False, "cuda:0"), ("cuda:3", False, "cuda:3"),
])
def test_resolve_device(setting: str, cuda: bool, device: str) -> None:
    assert resolve_device(setting, lambda: cuda) == device


def test_device_index() -> None:
    assert (device_index("cuda:0"), device_index("cuda:12"), device_index("cuda")) == (0, 12, 0)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "CPU", "mps"])
def test_device_setting_is_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="device"):
        ModelConfig.model_validate({"device": bad, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]})


@pytest.mark.parametrize("runtime", ["sklearn", "python"])
def test_runtimes_without_devices_refuse_the_device_fields(runtime: str) -> None:
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                 "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}
    for fields in ({"device": "auto"}, {"device_memory_budget_bytes": 1000}):
        with pytest.raises(ValueError, match=rf"apply to runtimes onnx, torch, xgboost and lightgbm; runtime "
                                             rf"{runtime} runs on the CPU"):
            ModelConfig.model_validate({"runtime": runtime, **signature, **fields})


@pytest.fixture(scope="module")
def onnx_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx")
    write_fraud_model(root, rows=600)
    return root


def set_fields(model_dir: Path, **fields: object) -> None:
    path = model_dir / "model.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **fields}))


def test_onnx_device_auto_runs_on_cpu_and_cuda_is_refused_without_the_provider(onnx_repo: Path) -> None:
    import onnxruntime as ort

    assert "CUDAExecutionProvider" not in ort.get_available_providers()  # this test describes a CPU machine
    set_fields(onnx_repo / "fraud", device="auto")
    x = np.zeros((2, 30), dtype=np.float32)
    mv = load(onnx_repo, "fraud")
    assert mv.forward({"features": x})["probabilities"].shape == (2, 2)
    assert mv.runtime._session.get_providers() == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    mv.close()
    set_fields(onnx_repo / "fraud", device="cuda:0")
    with pytest.raises(ConfigError, match=r"device cuda:0: this ONNX Runtime has no CUDAExecutionProvider"):
        load(onnx_repo, "fraud")


def test_onnx_budget_uses_the_artifact_size(onnx_repo: Path) -> None:
    size = (onnx_repo / "fraud" / "1" / "model.onnx").stat().st_size
    set_fields(onnx_repo / "fraud", device="cpu", device_memory_budget_bytes=size - 1)
    with pytest.raises(ConfigError, match=rf"\({size} bytes\) on cpu \(artifact size"):
        load(onnx_repo, "fraud")
    set_fields(onnx_repo / "fraud", device_memory_budget_bytes=size)
    load(onnx_repo, "fraud").close()


# -- the pool's budgets: sizes and DEVICE=SIZE ---------------------------------------------------------

@pytest.mark.parametrize(("text", "size"), [
    ("4096", 4096), ("7B", 7), ("1KiB", 1024), ("2kb", 2000), (" 512 MiB ", 512 * 2**20),
    ("1.5GB", 1_500_000_000), ("20GiB", 20 * 2**30), ("1TiB", 2**40),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "why"), [
    ("", "is not a size"), ("lots", "is not a size"), ("-1", "is not a size"), ("1e9", "is not a size"),
    ("GiB", "is not a size"), ("5PiB", "is not a size"), ("0", "less than one byte"), ("0.1B", "less than one byte"),
])
def test_parse_size_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_size(text)


def test_parse_budget() -> None:
    assert parse_budget("cpu=2GiB") == ("cpu", 2 * 2**30)
    assert parse_budget("cuda=1MB") == ("cuda:0", 10**6)  # cuda is cuda:0, as in model.yaml
    assert parse_budget(" cuda:3 = 100 ") == ("cuda:3", 100)


@pytest.mark.parametrize(("text", "why"), [
    ("cpu", "is not DEVICE=SIZE"), ("gpu=1GiB", "is not DEVICE=SIZE"), ("auto=1GiB", "is not DEVICE=SIZE"),
    ("=1GiB", "is not DEVICE=SIZE"), ("cpu=", "'cpu=': '' is not a size"), ("cuda:0=lots", "'lots' is not a size"),
])
def test_parse_budget_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_budget(text)


def test_device_budgets_take_the_environment_then_the_flags_device_by_device() -> None:
    env = {BUDGET_ENV: "cpu=1GiB, cuda:0=20GiB,"}
    assert device_budgets(env=env) == {"cpu": 2**30, "cuda:0": 20 * 2**30}
    assert device_budgets([("cuda:0", 1000), ("cuda:1", 5)], env=env) == {"cpu": 2**30, "cuda:0": 1000, "cuda:1": 5}
    assert device_budgets(env={}) == {}
    budgets = device_budgets([("cpu", 3)], env=env)
    assert device_budgets(env={BUDGET_ENV: format_budgets(budgets)}) == budgets  # what serve hands its workers


@pytest.mark.parametrize(("flags", "env", "message"), [
    ([], "cpu=lots", rf"{BUDGET_ENV}: 'cpu=lots': 'lots' is not a size"),
    ([], "cpu=1GiB,cpu=2GiB", rf"{BUDGET_ENV}: cpu is given twice"),
    ([("cpu", 1), ("cpu", 2)], "", "--device-memory-budget: cpu is given twice"),
])
def test_device_budgets_refuse(flags: list[tuple[str, int]], env: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        device_budgets(flags, env={BUDGET_ENV: env})


# -- the pool's ledger ----------------------------------------------------------------------------------

def test_the_pool_bounds_the_sum_of_what_the_versions_on_a_device_hold() -> None:
    pool = DevicePool({"cpu": 1000})
    first = pool.reserve("cpu", "model a version 1", 600, "artifact size")
    with pytest.raises(ConfigError) as refused:
        pool.reserve("cpu", "model a version 2", 500, "artifact size")
    assert refused.value.message == (
        "model a version 2 needs 0.00 MiB (500 bytes) on cpu (artifact size) and 0.00 MiB (600 bytes) is already "
        "reserved there (model a version 1: 0.00 MiB (600 bytes)): over the cpu memory budget of 0.00 MiB "
        f"(1000 bytes) (--device-memory-budget / {BUDGET_ENV}); the version is not loaded")
    assert pool.held("cpu") == [("model a version 1", 600)]  # the refused one holds nothing
    second = pool.reserve("cpu", "model b version 1", 400, "artifact size")  # exactly the budget fits
    assert pool.held("cpu") == [("model a version 1", 600), ("model b version 1", 400)]
    first.release()
    first.release()  # idempotent: a second close gives nothing back twice
    assert pool.held("cpu") == [("model b version 1", 400)]
    pool.reserve("cpu", "model a version 2", 500, "artifact size")
    second.release()
    assert pool.held("cpu") == [("model a version 2", 500)]


def test_each_device_has_its_own_budget_and_a_device_without_one_is_only_counted() -> None:
    pool = DevicePool({"cuda:0": 100})
    pool.reserve("cuda:0", "model a version 1", 100, "artifact size")
    pool.reserve("cpu", "model b version 1", 10**12, "artifact size")  # no budget on cpu
    pool.reserve("cuda:1", "model c version 1", 10**12, "artifact size")
    with pytest.raises(ConfigError, match=r"on cuda:0 .* over the cuda:0 memory budget of 0.00 MiB \(100 bytes\)"):
        pool.reserve("cuda:0", "model d version 1", 1, "artifact size")
    assert pool.held("cpu") == [("model b version 1", 10**12)]


def test_a_resize_is_checked_against_the_others_and_a_refused_one_keeps_the_old_amount() -> None:
    pool = DevicePool({"cpu": 1000})
    pool.reserve("cpu", "model a version 1", 300, "artifact size")
    held = pool.reserve("cpu", "model a version 2", 500, "artifact size, before loading")
    held.resize(700, "parameters and buffers")  # 300 + 700: its own 500 is not counted twice
    with pytest.raises(ConfigError, match=r"needs 0.00 MiB \(701 bytes\) on cpu \(parameters and buffers\) and "
                                          r"0.00 MiB \(300 bytes\) is already reserved there \(model a version 1: "):
        held.resize(701, "parameters and buffers")
    assert pool.held("cpu") == [("model a version 1", 300), ("model a version 2", 700)]
    held.release()
    with pytest.raises(RuntimeError, match="resized after its release"):
        held.resize(1, "late")


def test_a_version_alone_over_the_budget_says_nothing_else_is_loaded() -> None:
    with pytest.raises(ConfigError, match=r"is already reserved there \(nothing else is loaded there\)"):
        DevicePool({"cpu": 10}).reserve("cpu", "model a version 1", 11, "artifact size")


def test_without_budgets_the_pool_reads_the_environment_at_each_reservation(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = DevicePool()
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    pool.reserve("cpu", "model a version 1", 10**9, "artifact size")
    monkeypatch.setenv(BUDGET_ENV, "cpu=1GB")
    with pytest.raises(ConfigError, match=r"over the cpu memory budget of 953\.67 MiB"):
        pool.reserve("cpu", "model a version 2", 1, "artifact size")
    monkeypatch.setenv(BUDGET_ENV, "cpu=many")
    with pytest.raises(ConfigError, match=f"{BUDGET_ENV}: 'cpu=many'"):
        pool.reserve("cpu", "model a version 2", 1, "artifact size")


def test_concurrent_reservations_never_go_over_the_budget() -> None:
    pool = DevicePool({"cpu": 55})
    start = threading.Barrier(16)
    won: list[bool] = []

    def one(i: int) -> None:
        start.wait()
        try:
            pool.reserve("cpu", f"model m{i} version 1", 10, "artifact size")
            won.append(True)
        except ConfigError:
            won.append(False)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 5 and sum(n for _, n in pool.held("cpu")) == 50


# -- each runtime reserves at load and releases at close --------------------------------------------------

PoolWith = Callable[[dict[str, int]], DevicePool]


@pytest.fixture
def pool_with(monkeypatch: pytest.MonkeyPatch) -> PoolWith:
    """This process's pool replaced by a fresh one with these budgets: what other tests left loaded
    is not counted."""
    def make(budgets: dict[str, int]) -> DevicePool:
        fresh = DevicePool(budgets)
        monkeypatch.setattr(devices, "POOL", fresh)
        return fresh
    return make


def load_version(repo: Path, name: str, version: str) -> ModelVersion:
    entry = scan_model(repo / name)
    return ModelVersion.load(entry.config, entry.path, version)


def test_onnx_versions_share_the_cpu_budget_and_a_refused_one_leaves_the_first_serving(
        tmp_path: Path, pool_with: PoolWith) -> None:
    write_mlp_model(tmp_path, "mlp", (64,))
    shutil.copytree(tmp_path / "mlp" / "1", tmp_path / "mlp" / "2")
    size = (tmp_path / "mlp" / "1" / "model.onnx").stat().st_size
    pool = pool_with({"cpu": size + size // 2})  # one version, not two
    first = load_version(tmp_path, "mlp", "1")
    assert pool.held("cpu") == [("model mlp version 1", size)]
    with pytest.raises(ConfigError, match=rf"model mlp version 2 needs .*\({size} bytes\) on cpu \(artifact size; "
                                          rf".*already reserved there \(model mlp version 1: .*\({size} bytes\)\)"):
        load_version(tmp_path, "mlp", "2")
    assert pool.held("cpu") == [("model mlp version 1", size)]
    assert first.forward({"x": np.zeros((2, 30), dtype=np.float32)})["y"].shape == (2, 2)
    first.close()
    assert pool.held("cpu") == []
    second = load_version(tmp_path, "mlp", "2")
    assert pool.held("cpu") == [("model mlp version 2", size)]
    second.close()


def test_torch_reserves_the_measured_bytes_and_a_refusal_after_loading_releases(
        tmp_path: Path, pool_with: PoolWith) -> None:
    # Net: 146 float32 parameters (584 bytes) in an 864-byte safetensors file; Padded adds a 4000-byte
    # buffer that only the measurement after loading sees.
    write_torch(tmp_path, "net", "module")
    write_torch(tmp_path, "padded", "module", torch={"kind": "module", "module": "net:Padded"})
    pool = pool_with({"cpu": 2000})
    net = load(tmp_path, "net")
    assert pool.held("cpu") == [("model net version 1", 584)]  # the artifact's 864 became the measured 584
    with pytest.raises(ConfigError, match=r"model padded version 1 needs 0.00 MiB \(4584 bytes\) on cpu "
                                          r"\(parameters and buffers\) and 0.00 MiB \(584 bytes\) is already reserved"):
        load(tmp_path, "padded")
    assert pool.held("cpu") == [("model net version 1", 584)]
    assert net.forward({"x": rows(1)})["probabilities"].shape == (1, 2)
    net.close()
    assert pool.held("cpu") == []


def test_trees_reserve_the_artifact_and_release_on_close_or_a_failed_load(tmp_path: Path,
                                                                          pool_with: PoolWith) -> None:
    pool = pool_with({})
    version = write_lightgbm(tmp_path, "gbm")
    size = (version / "model.txt").stat().st_size
    mv = load(tmp_path, "gbm")
    assert pool.held("cpu") == [("model gbm version 1", size)]
    mv.close()
    mv.close()
    assert pool.held("cpu") == []
    (version / "model.txt").write_text("not a booster")
    with pytest.raises(ConfigError, match="not a LightGBM model file"):
        load(tmp_path, "gbm")
    assert pool.held("cpu") == []
