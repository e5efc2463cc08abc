"""``python -m benchmarks.gpu``: the batching gain, rows/s at batch 64 against batch 1, per runtime and device.

    .venv/bin/python -m benchmarks.gpu              # 3x1024 MLP, 3 s per cell
    .venv/bin/python -m benchmarks.gpu --quick      # 2x256 MLP, 0.3 s per cell (a few seconds in all)

One ReLU MLP (30 features in, 2 classes out, the same random weights) served two ways through
inferlane's own runtimes (``ModelVersion.forward``, signature checks included): ONNX Runtime
(``runtime: onnx``) and PyTorch (``runtime: torch``, an ``nn.Module`` with safetensors weights). Each
runs on the CPU and, when one is present, on ``cuda:0`` (torch CUDA; ONNX Runtime's CUDA provider,
which needs onnxruntime-gpu). Without a GPU it says so and measures the CPU only. The seeds quote
32x at batch 64 on an A100; on a CPU the gain is smaller, because one row already keeps the cores
busy.

Exit status 1 when the two runtimes disagree on the model's outputs (beyond 1e-4).
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import command_line, load_average, logger, machine_line
from inferlane.core.model import ModelVersion
from inferlane.core.runtimes.torch import import_torch
from inferlane.demo.models import N_FEATURES, mlp_onnx_bytes
from inferlane.testing import Column, format_table, num, ratio

log = logger("gpu-bench")
BATCHES = (1, 64)

MLP_SOURCE = textwrap.dedent('''
    import torch


    class MLP(torch.nn.Module):
        def __init__(self, dims: list[int]) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims, dims[1:]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers[:-1]:
                x = torch.relu(layer(x))
            return torch.softmax(self.layers[-1](x), dim=1)
''')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: a 2x256 MLP, 0.3 s per cell")
    ap.add_argument("--seconds", type=float, default=None, help="measured time per cell (default 3; 0.3 quick)")
    ap.add_argument("--hidden", default=None, help="hidden layer widths, comma-separated (default 1024,1024,1024)")
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (0.3 if args.quick else 3.0)
    hidden = args.hidden or ("256,256" if args.quick else "1024,1024,1024")
    args.hidden = tuple(int(h) for h in hidden.split(","))
    return args


def devices() -> tuple[list[str], list[str], str]:
    """Devices for torch, devices for ONNX Runtime, and a line saying what GPU was found."""
    import onnxruntime as ort

    torch = import_torch()  # OpenMP threads passive, as inferlane's torch runtime imports it
    torch_cuda = torch.cuda.is_available()
    ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if torch_cuda or ort_cuda:
        name = torch.cuda.get_device_name(0) if torch_cuda else "a CUDA device"
        line = (f"GPU: {name}; torch CUDA {'yes' if torch_cuda else 'no'}, ONNX Runtime CUDA provider "
                f"{'yes' if ort_cuda else 'no (needs onnxruntime-gpu)'}")
    else:
        line = ("no GPU: torch sees no CUDA device and ONNX Runtime has no CUDAExecutionProvider; "
                "measuring the CPU only")
    return (["cpu", "cuda:0"] if torch_cuda else ["cpu"]), (["cpu", "cuda:0"] if ort_cuda else ["cpu"]), line


def write_models(root: Path, hidden: tuple[int, ...], torch_devices: list[str], ort_devices: list[str]) -> list[Path]:
    """One model folder per (runtime, device), all with the same weights."""
    import onnx
    import torch
    from onnx import numpy_helper
    from safetensors.torch import save_file

    onnx_bytes = mlp_onnx_bytes(hidden)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(onnx_bytes).graph.initializer}
    state = {}
    for i in range(len(hidden) + 1):  # Gemm computes x @ w; Linear stores w transposed
        state[f"layers.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(weights[f"w{i}"].T))
        state[f"layers.{i}.bias"] = torch.from_numpy(weights[f"b{i}"].copy())
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
                 "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
                 "warmup": {"batch_sizes": list(BATCHES)}}
    folders = []
    for runtime, devs in (("onnx", ort_devices), ("torch", torch_devices)):
        for device in devs:
            folder = root / f"{runtime}-{device.replace(':', '')}"
            (folder / "1").mkdir(parents=True)
            config = {"runtime": runtime, "device": device, **signature}
            if runtime == "onnx":
                (folder / "1" / "model.onnx").write_bytes(onnx_bytes)
            else:
                (folder / "mlp.py").write_text(MLP_SOURCE)
                save_file(state, str(folder / "1" / "model.safetensors"))
                config["torch"] = {"kind": "module", "module": "mlp:MLP",
                                   "init_args": {"dims": [N_FEATURES, *hidden, 2]}}
            (folder / "model.yaml").write_text(yaml.safe_dump(config))
            folders.append(folder)
    return folders


def rows_per_second(mv: ModelVersion, batch: np.ndarray, seconds: float) -> float:
    """Forward passes of ``batch`` for ``seconds`` (after one unmeasured pass): rows per second."""
    mv.forward({"x": batch})
    passes, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        mv.forward({"x": batch})
        passes += 1
    return passes * len(batch) / elapsed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = time.time(), load_average()
    torch_devices, ort_devices, gpu_line = devices()
    log(gpu_line)
    x = np.random.default_rng(0).standard_normal((max(BATCHES), N_FEATURES)).astype(np.float32)
    cells, outputs = [], {}
    with tempfile.TemporaryDirectory(prefix="inferlane-bench-gpu-") as tmp:
        for folder in write_models(Path(tmp), args.hidden, torch_devices, ort_devices):
            mv = ModelVersion.open(folder)
            mv.warmup()
            outputs[folder.name] = mv.forward({"x": x})["y"]
            rates = [rows_per_second(mv, x[:b], args.seconds) for b in BATCHES]
            log(f"{folder.name}: " + ", ".join(f"batch {b}: {r:,.0f} rows/s"
                                               for b, r in zip(BATCHES, rates, strict=True)))
            runtime, _, device = folder.name.partition("-")
            cells.append([runtime, device, *(num(r, ",.0f") for r in rates), ratio(rates[-1] / rates[0], 1)])
            mv.close()
    reference = outputs["onnx-cpu"]
    worst = max(float(np.abs(y - reference).max()) for y in outputs.values())
    print(f"MLP {N_FEATURES}-{'-'.join(map(str, args.hidden))}-2, {args.seconds:g} s per cell; {gpu_line}")
    print(format_table([Column("runtime", left=True), Column("device", left=True),
                        *(Column(f"rows/s @{b}") for b in BATCHES), Column(f"gain @{BATCHES[-1]}")], cells))
    print(f"outputs: largest difference from onnx on cpu {worst:.2e} (limit 1e-4); the seeds quote 32x on an A100")
    print(machine_line(load_before, load_average(), time.time() - started))
    print(f"command: {command_line()}")
    return 1 if worst > 1e-4 else 0


if __name__ == "__main__":
    raise SystemExit(main())
