"""The text stage in process: MiniLM's vectors against sentence-transformers, whole batches grouped
by bucket within the budget and put back in order, and the config checks of the two sections."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferlane.core.errors import ConfigError, PayloadTooLarge
from inferlane.core.model import ModelVersion
from inferlane.core.spec import load_config
from inferlane.core.text.config import TokenizerSpec
from inferlane.demo.texts import sentences

BASE = """\
inputs:
  - {name: text, datatype: BYTES, shape: [-1]}
outputs:
  - {name: embedding, datatype: FP32, shape: [-1, 384]}
"""


def as_bytes(texts: list[str]) -> np.ndarray:
    return np.asarray([t.encode() for t in texts], dtype=object)


class Buckets:
    """A BucketObserver that keeps every (length, rows)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_bucket(self, length: int, rows: int) -> None:
        self.seen.append((length, rows))


def test_vectors_match_sentence_transformers(minilm: Path, reference_model: Any) -> None:
    texts = ["A man is eating food.", "A man is riding a horse.", "", "naïve café ✓ 東京",
             *sentences(12, seed=5, long_share=0.3)]
    mv = ModelVersion.open(minilm)
    got = mv.score({"text": as_bytes(texts)}, chunk_rows=64)["embedding"]
    want = reference_model.encode(texts, convert_to_numpy=True, batch_size=8)
    cos = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_whole_batch_runs_by_bucket_within_the_budget_in_row_order(minilm: Path, tmp_path: Path) -> None:
    texts = sentences(40, seed=6, long_share=0.25, long_words=(40, 60))
    mv = ModelVersion.open(minilm)
    seen = Buckets()
    assert mv.text is not None
    mv.text.observer = seen
    mv.text.budget = 200  # tokens: 12 rows of 16, 3 of 64
    got = mv.score({"text": as_bytes(texts)}, chunk_rows=64)["embedding"]
    assert len({length for length, _ in seen.seen}) >= 3  # short and long texts went apart
    assert len(seen.seen) > len({length for length, _ in seen.seen})  # the budget split a bucket
    assert all(length * rows <= 200 for length, rows in seen.seen), seen.seen
    assert sum(rows for _, rows in seen.seen) == len(texts)
    one_by_one = np.stack([mv.forward({"text": as_bytes([t])})["embedding"][0] for t in texts])
    np.testing.assert_allclose(got, one_by_one, rtol=0, atol=1e-6)


def test_one_request_is_padded_to_its_longest_texts_bucket(minilm: Path) -> None:
    mv = ModelVersion.open(minilm)
    rows, elements, key = mv.check_inputs({"text": as_bytes(["short", "word " * 40])})  # 3 and 42 tokens
    assert (rows, key, elements) == (2, 48, 96)
    with pytest.raises(PayloadTooLarge, match="row 0: 302 tokens"):
        mv.check_inputs({"text": as_bytes(["token " * 300])})


@pytest.mark.parametrize(("extra", "says"), [
    ("tokenizer: {buckets: [32, 16]}", "increasing"),
    ("tokenizer: {buckets: [512], max_input_length: 256}", "over max_input_length"),
    ("tokenizer: {max_batch_tokens: 100, max_input_length: 256}", "cannot hold one text"),
    ("tokenizer: {mask: input_ids}", "different model inputs"),
    ("pooling: {mode: mean}", "needs a tokenizer"),
    ("tokenizer: {}\npooling: {output: vec}", "pooling.output 'vec' is not one of the outputs"),
    ("tokenizer: {max_input_lenght: 12}", "did you mean max_input_length"),
])
def test_config_mistakes_are_named(tmp_path: Path, extra: str, says: str) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(BASE + extra + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=says):
        load_config(path, "m")


def test_a_tokenizer_on_a_number_input_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(BASE.replace("BYTES", "FP32") + "tokenizer: {input: text}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a BYTES input of shape"):
        load_config(path, "m")


def test_a_missing_tokenizer_file_is_named(minilm: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").symlink_to(minilm / "1" / "model.onnx")
    (model / "model.yaml").write_text(BASE + "tokenizer: {file: vocab.json}\npooling: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"vocab\.json: tokenizer file not found"):
        ModelVersion.open(model)


def test_default_buckets_pad_a_text_by_under_an_eighth_past_128_tokens() -> None:
    lengths = TokenizerSpec(max_input_length=600).bucket_lengths
    assert lengths[:16] == tuple(range(8, 129, 8))
    assert lengths[16:] == (144, 160, 176, 192, 208, 224, 240, 256, 288, 320, 352, 384, 416, 448, 480, 512, 576, 600)
    for short, long in pairwise(lengths[15:]):
        assert (long - short) * 8 <= short  # a text one token over a bucket pads under 1/8 of itself
