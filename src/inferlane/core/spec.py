"""The model configuration (``<repo>/<name>/model.yaml``), validated with pydantic.

A minimal ``model.yaml``::

    runtime: onnx
    inputs:
      - {name: features, datatype: FP32, shape: [-1, 30]}
    outputs:
      - {name: probabilities, datatype: FP32, shape: [-1, 2]}

The first dimension of every tensor is the batch dimension (``-1``); the others are fixed
sizes or ``-1`` for variable length. Every field is documented below and in docs/model-config.md.
"""

from __future__ import annotations

import difflib
import math
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inferlane.core.datatypes import DATATYPES, from_numpy
from inferlane.core.duration import parse_duration
from inferlane.core.errors import ConfigError
from inferlane.core.text.config import PoolingSpec, TokenizerSpec, check_text_config

RuntimeName = Literal["onnx", "sklearn", "python", "torch", "xgboost", "lightgbm"]


class _Strict(BaseModel):
    # Field docstrings become descriptions: docs/model-config.md is generated from them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class TensorSpec(_Strict):
    name: str = Field(min_length=1, max_length=256)
    """Tensor name, as used in requests and by the runtime."""
    datatype: str
    """Open Inference Protocol datatype: BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64, BYTES."""
    shape: tuple[int, ...] = Field(min_length=1)
    """Full shape including the batch dimension first (``-1``); ``-1`` marks a variable dimension."""

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, v: str) -> str:
        if v not in DATATYPES:
            hint = _closest_datatype(v)
            raise ValueError(f"unknown datatype {v!r}; " + (f"did you mean {hint}?" if hint else
                                                              f"use one of {', '.join(DATATYPES)}"))
        return v

    @field_validator("shape")
    @classmethod
    def _valid_shape(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if v[0] != -1:
            raise ValueError("the first dimension is the batch dimension and must be -1")
        if any(d < -1 or d == 0 for d in v):
            raise ValueError("dimensions must be positive sizes or -1 (variable)")
        return v

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row (the shape without the batch dimension)."""
        return self.shape[1:]

    @property
    def row_elements(self) -> int | None:
        """Elements per row, or None when a dimension is variable."""
        if any(d == -1 for d in self.row_shape):
            return None
        return math.prod(self.row_shape)


class BatchingPolicy(_Strict):
    max_batch_size: int = Field(default=64, ge=1, le=1_000_000)
    """Most rows in one forward pass; a batch closes as soon as it holds this many."""
    max_queue_delay_ms: float = Field(default=5.0, ge=0, le=60_000)
    """Longest the oldest queued request waits for others before its batch closes."""
    max_queue_size: int = Field(default=1024, ge=1, le=10_000_000)
    """Most requests waiting per model version; past it requests get 503 with Retry-After."""
    max_inflight_batches: int = Field(default=1, ge=1, le=64)
    """Forward passes running at once for this model version."""
    max_batch_elements: int | None = Field(default=None, ge=1)
    """Memory budget: most tensor elements (all inputs) in one batch. Default: max_batch_size
    rows of the declared shape, or 16M elements when a dimension is variable."""
    enabled: bool = True
    """False sends every request to the model alone (batch of one request)."""


class Limits(_Strict):
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body accepted, in bytes (413 beyond it, checked before reading)."""
    max_elements_per_input: int = Field(default=4_000_000, ge=1)
    """Most elements in one input tensor of one request (413 beyond it)."""


class WarmupSpec(_Strict):
    batch_sizes: tuple[int, ...] = (1,)
    """Batch sizes generated from the signature and run once at load (variable dims become 1)."""
    inputs: tuple[dict[str, Any], ...] = ()
    """Explicit warm-up requests: mappings from input name to nested-list data; used instead of
    generated inputs when given."""


class DriftSpec(_Strict):
    enabled: bool = True
    """Track each served version's output distributions (unpinned online requests and shadow copies)
    and export their PSI against a reference as ``inferlane_drift_psi`` (docs/rollouts.md, "Drift
    monitoring")."""
    reference_size: int = Field(default=1000, ge=100, le=1_000_000)
    """Predictions in the reference: the first this many a version answers after it starts serving or
    is promoted. Not used for outputs when ``reference_file`` is given."""
    window_size: int = Field(default=1000, ge=100, le=1_000_000)
    """Predictions in the rolling window compared with the reference: the most recent ones."""
    inputs: bool = False
    """Also track each numeric input's distribution, against the version's first ``reference_size``
    predictions (``inferlane_drift_input_psi``), from the inputs the router's outcomes carry (not yet
    reported by the online lane)."""
    reference_file: str | None = Field(default=None, min_length=1)
    """Output of ``inferlane batch run`` used as the reference of every version's outputs: a Parquet or
    JSONL file, or the output folder of such a run; relative to the model folder. It needs one column
    per numeric output, named as the output (list columns for vector outputs)."""

    @field_validator("reference_file")
    @classmethod
    def _readable_format(cls, v: str | None) -> str | None:
        if v is not None and Path(v).suffix.lower() not in ("", ".parquet", ".jsonl"):
            raise ValueError(f"{v!r} must be a .parquet or .jsonl file written by inferlane batch run, "
                             "or its output folder (CSV splits vector outputs into columns: use --format parquet)")
        return v


def _seconds(v: Any) -> float:
    """A duration field: ``15m``, ``1h``, ``7d`` or seconds (core/duration.py)."""
    return parse_duration(v)


_STORE_URL = r"^(store://|redis://|rediss://)"


class HybridSpec(_Strict):
    store: str | None = Field(default=None, pattern=_STORE_URL)
    """Where precomputed answers live: ``store://NAME`` (SQLite in the state folder) or
    ``redis://host:6379/0?prefix=NAME``. Default ``store://<model name>``, where ``inferlane batch run
    ... --output store://<model name>`` writes."""
    max_age: float = 86_400.0
    """Oldest stored answer served (``15m``, ``1h``, ``7d`` or seconds); an older one is scored live."""
    write_back: bool = False
    """Store answers scored live (misses, stale and other-version keys) for the next request."""
    write_back_ttl: float | None = None
    """Expiry of written-back answers (a duration); none by default."""
    lookup_timeout_ms: float = Field(default=50.0, gt=0, le=10_000)
    """Longest a lookup may take; past it the request is scored live and the store counts as down
    (tried again after a second)."""
    max_keys: int = Field(default=1000, ge=1, le=100_000)
    """Most keys in one request (413 beyond it)."""

    @field_validator("max_age", "write_back_ttl", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else _seconds(v)


class FeatureField(_Strict):
    name: str = Field(min_length=1, max_length=256)
    """The feature: a request input of this name, or a field stored under the request's key."""
    source: Literal["request", "store"] = "request"
    """Where the value comes from: the request (an input named like the field, one value per row) or
    the feature store (materialized with ``inferlane features materialize``)."""
    default: float | None = None
    """Value used when the store has no value for the key (with ``features.missing: default``)."""


class FeaturesSpec(_Strict):
    input: str = Field(min_length=1)
    """The model input assembled from ``fields``, one column per field in the declared order."""
    fields: tuple[FeatureField, ...] = Field(min_length=1)
    """The columns of ``input`` in order; each from the request or the store."""
    store: str | None = Field(default=None, pattern=_STORE_URL)
    """Where the stored fields live; default ``store://<model name>-features``."""
    missing: Literal["default", "reject"] = "default"
    """A key without stored features: use each field's ``default`` (0 when unset), or answer 400."""
    max_age: float | None = None
    """Stored features older than this count as missing (a duration); none by default."""
    lookup_timeout_ms: float = Field(default=50.0, gt=0, le=10_000)
    """Longest a lookup may take; past it the request gets 503 (the model cannot run without them)."""

    @field_validator("max_age", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else _seconds(v)

    @model_validator(mode="after")
    def _distinct(self) -> FeaturesSpec:
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names {dupes}")
        if not any(f.source == "store" for f in self.fields):
            raise ValueError("no field has source: store; without one, declare the inputs directly")
        return self

    @property
    def request_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.source == "request")

    @property
    def store_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.source == "store")


class ModelConfig(_Strict):
    name: str = Field(default="", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$|^$")
    """Model name; defaults to the folder name."""
    runtime: RuntimeName = "onnx"
    """onnx (ONNX Runtime), sklearn (skops, or joblib when trusted), python (your class), torch
    (TorchScript, torch.export or an nn.Module with safetensors weights), xgboost or lightgbm (native
    model files); docs/runtimes.md."""
    artifact: str | None = None
    """File inside each version folder: defaults to model.onnx, model.skops, model.py, model.pt
    (torch; model.pt2 for torch.kind export, model.safetensors for module), model.ubj (xgboost) or
    model.txt (lightgbm). It must stay inside the folder: an absolute path, ``..`` or a symbolic link
    leading out is refused."""
    trusted: bool = False
    """Allow pickle-based artifacts (joblib). Only for files you built yourself."""
    trusted_types: tuple[str, ...] = ()
    """Extra types skops may load (full dotted names), beyond its defaults."""
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    """Request inputs; the batcher concatenates requests along the first dimension."""
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    """Response outputs; each must have exactly one row per input row."""
    batching: BatchingPolicy = BatchingPolicy()
    """How requests are grouped into forward passes (see below)."""
    limits: Limits = Limits()
    """Size limits checked before any model time is spent (see below)."""
    timeout_ms: float = Field(default=10_000, gt=0, le=3_600_000)
    """Default per-request deadline; a request may ask for less or more."""
    warmup: WarmupSpec = WarmupSpec()
    """Inputs run once at load; the server is ready only after every warm-up succeeded."""
    preprocess: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w]*:[A-Za-z_][\w]*$")
    """``module:function`` in the model folder applied to each batch before the runtime."""
    postprocess: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w]*:[A-Za-z_][\w]*$")
    """``module:function`` in the model folder applied to each batch after the runtime."""
    default_version: str | None = None
    """Version served when a request names none; defaults to the highest version."""
    onnx: OnnxOptions | None = None
    """ONNX Runtime settings (threads, providers)."""
    sklearn: SklearnOptions | None = None
    """Which estimator method produces which output."""
    python: PythonOptions | None = None
    """Which class in the artifact is the model."""
    torch: TorchOptions | None = None
    """PyTorch settings (artifact kind, nn.Module class, threads, torch.compile); docs/runtimes.md."""
    trees: TreeOptions | None = None
    """XGBoost and LightGBM settings: which prediction produces which output, threads."""
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:\d{1,3})?)$")
    """Where the model runs: ``cpu``, ``cuda:N`` (``cuda`` is ``cuda:0``) or ``auto`` (``cuda:0`` when
    the runtime sees a CUDA device, else ``cpu``). Used by the torch runtime and by ONNX Runtime (its
    CUDA provider); xgboost passes it to the booster; lightgbm runs on CPU only."""
    device_memory_budget_bytes: int | None = Field(default=None, ge=1)
    """Most memory one version may take on its device. Checked before loading (the artifact's size)
    and after (memory measured at load); over it, the version is refused and a running version keeps
    serving. On a CUDA device a version is also refused when its artifact does not fit in the free
    device memory."""
    drift: DriftSpec = DriftSpec()
    """Output (and optionally input) drift of each served version against a reference (see below)."""
    hybrid: HybridSpec | None = None
    """Serve precomputed answers by key from a key-value store, scoring live when missing or too old
    (docs/hybrid.md)."""
    features: FeaturesSpec | None = None
    """Assemble one input from request fields and features stored by key (docs/hybrid.md, "Online
    features")."""
    tokenizer: TokenizerSpec | None = None
    """Text models: tokenize a BYTES input with a Hugging Face tokenizers file, length-aware batching
    by padded-length bucket, ``max_input_length`` (see below and docs/text.md)."""
    pooling: PoolingSpec | None = None
    """Embedding models: pool the model's token vectors into one vector per text, optionally
    L2-normalised (see below)."""

    @field_validator("artifact")
    @classmethod
    def _inside_version_folder(cls, v: str | None) -> str | None:
        if v is not None and (not v or Path(v).is_absolute() or ".." in Path(v).parts):
            raise ValueError(f"{v!r} must be a file name relative to the version folder "
                             "(no absolute path, no '..')")
        return v

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        for group, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [s.name for s in specs]
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"{group}: duplicate tensor names {sorted(dupes)}")
        if self.runtime in ("sklearn", "xgboost", "lightgbm") and len(self.inputs) != 1:
            raise ValueError(f"runtime {self.runtime} takes exactly one input (the feature matrix)")
        if self.runtime in ("sklearn", "python") and (self.device != "cpu" or self.device_memory_budget_bytes):
            raise ValueError(f"device and device_memory_budget_bytes apply to runtimes onnx, torch, xgboost and "
                             f"lightgbm; runtime {self.runtime} runs on the CPU")
        if self.features is not None:
            target = next((s for s in self.inputs if s.name == self.features.input), None)
            if target is None:
                raise ValueError(f"features.input {self.features.input!r} is not one of the inputs "
                                 f"{[s.name for s in self.inputs]}")
            if target.row_shape != (len(self.features.fields),):
                raise ValueError(f"features.input {target.name!r} has row shape {list(target.row_shape)}; "
                                 f"{len(self.features.fields)} fields need [{len(self.features.fields)}]")
            if target.datatype in ("BYTES", "BOOL"):
                raise ValueError(f"features.input {target.name!r} must be numeric, not {target.datatype}")
            clash = sorted(set(self.features.request_fields) & {s.name for s in self.inputs})
            if clash:
                raise ValueError(f"features: request fields {clash} have the names of model inputs")
        check_text_config(self.inputs, self.outputs, self.tokenizer, self.pooling)
        return self

    @property
    def hybrid_store(self) -> str:
        """The hybrid store URL (``hybrid.store`` or ``store://<name>``)."""
        return (self.hybrid.store if self.hybrid is not None and self.hybrid.store else f"store://{self.name}")

    @property
    def features_store(self) -> str:
        """The feature store URL (``features.store`` or ``store://<name>-features``)."""
        return (self.features.store if self.features is not None and self.features.store
                else f"store://{self.name}-features")

    @property
    def artifact_name(self) -> str:
        if self.artifact:
            return self.artifact
        if self.runtime == "torch":
            kind = self.torch.kind if self.torch is not None else "auto"
            return {"export": "model.pt2", "module": "model.safetensors"}.get(kind, "model.pt")
        return {"onnx": "model.onnx", "sklearn": "model.skops", "python": "model.py",
                "xgboost": "model.ubj", "lightgbm": "model.txt"}[self.runtime]

    @property
    def batch_elements_budget(self) -> int:
        if self.batching.max_batch_elements is not None:
            return self.batching.max_batch_elements
        if self.tokenizer is not None:  # a text request's elements are its padded tokens
            return self.tokenizer.batch_tokens
        per_row = [s.row_elements for s in self.inputs]
        if any(e is None for e in per_row):
            return 16_000_000
        return self.batching.max_batch_size * max(1, sum(e for e in per_row if e is not None))


class OnnxOptions(_Strict):
    intra_op_num_threads: int = Field(default=0, ge=0, le=1024)
    """Threads inside one operator; 0 chooses from the CPUs the process may really use (affinity and
    cgroup quota): all but one when serving (the event loop keeps one), all of them in the batch and
    stream lanes. The choice is logged when the model loads."""
    inter_op_num_threads: int = Field(default=0, ge=0, le=1024)
    """Threads across operators; 0 lets ONNX Runtime pick."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """Execution providers in order of preference; unavailable ones are skipped."""
    allow_spinning: bool | None = None
    """Idle model threads spin briefly for the next operation. Default off: spinning threads take
    CPU from the serving threads (and from other processes) between requests."""
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    """ONNX Runtime graph optimizations applied at load."""


class SklearnOptions(_Strict):
    methods: dict[str, str] = Field(default_factory=dict)
    """Output name → estimator method (predict, predict_proba, decision_function, transform).
    Default: the first output from predict_proba if the estimator has it, else predict."""


class PythonOptions(_Strict):
    class_name: str = Field(default="Model", alias="class", pattern=r"^[A-Za-z_]\w*$")
    """Class in the artifact file; it has ``load(version_dir)`` and ``predict(batch)``."""
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              use_attribute_docstrings=True)


class TorchOptions(_Strict):
    kind: Literal["auto", "torchscript", "export", "module"] = "auto"
    """How the artifact loads: ``torchscript`` (a ``torch.jit.save`` file, default model.pt),
    ``export`` (a ``torch.export.save`` program, model.pt2; torch loads it with pickle, so it needs
    ``trusted: true``), ``module`` (the class named by ``module`` with its weights from
    model.safetensors). ``auto``: by the artifact's suffix (.pt2 export, .safetensors module, else
    torchscript)."""
    module: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w]*:[A-Za-z_][\w]*$")
    """``file:Class`` in the model folder: the ``nn.Module`` built for kind ``module``."""
    init_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for that class's constructor."""
    compile: bool = False
    """Wrap the model in ``torch.compile``; it compiles during warm-up (on CPU it needs a C++
    compiler), and a failure stops the load with its message."""
    threads: int = Field(default=0, ge=0, le=1024)
    """``torch.set_num_threads`` (per process); 0 chooses from the CPUs the process may use, as for
    ONNX Runtime."""


class TreeOptions(_Strict):
    outputs: dict[str, Literal["value", "margin", "probabilities", "label"]] = Field(default_factory=dict)
    """Output name → what fills it: ``value`` (the booster's prediction for its objective), ``margin``
    (raw score), ``probabilities`` (one column per class, binary models too), ``label`` (the most
    probable class, INT64). Default: the first output gets ``value``."""
    threads: int = Field(default=0, ge=0, le=1024)
    """``nthread`` / ``num_threads``; 0 chooses from the CPUs the process may use."""


ModelConfig.model_rebuild()


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem, each naming the field path at fault. An unknown field suggests the
    closest known one; pydantic's follow-on noise is left out: a list reported "too short" because
    one of its items failed, "Field required" for the field a typo meant, the "Value error, " prefix."""
    errors = err.errors()
    failed = [tuple(e["loc"]) for e in errors]
    # Unknown field → the field it probably meant (its location), when one is close.
    meant = {tuple(e["loc"]): _closest_field(tuple(e["loc"])) for e in errors if e["type"] == "extra_forbidden"}
    explained = {(*loc[:-1], m) for loc, m in meant.items() if m is not None}
    lines = [f"{source}: invalid model config"]
    for e in errors:
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(root)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {_unknown_field(loc, meant[loc])}")
        elif e["type"] == "missing" and loc in explained:
            continue
        elif e["type"] == "too_short":
            if not any(len(f) > len(loc) and f[:len(loc)] == loc for f in failed):
                lines.append(f"  {path}: must not be empty")
        else:
            lines.append(f"  {path}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _closest_datatype(value: str) -> str | None:
    """``fp32`` → FP32, ``float32`` → FP32 (NumPy names), ``FP23`` → FP32 (a typo); None if nothing is close."""
    if value.upper() in DATATYPES:
        return value.upper()
    try:
        with warnings.catch_warnings():  # NumPy deprecates some of its own type strings
            warnings.simplefilter("ignore")
            return from_numpy(np.dtype(value))
    except (TypeError, ValueError, KeyError):
        pass
    close = difflib.get_close_matches(value.upper(), DATATYPES, n=1, cutoff=0.6)
    return close[0] if close else None


def _closest_field(loc: tuple[int | str, ...]) -> str | None:
    """The known field closest to the unknown one at ``loc`` (difflib), or None."""
    close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc[:-1]), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_field(loc: tuple[int | str, ...], meant: str | None) -> str:
    """``unknown field batching.max_batchsize: did you mean max_batch_size?``"""
    path = ".".join(str(p) for p in loc)
    if meant is not None:
        return f"unknown field {path}: did you mean {meant}?"
    if len(loc) == 1:
        # A nested field written at the top level: say where it belongs.
        for name, info in ModelConfig.model_fields.items():
            nested = _model_type(info.annotation)
            if nested is not None and str(loc[0]) in _field_names(nested):
                return f"unknown field {path}: it belongs under {name}:"
    known = _fields_at(loc[:-1])
    return f"unknown field {path}: known fields are {', '.join(known)}" if known else f"unknown field {path}"


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the config model at ``loc`` (a pydantic error location), or [] if none."""
    model: type[BaseModel] | None = ModelConfig
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue  # an item of a tuple of models: the tuple was already unwrapped
        info = model.model_fields.get(part)
        model = _model_type(info.annotation) if info is not None else None
    return _field_names(model) if model is not None else []


def _model_type(annotation: Any) -> type[BaseModel] | None:
    """The config model inside ``annotation`` (``X``, ``X | None`` or ``tuple[X, ...]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_type(arg)
        if found is not None:
            return found
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def load_config(path: Path, default_name: str) -> ModelConfig:
    """Read and validate a model.yaml; ConfigError names the file and each field at fault."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of fields, got {type(raw).__name__}")
    raw.setdefault("name", default_name)
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from e
