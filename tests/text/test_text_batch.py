"""The batch lane embeds a text column into a Parquet vector column (fixed-size list of float32),
and a job SIGKILLed mid-run and re-run ends with exactly the rows of an uninterrupted run.

The issue asks for 100k sentences: on this 2-CPU machine MiniLM embeds ~150-250 short sentences/s,
so 100k take minutes; this test runs 600 and ``python -m benchmarks.text`` runs the 100k."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferlane.core.model import ModelVersion
from inferlane.demo.texts import sentences
from inferlane.lanes.batch import BatchJob, run_batch
from tests.batch.test_batch_resume import manifest_lines

N_ROWS = 600
SHARD_ROWS = 100
N_SHARDS = N_ROWS // SHARD_ROWS


@pytest.fixture(scope="module")
def text_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = sentences(N_ROWS, seed=21, long_share=0.03)
    path = tmp_path_factory.mktemp("text-batch") / "sentences.parquet"
    pq.write_table(pa.table({"id": np.arange(N_ROWS, dtype=np.int64), "text": texts}), path,
                   row_group_size=SHARD_ROWS)
    return path


def cli(minilm: Path, inp: Path, out: Path, job_id: str) -> list[str]:
    return [sys.executable, "-m", "inferlane", "batch", "run", "--model", str(minilm), "--input", str(inp),
            "--output", str(out), "--key", "id", "--job-id", job_id, "--shard-rows", str(SHARD_ROWS),
            "--batch-size", "32", "--threads", "1", "--quiet", "--json"]


def test_sentences_embedded_to_a_vector_column_and_a_killed_job_resumes(minilm: Path, text_table: Path,
                                                                        tmp_path: Path) -> None:
    ref_out = tmp_path / "reference"
    report = run_batch(BatchJob(model=str(minilm), input=str(text_table), output=str(ref_out), key=["id"],
                                job_id="text-ref", shard_rows=SHARD_ROWS, progress=False))
    assert report["status"] == "succeeded" and report["rows_written"] == N_ROWS, report
    reference = pq.read_table(ref_out).drop_columns(["scored_at"]).sort_by("id")
    assert reference.schema.field("embedding").type == pa.list_(pa.float32(), 384)

    out = tmp_path / "out"
    log = tmp_path / "killed.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cli(minilm, text_table, out, "text-resume"), stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not 1 <= manifest_lines(out) < N_SHARDS:
            assert proc.poll() is None, f"the job ended before it could be killed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no shard committed in 60 s:\n{log.read_text()}"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    at_kill = manifest_lines(out)
    assert 1 <= at_kill < N_SHARDS

    done = subprocess.run(cli(minilm, text_table, out, "text-resume"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    assert resumed["status"] == "succeeded"
    assert resumed["shards_skipped_already_done"] >= at_kill
    assert resumed["shards_skipped_already_done"] + resumed["shards_committed"] == N_SHARDS

    rows = pq.read_table(out).drop_columns(["scored_at"]).sort_by("id")
    assert rows.num_rows == N_ROWS and rows["id"].to_pylist() == list(range(N_ROWS))
    assert rows.equals(reference)  # the same vectors, bit for bit, with no duplicate and no gap

    # The batch lane's vectors are the online lane's: same padding per text, same pooling.
    texts = pq.read_table(text_table).column("text").to_pylist()[:20]
    mv = ModelVersion.open(minilm)
    alone = mv.forward({"text": np.asarray([t.encode() for t in texts], dtype=object)})["embedding"]
    got = np.asarray(rows.column("embedding").to_pylist()[:20], dtype=np.float32)
    np.testing.assert_allclose(got, alone, rtol=0, atol=1e-6)


def test_a_text_the_model_refuses_is_a_reject_and_the_rest_of_its_shard_is_scored(minilm: Path,
                                                                                   tmp_path: Path) -> None:
    texts = sentences(60, seed=5, long_share=0.0)
    texts[7] = "word " * 400  # 402 tokens: over max_input_length 256
    texts[31] = "x" * 20_000  # over max_input_bytes (64 bytes per token of max_input_length)
    inp = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": np.arange(60, dtype=np.int64), "text": texts}), inp)
    report = run_batch(BatchJob(model=str(minilm), input=str(inp), output=str(tmp_path / "out"), key=["id"],
                                job_id="text-rejects", max_reject_ratio=0.05, progress=False))
    assert report["status"] == "succeeded" and report["shards_failed"] == 0, report
    assert (report["rows_written"], report["rows_rejected"]) == (58, 2)
    rejects = {r["key"]: r["reason"] for p in sorted((tmp_path / "out" / "_rejects").glob("*.jsonl"))
               for r in map(json.loads, p.read_text().splitlines())}
    assert rejects == {
        "7": "input 'text': 402 tokens; model takes at most 256 (tokenizer.max_input_length)",
        "31": "input 'text': 20000 bytes; the limit is 16384 (tokenizer.max_input_bytes)"}
    rows = pq.read_table(tmp_path / "out").sort_by("id")
    assert rows["id"].to_pylist() == [i for i in range(60) if i not in (7, 31)]
    keep = [t for i, t in enumerate(texts) if i not in (7, 31)]
    alone = ModelVersion.open(minilm).forward({"text": np.asarray([t.encode() for t in keep], dtype=object)})
    np.testing.assert_allclose(np.asarray(rows.column("embedding").to_pylist(), dtype=np.float32),
                               alone["embedding"], rtol=0, atol=1e-6)
