"""PyTorch: a TorchScript file, a ``torch.export`` program, or an ``nn.Module`` class with safetensors weights.

    # model.yaml                                  # <repo>/<name>/net.py defines class Net(nn.Module)
    runtime: torch
    torch: {kind: module, module: "net:Net", init_args: {hidden: 16}}
    device: auto                                  # cuda:0 when torch sees a GPU, else cpu

What is safe to load from a file you did not build:
- ``torchscript`` (``torch.jit.load``): no Python unpickling; the archive's tensors and constants are
  read by TorchScript's own loader, which builds only tensors and TorchScript types. Its code runs in
  the TorchScript interpreter (no Python imports), which is not a sandbox: it calls torch operators.
- ``module``: the weights come from safetensors (a flat tensor format, no code); the class is Python
  in the model folder, like a ``python`` runtime model. A pickle-based weights file (.pt, .pth, .bin)
  is refused unless ``trusted: true``.
- ``export`` (``torch.export.load``): torch documents it as pickle-based, and it falls back to a full
  unpickler when its restricted one refuses a file, so it needs ``trusted: true``.

The forward pass runs under ``torch.inference_mode``; torch's threads follow the CPU-aware plan of
core/cpus.py (``torch.threads`` wins). Running out of memory in a forward pass fails that batch
with OutOfMemory (507); the model stays loaded.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from inferlane.core.cpus import ThreadPlan
from inferlane.core.errors import ConfigError, ModelError, OutOfMemory
from inferlane.core.plugins import import_file
from inferlane.core.runtimes.base import Batch
from inferlane.core.runtimes.devices import device_index, report, reserve, resolve_device
from inferlane.core.spec import ModelConfig, TorchOptions

log = logging.getLogger(__name__)

_PICKLE_WEIGHTS = (".pt", ".pth", ".bin", ".ckpt")
_DTYPES = {"FP16": "float16", "FP32": "float32", "FP64": "float64", "INT8": "int8", "INT16": "int16",
           "INT32": "int32", "INT64": "int64", "UINT8": "uint8", "BOOL": "bool"}


def import_torch(spinning: bool = False) -> Any:
    """``torch``, imported so that its OpenMP threads follow the plan's ``spinning``: off sets
    ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment sets it) before OpenMP starts, which happens
    once per process, at the first import of torch. Measured on 2 busy cores, 2 threads, batch 64:
    2,650 rows/s spinning, 140,516 passive (an MLP 30-256-256-2)."""
    if not spinning and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError as e:
        raise ConfigError("runtime torch needs PyTorch and safetensors: pip install 'inferlane[torch]'") from e
    return torch


def artifact_kind(opts: TorchOptions, path: Path) -> str:
    """The ``torch.kind`` to load ``path`` with (``auto`` decided by its suffix)."""
    if opts.kind != "auto":
        return opts.kind
    if path.suffix == ".pt2":
        return "export"
    return "module" if path.suffix == ".safetensors" or opts.module else "torchscript"


class TorchRuntime:
    def __init__(self, config: ModelConfig, version_dir: Path, plan: ThreadPlan) -> None:
        torch = import_torch(plan.spinning)
        self._torch = torch
        opts = config.torch or TorchOptions()
        path = version_dir / config.artifact_name
        self._path = path
        for spec in config.inputs:
            if spec.datatype not in _DTYPES:
                raise ConfigError(f"{path}: inputs.{spec.name}.datatype: runtime torch takes numeric "
                                  f"tensors, not {spec.datatype}")
        _set_threads(torch, opts.threads or plan.threads)
        if opts.threads:
            log.info("model %s: %d torch threads (torch.threads in model.yaml)", config.name, opts.threads)
        self._device = torch.device(resolve_device(config.device, torch.cuda.is_available))
        cuda = self._device.type == "cuda"
        if cuda and not (torch.cuda.is_available() and device_index(str(self._device)) < torch.cuda.device_count()):
            raise ConfigError(f"{path}: device {self._device}: torch sees "
                              f"{torch.cuda.device_count()} CUDA device(s) (torch {torch.__version__})")
        free = torch.cuda.mem_get_info(self._device)[0] if cuda else None
        self._held = reserve(config, path, str(self._device), path.stat().st_size, "artifact size, before loading",
                             free)
        with self._held.while_loading():
            self._load(config, opts, path, cuda)

    def _load(self, config: ModelConfig, opts: TorchOptions, path: Path, cuda: bool) -> None:
        torch = self._torch
        before = torch.cuda.memory_allocated(self._device) if cuda else 0
        kind = artifact_kind(opts, path)
        model, names = {"torchscript": self._torchscript, "export": self._export,
                        "module": self._module}[kind](config, opts, path)
        try:
            if cuda:
                report(config, path, str(self._device), torch.cuda.memory_allocated(self._device) - before,
                       "CUDA memory allocated while loading", self._held)
            else:
                report(config, path, "cpu", _tensor_bytes(model), "parameters and buffers", self._held)
        except ConfigError:
            del model  # over the budget: give the device memory back before the refusal propagates
            if cuda:
                torch.cuda.empty_cache()
            raise
        self._args = _argument_order(config, path, names)
        self._outputs = [s.name for s in config.outputs]
        self._compiled = opts.compile
        if opts.compile:
            with warnings.catch_warnings():
                # Imported here, not at the first batch: torch's own compiler modules use TorchScript
                # decorators that torch 2.13 deprecates, and warn as they are imported.
                warnings.simplefilter("ignore", DeprecationWarning)
                import torch._inductor.compile_fx
        self._fn = torch.compile(model) if opts.compile else model

    # -- loading ----------------------------------------------------------------------------------

    def _torchscript(self, config: ModelConfig, opts: TorchOptions, path: Path) -> tuple[Any, list[str]]:
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript in favour of torch.export; its files still load,
                # and docs/runtimes.md recommends the other kinds for new models.
                warnings.simplefilter("ignore", DeprecationWarning)
                model = self._torch.jit.load(str(path), map_location=self._device)
        except Exception as e:  # torch raises RuntimeError subclasses with long C++ traces
            raise ConfigError(f"{path}: not a TorchScript file (torch.jit.save): {_first_line(e)}. "
                              "For a torch.export program use torch.kind: export (and a .pt2 file); for "
                              "weights of an nn.Module, kind: module with a .safetensors file") from e
        model.eval()
        return model, [a.name for a in model.forward.schema.arguments[1:]]

    def _export(self, config: ModelConfig, opts: TorchOptions, path: Path) -> tuple[Any, list[str]]:
        if not config.trusted:
            raise ConfigError(f"{path}: torch.export programs load through pickle (torch.export.load), "
                              "which can run code from the file. Set 'trusted: true' in model.yaml if you "
                              "built this file yourself, or save a TorchScript file instead")
        try:
            program = self._torch.export.load(str(path))
        except Exception as e:
            raise ConfigError(f"{path}: not a torch.export program (torch.export.save): {_first_line(e)}. "
                              "For a TorchScript file use torch.kind: torchscript") from e
        user = set(program.graph_signature.user_inputs)
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
        specs = {s.name: s for s in config.inputs}
        for node in placeholders:
            val, spec = node.meta.get("val"), specs.get(node.name)
            if val is None or spec is None:
                continue
            if str(val.dtype).removeprefix("torch.") != _DTYPES[spec.datatype]:
                raise ConfigError(f"{path}: inputs.{spec.name}.datatype: config says {spec.datatype}, "
                                  f"the program was exported with {val.dtype}")
            if len(val.shape) != len(spec.shape):
                raise ConfigError(f"{path}: inputs.{spec.name}.shape: config has {len(spec.shape)} "
                                  f"dimensions, the program {len(val.shape)}")
            if isinstance(val.shape[0], int):
                raise ConfigError(f"{path}: inputs.{spec.name}: exported with a fixed batch size "
                                  f"{val.shape[0]}; export with dynamic_shapes={{'{spec.name}': "
                                  "{0: torch.export.Dim('batch')}}")
        module = program.module().to(self._device)
        return module, [n.name for n in placeholders]

    def _module(self, config: ModelConfig, opts: TorchOptions, path: Path) -> tuple[Any, list[str]]:
        if opts.module is None:
            raise ConfigError(f"{path}: torch.module: name the nn.Module class (file:Class in the model "
                              "folder) whose weights this file holds")
        file, class_name = opts.module.split(":", 1)
        source = path.parent.parent / f"{file}.py"
        cls = getattr(import_file(source, f"inferlane_torch_{config.name}_{path.parent.name}_{file}"),
                      class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, self._torch.nn.Module)):
            raise ConfigError(f"{source}: torch.module: no nn.Module class {class_name!r} in the file")
        try:
            model = cls(**opts.init_args)
        except Exception as e:
            raise ConfigError(f"{source}: {class_name}(**torch.init_args) failed: {e!r}") from e
        weights = self._weights(config, path)
        missing, unexpected = _load_state(model, weights, path)
        if missing or unexpected:
            raise ConfigError(f"{path}: weights do not match {class_name}: missing {sorted(missing)}, "
                              f"unexpected {sorted(unexpected)}")
        model.to(self._device).eval()
        return model, list(inspect.signature(model.forward).parameters)

    def _weights(self, config: ModelConfig, path: Path) -> dict[str, Any]:
        if path.suffix in _PICKLE_WEIGHTS:
            if not config.trusted:
                raise ConfigError(f"{path}: refusing to load a pickle-based weights file: unpickling can run "
                                  "code from the file. Save the weights with safetensors "
                                  "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')), or "
                                  "set 'trusted: true' in model.yaml if you built this file yourself.")
            state = self._torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ConfigError(f"{path}: expected a state_dict, found {type(state).__name__}")
            return state
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ConfigError("runtime torch needs safetensors: pip install 'inferlane[torch]'") from e
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as e:  # SafetensorError for a corrupt or foreign file
            raise ConfigError(f"{path}: not a safetensors file: {_first_line(e)}") from e

    # -- running ----------------------------------------------------------------------------------

    def predict(self, batch: Batch) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(batch[name])).to(self._device) for name in self._args]
        rows = args[0].shape[0] if args else 0
        try:
            with torch.inference_mode():
                out = self._fn(*args)
        except (MemoryError, torch.cuda.OutOfMemoryError) as e:
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(f"model ran out of {self._device} memory on a batch of {rows} rows; "
                              "lower batching.max_batch_size or batching.max_batch_elements") from e
        except Exception as e:
            if not self._compiled:
                raise
            raise ModelError(f"{self._path}: torch.compile failed or the compiled model raised: "
                             f"{type(e).__name__}: {_first_line(e)} (set torch.compile: false to run "
                             "the model uncompiled)") from e
        return self._to_numpy(out)

    def _to_numpy(self, out: Any) -> dict[str, np.ndarray]:
        if isinstance(out, dict):
            return {k: v.detach().cpu().numpy() for k, v in out.items()}
        items = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(items) != len(self._outputs):
            raise ModelError(f"the model returned {len(items)} tensor(s); model.yaml declares "
                             f"{len(self._outputs)} outputs {self._outputs} (return a dict to name them)")
        return {name: t.detach().cpu().numpy() for name, t in zip(self._outputs, items, strict=True)}

    def close(self) -> None:
        self._held.release()
        self._fn = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()


def _set_threads(torch: Any, threads: int) -> None:
    """torch's intra-op pool to ``threads``; inter-op to 1 (one forward pass at a time per model).
    Both pools are per process: the last model loaded sets them."""
    torch.set_num_threads(threads)
    # Allowed once, before any inter-op work: later models keep the first setting.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def _argument_order(config: ModelConfig, path: Path, names: list[str]) -> list[str]:
    """Declared input names in the order the model's forward takes them: by name when the names
    match, else by position (the declared order)."""
    declared = [s.name for s in config.inputs]
    if sorted(names) == sorted(declared):
        return names
    if len(names) != len(declared):
        raise ConfigError(f"{path}: inputs: the model's forward takes {len(names)} tensor(s) {names}, "
                          f"model.yaml declares {len(declared)} {declared}")
    log.info("model %s: forward arguments %s take inputs %s by position", config.name, names, declared)
    return declared


def _load_state(model: Any, weights: dict[str, Any], path: Path) -> tuple[set[str], set[str]]:
    own = set(model.state_dict())
    missing, unexpected = own - set(weights), set(weights) - own
    if not missing and not unexpected:
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as e:  # a shape mismatch
            raise ConfigError(f"{path}: weights do not fit the module: {_first_line(e)}") from e
    return missing, unexpected


def _tensor_bytes(model: Any) -> int:
    tensors = [*model.parameters(), *model.buffers()] if hasattr(model, "parameters") else []
    return sum(t.numel() * t.element_size() for t in tensors)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
