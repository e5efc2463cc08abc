"""Text over the wire, through a real ``inferlane serve``: strings in over V2 JSON and the binary
extension, 413 past max_input_length, hostile inputs refused with the right status, and a burst of
short and long texts batched by bucket (the metrics say which) with the answers of one-by-one calls."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from inferlane.demo.texts import sentences
from inferlane.testing.server import ServerProcess

INFER = "/v2/models/minilm/infer"


def json_body(texts: Sequence[str], datatype: str = "BYTES") -> bytes:
    return orjson.dumps({"inputs": [{"name": "text", "datatype": datatype, "shape": [len(texts)],
                                     "data": list(texts)}]})


def binary_post(c: httpx.Client, elements: Sequence[bytes]) -> httpx.Response:
    """The binary tensor extension: each BYTES element a 4-byte little-endian length and its bytes."""
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    head = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(elements)],
                                     "parameters": {"binary_data_size": len(raw)}}]})
    return c.post(INFER, content=head + raw, headers={"Inference-Header-Content-Length": str(len(head))})


def embeddings(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "embedding" and out["datatype"] == "FP32"
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def bucket_counts(url: str) -> dict[tuple[str, str], float]:
    """(series, bucket) → value of the text-bucket counters."""
    text = httpx.get(f"{url}/metrics").text
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("inferlane_text_batches_total", "inferlane_text_rows_total"):
                out[(s.name, s.labels["bucket"])] = s.value
    return out


def test_strings_in_over_json_and_binary_give_the_same_unit_vectors(text_server: ServerProcess) -> None:
    texts = ["A man is eating food.", "Someone is eating a meal.", "naïve café — ünïcödé ✓", ""]
    with httpx.Client(base_url=text_server.url, timeout=30) as c:
        via_json = embeddings(c.post(INFER, content=json_body(texts)))
        via_binary = embeddings(binary_post(c, [t.encode() for t in texts]))
    assert via_json.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(via_json, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(via_json, via_binary)
    assert float(via_json[0] @ via_json[1]) > float(via_json[0] @ via_json[2])  # meaning, not noise


def test_text_over_max_input_length_gets_413_and_a_shorter_one_passes(text_server: ServerProcess) -> None:
    words = "token " * 300  # ~302 tokens with [CLS] and [SEP]: over 256
    with httpx.Client(base_url=text_server.url, timeout=30) as c:
        r = c.post(INFER, content=json_body(["fine", words]))
        assert r.status_code == 413, r.text
        assert "row 1" in r.text and "256" in r.text and "max_input_length" in r.text
        assert c.post(INFER, content=json_body(["token " * 250])).status_code == 200


@pytest.mark.parametrize(("body", "status", "says"), [
    pytest.param(json_body(["x"], "FP32"), 400, "FP32 numbers", id="strings-declared-as-numbers"),
    pytest.param(orjson.dumps({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.5]}]}),
                 400, "BYTES", id="numbers-for-a-text-input"),
    pytest.param(orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1],
                                           "data": ["x"]}]}), 400, "shape", id="wrong-shape"),
    pytest.param(json_body(["y" * 20_000]), 413, "max_input_bytes", id="huge-string-before-tokenizing"),
    pytest.param(json_body(["z" * 300_000]), 413, "", id="over-the-body-limit"),
])
def test_hostile_text_inputs_are_refused(text_server: ServerProcess, body: bytes, status: int, says: str) -> None:
    r = httpx.post(f"{text_server.url}{INFER}", content=body, timeout=30)
    assert r.status_code == status, r.text
    assert says in r.text


def test_non_utf8_bytes_get_400_naming_the_row_and_empty_strings_embed(text_server: ServerProcess) -> None:
    with httpx.Client(base_url=text_server.url, timeout=30) as c:
        r = binary_post(c, [b"ok", b"\xff\xfe bad"])
        assert r.status_code == 400 and "row 1" in r.text and "UTF-8" in r.text, r.text
        empty = embeddings(binary_post(c, [b"", b""]))
        np.testing.assert_array_equal(empty[0], empty[1])
        assert c.get("/v2/health/ready").status_code == 200  # still serving


def test_a_mixed_burst_is_batched_by_bucket_with_one_by_one_answers(text_server: ServerProcess, minilm: Path) -> None:
    short = sentences(48, seed=3, long_share=0.0, short_words=(3, 8))
    long = sentences(12, seed=4, long_share=1.0, long_words=(70, 90))
    texts = [t for pair in zip(short[:12], long, strict=True) for t in pair] + short[12:]
    tok = Tokenizer.from_file(str(minilm / "1" / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    expected = {"16": sum(n <= 16 for n in lengths), "128": sum(64 < n <= 128 for n in lengths)}
    assert expected["16"] + expected["128"] == len(texts)  # the two groups land in two buckets

    before = bucket_counts(text_server.url)
    with httpx.Client(base_url=text_server.url, timeout=60,
                      limits=httpx.Limits(max_connections=64)) as c, ThreadPoolExecutor(32) as pool:
        burst = list(pool.map(lambda t: embeddings(c.post(INFER, content=json_body([t])))[0], texts))
    after = bucket_counts(text_server.url)

    def delta(series: str, bucket: str) -> float:
        return after.get((series, bucket), 0.0) - before.get((series, bucket), 0.0)

    for bucket, rows in expected.items():
        assert delta("inferlane_text_rows_total", bucket) == rows, (bucket, before, after)
    buckets = {b for series, b in after if series == "inferlane_text_rows_total"}
    assert sum(delta("inferlane_text_rows_total", b) for b in buckets) == len(texts)  # no other bucket
    assert delta("inferlane_text_batches_total", "16") < expected["16"], "short texts were never batched"

    with httpx.Client(base_url=text_server.url, timeout=30) as c:
        alone = [embeddings(c.post(INFER, content=json_body([t])))[0] for t in texts]
    np.testing.assert_allclose(np.stack(burst), np.stack(alone), rtol=0, atol=1e-6)
