"""runtime: torch — TorchScript, torch.export and nn.Module + safetensors: load, signature checks,
batched vs one-by-one outputs, refused artifacts, the memory budget and out-of-memory batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inferlane.core.cpus import thread_plan
from inferlane.core.errors import ConfigError, InvalidInput, OutOfMemory
from tests.runtimes.builders import TORCH_SIGNATURE, load, net, rows, write_model, write_torch

KINDS = ("torchscript", "export", "module")

# Measured: a batch of 64 against 64 batches of one differs by at most 6e-8 (one float32 ulp near 1):
# torch's CPU matmul blocks rows differently by batch size, so the sums round differently.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("torch")
    for kind in KINDS:
        write_torch(root, kind, kind)
    return root


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_and_matches_the_module(repo: Path, kind: str) -> None:
    mv = load(repo, kind)
    mv.warmup()
    x = rows(64)
    got = mv.forward({"x": x})["probabilities"]
    with torch.inference_mode():
        want = net()(torch.from_numpy(x)).numpy()
    assert got.shape == (64, 2) and got.dtype == np.float32
    assert np.array_equal(got, want), np.abs(got - want).max()
    one_by_one = np.concatenate([mv.forward({"x": x[i:i + 1]})["probabilities"] for i in range(64)])
    diff = float(np.abs(got - one_by_one).max())
    assert diff <= TOLERANCE, diff
    mv.close()


def test_wrong_dtype_and_shape_are_refused_before_the_model(repo: Path) -> None:
    mv = load(repo, "module")
    with pytest.raises(InvalidInput, match="x"):
        mv.check_inputs({"x": rows(2)[:, :4]})


def test_export_checks_the_declared_signature(tmp_path: Path, repo: Path) -> None:
    version = write_model(tmp_path, "m", {"runtime": "torch", "trusted": True, "torch": {"kind": "export"},
                                          **TORCH_SIGNATURE,
                                          "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 6]}]})
    (version / "model.pt2").write_bytes((repo / "export" / "1" / "model.pt2").read_bytes())
    with pytest.raises(ConfigError, match=r"inputs.x.datatype: config says FP64, the program was exported "
                                          r"with torch.float32"):
        load(tmp_path, "m")


def test_export_with_a_fixed_batch_size_is_refused(tmp_path: Path) -> None:
    version = write_model(tmp_path, "m", {"runtime": "torch", "trusted": True, "torch": {"kind": "export"},
                                          **TORCH_SIGNATURE})
    torch.export.save(torch.export.export(net(), (torch.from_numpy(rows(3)),)), str(version / "model.pt2"))
    with pytest.raises(ConfigError, match=r"fixed batch size 3; export with dynamic_shapes"):
        load(tmp_path, "m")


def test_forward_arguments_must_match_the_inputs(tmp_path: Path, repo: Path) -> None:
    two = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 6]},
                      {"name": "b", "datatype": "FP32", "shape": [-1, 6]}],
           "outputs": TORCH_SIGNATURE["outputs"]}
    version = write_model(tmp_path, "m", {"runtime": "torch", **two})
    (version / "model.pt").write_bytes((repo / "torchscript" / "1" / "model.pt").read_bytes())
    with pytest.raises(ConfigError, match=r"forward takes 1 tensor\(s\) \['x'\], model.yaml declares 2"):
        load(tmp_path, "m")


def test_outputs_must_match_what_the_model_returns(tmp_path: Path, repo: Path) -> None:
    extra = {"outputs": [*TORCH_SIGNATURE["outputs"], {"name": "z", "datatype": "FP32", "shape": [-1]}]}
    version = write_model(tmp_path, "m", {"runtime": "torch", **TORCH_SIGNATURE, **extra})
    (version / "model.pt").write_bytes((repo / "torchscript" / "1" / "model.pt").read_bytes())
    mv = load(tmp_path, "m")
    with pytest.raises(ConfigError, match=r"returned 1 tensor\(s\); model.yaml declares 2 outputs"):
        mv.warmup()


@pytest.mark.parametrize(("kind", "content", "message"), [
    ("torchscript", b"not a zip", r"not a TorchScript file \(torch.jit.save\)"),
    ("module", b"\x00\x01garbage", r"not a safetensors file"),
])
def test_corrupt_files_are_refused(tmp_path: Path, kind: str, content: bytes, message: str) -> None:
    version = write_torch(tmp_path, "m", kind)
    next(version.iterdir()).write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, "m")


def test_an_export_program_is_not_a_torchscript_file(tmp_path: Path, repo: Path) -> None:
    version = write_model(tmp_path, "m", {"runtime": "torch", "artifact": "model.pt2", **TORCH_SIGNATURE,
                                          "torch": {"kind": "torchscript"}})
    (version / "model.pt2").write_bytes((repo / "export" / "1" / "model.pt2").read_bytes())
    with pytest.raises(ConfigError, match=r"not a TorchScript file.*use torch.kind: export"):
        load(tmp_path, "m")


def test_pickle_based_files_need_trusted(tmp_path: Path) -> None:
    write_torch(tmp_path, "export", "export", trusted=False)
    with pytest.raises(ConfigError, match=r"torch.export programs load through pickle.*trusted: true"):
        load(tmp_path, "export")
    version = write_torch(tmp_path, "pt", "module", artifact="model.pt")
    torch.save(net().state_dict(), version / "model.pt")
    with pytest.raises(ConfigError, match=r"refusing to load a pickle-based weights file"):
        load(tmp_path, "pt")
    (tmp_path / "pt" / "model.yaml").write_text((tmp_path / "pt" / "model.yaml").read_text() + "trusted: true\n")
    assert load(tmp_path, "pt").forward({"x": rows(2)})["probabilities"].shape == (2, 2)


def test_missing_or_mismatched_weights_are_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    version = write_torch(tmp_path, "m", "module")
    state = net().state_dict()
    save_file({k: v for k, v in state.items() if k != "out.bias"}, str(version / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"weights do not match Net: missing \['out.bias'\], unexpected \[\]"):
        load(tmp_path, "m")
    save_file({**state, "out.bias": torch.zeros(3)}, str(version / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"weights do not fit the module"):
        load(tmp_path, "m")


def test_module_class_must_exist(tmp_path: Path) -> None:
    write_torch(tmp_path, "m", "module", torch={"kind": "module", "module": "net:Missing"})
    with pytest.raises(ConfigError, match=r"no nn.Module class 'Missing'"):
        load(tmp_path, "m")


def test_memory_budget_refuses_a_version_that_would_not_fit(tmp_path: Path) -> None:
    # Net holds 6*16+16+16*2+2 = 146 float32 parameters (584 bytes) in an 864-byte safetensors file;
    # Padded adds a 4000-byte buffer built at construction, which only the measurement after loading sees.
    write_torch(tmp_path, "fits", "module", device_memory_budget_bytes=900)
    assert load(tmp_path, "fits").forward({"x": rows(1)})["probabilities"].shape == (1, 2)
    write_torch(tmp_path, "file", "module", device_memory_budget_bytes=800)
    with pytest.raises(ConfigError, match=r"needs 0.00 MiB \(864 bytes\) on cpu \(artifact size, before loading\), "
                                          r"over the model's device_memory_budget_bytes 0.00 MiB \(800 bytes\)"):
        load(tmp_path, "file")
    write_torch(tmp_path, "padded", "module", device_memory_budget_bytes=4000,
                torch={"kind": "module", "module": "net:Padded"})
    with pytest.raises(ConfigError, match=r"needs 0.00 MiB \(4584 bytes\) on cpu \(parameters and buffers\)"):
        load(tmp_path, "padded")


def test_a_cuda_device_torch_cannot_see_is_refused(tmp_path: Path) -> None:
    assert not torch.cuda.is_available()  # this test describes a CPU-only machine
    write_torch(tmp_path, "m", "module", device="cuda:1")
    with pytest.raises(ConfigError, match=r"device cuda:1: torch sees 0 CUDA device"):
        load(tmp_path, "m")
    write_torch(tmp_path, "auto", "module", device="auto")
    assert load(tmp_path, "auto").forward({"x": rows(1)})["probabilities"].shape == (1, 2)


def test_out_of_memory_fails_the_batch_and_the_model_keeps_serving(tmp_path: Path) -> None:
    write_torch(tmp_path, "m", "module", torch={"kind": "module", "module": "net:Greedy"})
    mv = load(tmp_path, "m")
    with pytest.raises(OutOfMemory, match=r"ran out of cpu memory on a batch of 9 rows") as info:
        mv.forward({"x": rows(9)})
    assert (info.value.http_status, info.value.grpc_code) == (507, "RESOURCE_EXHAUSTED")
    assert mv.forward({"x": rows(8)})["probabilities"].shape == (8, 2)


def test_threads_follow_the_plan_and_the_explicit_setting_wins(tmp_path: Path) -> None:
    planned = thread_plan("serving").threads
    write_torch(tmp_path, "explicit", "module", torch={"kind": "module", "module": "net:Net", "threads": planned + 1})
    load(tmp_path, "explicit")
    assert torch.get_num_threads() == planned + 1
    write_torch(tmp_path, "planned", "module")
    load(tmp_path, "planned")
    assert torch.get_num_threads() == planned


def test_compile_runs_at_warm_up(tmp_path: Path) -> None:
    write_torch(tmp_path, "m", "module", torch={"kind": "module", "module": "net:Net", "compile": True},
                warmup={"batch_sizes": [4]})
    mv = load(tmp_path, "m")
    mv.warmup()
    x = rows(4)
    with torch.inference_mode():
        want = net()(torch.from_numpy(x)).numpy()
    got = mv.forward({"x": x})["probabilities"]
    assert float(np.abs(got - want).max()) <= TOLERANCE


def test_compile_without_a_compiler_fails_the_load_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    torch._dynamo.reset()
    write_torch(tmp_path, "m", "module", torch={"kind": "module", "module": "net:Net", "compile": True},
                warmup={"batch_sizes": [3]})
    mv = load(tmp_path, "m")
    with pytest.raises(ConfigError, match=r"warm-up batch 0 failed: ModelError: .*torch.compile failed or the "
                                          r"compiled model raised: InductorError.*set torch.compile: false"):
        mv.warmup()
    torch._dynamo.reset()
