"""Render the model.yaml reference (docs/model-config.md) from the config models' docstrings."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from inferlane.core.spec import (
    BatchingPolicy,
    DriftSpec,
    FeatureField,
    FeaturesSpec,
    HybridSpec,
    Limits,
    ModelConfig,
    OnnxOptions,
    PythonOptions,
    SklearnOptions,
    TensorSpec,
    TorchOptions,
    TreeOptions,
    WarmupSpec,
)
from inferlane.core.text.config import PoolingSpec, TokenizerSpec

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("model.yaml (top level)", ModelConfig),
    ("inputs[] and outputs[] (tensor)", TensorSpec),
    ("batching", BatchingPolicy),
    ("limits", Limits),
    ("warmup", WarmupSpec),
    ("onnx", OnnxOptions),
    ("sklearn", SklearnOptions),
    ("python", PythonOptions),
    ("torch", TorchOptions),
    ("trees (xgboost, lightgbm)", TreeOptions),
    ("drift", DriftSpec),
    ("hybrid", HybridSpec),
    ("features", FeaturesSpec),
    ("features.fields[]", FeatureField),
    ("tokenizer", TokenizerSpec),
    ("pooling", PoolingSpec),
]

INTRO = """# model.yaml reference

Generated from `src/inferlane/core/spec.py` by `python -m inferlane.core.config_docs`; a test
fails when this file is out of date.

A model repository is `<repo>/<name>/model.yaml` plus one folder per version,
`<repo>/<name>/<version>/<artifact>` (versions are positive integers). Example:

```yaml
runtime: onnx
inputs:
  - {name: features, datatype: FP32, shape: [-1, 30]}
outputs:
  - {name: label, datatype: INT64, shape: [-1]}
  - {name: probabilities, datatype: FP32, shape: [-1, 2]}
batching: {max_batch_size: 64, max_queue_delay_ms: 2, max_queue_size: 256}
limits: {max_request_bytes: 1048576}
timeout_ms: 1000
warmup: {batch_sizes: [1, 64]}
```

`inferlane models validate <repo>` checks every file and runs each warm-up once; errors name
the file and the field path (for example `batching.max_batch_size: Input should be greater than
or equal to 1`). A misspelt field is refused with the closest known name
(`unknown field batching.max_batchsize: did you mean max_batch_size?`).
"""


def _default(f: FieldInfo) -> str:
    if f.is_required():
        return "required"
    if f.default_factory is not None:
        return "`{}`"
    d: Any = f.default
    if d is PydanticUndefined:
        return ""
    if isinstance(d, BaseModel):
        return "see section"
    if d is None:
        return "none"
    if d == "":
        return "folder name"
    if isinstance(d, tuple):
        d = list(d)
    return f"`{d}`"


def render() -> str:
    out = [INTRO]
    for title, model in SECTIONS:
        out.append(f"\n## {title}\n\n| field | default | meaning |\n| --- | --- | --- |")
        for name, f in model.model_fields.items():
            key = f.alias or name
            desc = (f.description or "").replace("\n", " ").replace("|", "\\|").replace("``", "`")
            out.append(f"| `{key}` | {_default(f)} | {' '.join(desc.split())} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    from pathlib import Path

    Path("docs/model-config.md").write_text(render(), encoding="utf-8")
    print("wrote docs/model-config.md")
