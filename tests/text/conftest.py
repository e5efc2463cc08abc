"""Text-model fixtures: all-MiniLM-L6-v2 exported to ONNX once per session, a server over it, and
sentence-transformers' reference model (loaded from the same package, on CPU)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferlane.core.text.export import export_minilm, minilm_source
from inferlane.testing.server import ServerProcess, serve

SMALL_CONFIG = """\
runtime: onnx
inputs:
  - {name: text, datatype: BYTES, shape: [-1]}
outputs:
  - {name: embedding, datatype: FP32, shape: [-1, 384]}
tokenizer: {file: tokenizer.json, max_input_length: 256, buckets: [16, 32, 64, 128]}
pooling: {source: last_hidden_state, output: embedding, mode: mean, normalize: true}
batching: {max_batch_size: 32, max_queue_delay_ms: 2}
limits: {max_request_bytes: 262144}
warmup:
  inputs:
    - {text: ["warm-up"]}
"""


@pytest.fixture(scope="session")
def minilm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding minilm (the export's own model.yaml), exported once."""
    repo = tmp_path_factory.mktemp("text-repo")
    export_minilm(repo)
    return repo


@pytest.fixture(scope="session")
def minilm(minilm_repo: Path) -> Path:
    return minilm_repo / "minilm"


@pytest.fixture(scope="session")
def text_server(minilm_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``inferlane serve`` over the exported model (a 256 KiB body limit for the hostile cases), in
    its own repository (hard links to the exported files)."""
    root = tmp_path_factory.mktemp("text-server")
    version = root / "repo" / "minilm" / "1"
    version.mkdir(parents=True)
    for f in (minilm_repo / "minilm" / "1").iterdir():
        os.link(f, version / f.name)
    (version.parent / "model.yaml").write_text(SMALL_CONFIG, encoding="utf-8")
    with serve(root / "repo", log_path=root / "server.log") as running:
        yield running


@pytest.fixture(scope="session")
def reference_model() -> Any:
    """sentence-transformers' all-MiniLM-L6-v2 (Transformer, mean Pooling, Normalize) on CPU."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_source()), device="cpu")
