"""``python -m benchmarks.text``: MiniLM sentence embeddings, inferlane against sentence-transformers.

    .venv/bin/python -m benchmarks.text                  # 100,000 sentences in the batch lane (long)
    .venv/bin/python -m benchmarks.text --quick          # a smoke run, under a minute
    .venv/bin/python -m benchmarks.text --rows 5000 --seconds 10

Measured in one run, on one machine:
- batch: sentences/s of ``inferlane batch run`` (Parquet text column → vector column) and of
  sentence-transformers' ``encode`` on torch CPU over the same sentences (target: >= 1.5x);
- online: requests/s and p99 of one-sentence V2 JSON requests at 1 and 64 connections (wrk);
- length-aware vs plain batching: the same server, two copies of the model, one with buckets and
  one padding every text to max_input_length (``buckets: [256]``), under the same mix of short
  and long texts at 64 connections (target: >= 2x requests/s).
Missed targets are reported, not failed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import command_line, load_average, logger, machine_line, source_state
from benchmarks.online.wrk import WrkResult, lua_script, run_wrk, wrk_command
from inferlane.core.text.export import MODEL_YAML, export_minilm, minilm_source
from inferlane.demo.texts import sentences
from inferlane.lanes.batch import BatchJob, run_batch
from inferlane.testing import Column, format_table, num, ratio
from inferlane.testing.server import serve

log = logger("text-bench")
BATCH_TARGET, BUCKET_TARGET = 1.5, 2.0
LONG_SHARE = 0.1
"""Share of long texts (80-180 words) in the mixes; the rest are 3-12 words."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.text", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 sentences, 3 s per wrk run")
    ap.add_argument("--rows", type=int, default=None, help="sentences in the batch lane (default 100,000)")
    ap.add_argument("--seconds", type=int, default=None, help="seconds per wrk run (default 15; 3 with --quick)")
    ap.add_argument("--mix", type=int, default=None,
                    help="requests in the length-aware vs plain comparison (default 640; 64 with --quick)")
    args = ap.parse_args(argv)
    args.rows = args.rows or (200 if args.quick else 100_000)
    args.seconds = args.seconds or (3 if args.quick else 15)
    args.mix = args.mix or (64 if args.quick else 640)
    return args


def prepare(work: Path) -> Path:
    """The exported model twice: ``minilm`` (buckets) and ``plain`` (every text padded to 256)."""
    repo = work / "repo"
    export_minilm(repo)
    plain = repo / "plain" / "1"
    plain.mkdir(parents=True)
    for f in (repo / "minilm" / "1").iterdir():
        os.link(f, plain / f.name)
    (plain.parent / "model.yaml").write_text(MODEL_YAML.replace("tokenizer:\n", "tokenizer:\n  buckets: [256]\n"),
                                             encoding="utf-8")
    return repo


def batch_lane(repo: Path, texts: list[str], work: Path) -> float:
    path = work / "sentences.parquet"
    pq.write_table(pa.table({"id": np.arange(len(texts), dtype=np.int64), "text": texts}), path,
                   row_group_size=10_000)
    report = run_batch(BatchJob(model=str(repo / "minilm"), input=str(path), output=str(work / "out"), key=["id"],
                                job_id="text-bench", shard_rows=10_000, progress=False))
    assert report["status"] == "succeeded" and report["rows_written"] == len(texts), report
    return float(report["rows_written"]) / float(report["duration_s"])


def sentence_transformers_rate(texts: list[str]) -> tuple[float, float]:
    """(sentences/s encoding all at batch 64, sentences/s one at a time) on torch CPU."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_source()), device="cpu")
    st.encode(texts[:64], batch_size=64)
    t0 = time.perf_counter()
    st.encode(texts, batch_size=64)
    bulk = len(texts) / (time.perf_counter() - t0)
    few = texts[:100]
    t0 = time.perf_counter()
    for t in few:
        st.encode([t])
    return bulk, len(few) / (time.perf_counter() - t0)


def wrk(url: str, model: str, texts: list[str], connections: int, seconds: int, work: Path) -> WrkResult:
    bodies = [orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}]})
              for t in texts]
    script = work / f"{model}-{connections}.lua"
    script.write_text(lua_script(bodies), encoding="utf-8")
    result = run_wrk(wrk_command(f"{url}/v2/models/{model}/infer", connections, seconds, script, prefix=[]),
                     timeout_s=seconds + 60)
    if result.non_2xx:
        raise RuntimeError(f"{result.non_2xx} requests to {model} failed")
    return result


def burst(url: str, model: str, texts: list[str], connections: int) -> float:
    """Requests/s of sending every text once (one request each) over ``connections`` connections: a
    fixed amount of work, so a slow configuration is measured to its end rather than cut off."""
    import httpx

    bodies = [orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}]})
              for t in texts]
    with httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=connections)) as c, \
            ThreadPoolExecutor(connections) as pool:
        t0 = time.perf_counter()
        codes = list(pool.map(lambda b: c.post(f"/v2/models/{model}/infer", content=b).status_code, bodies))
        seconds = time.perf_counter() - t0
    if set(codes) != {200}:
        raise RuntimeError(f"requests to {model} failed: {sorted(set(codes))}")
    return len(texts) / seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = time.monotonic(), load_average()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="text-bench-") as tmp:
        work = Path(tmp)
        log("exporting all-MiniLM-L6-v2 to ONNX")
        repo = prepare(work)
        texts = sentences(args.rows, seed=1, long_share=0.05)

        log(f"batch lane: {len(texts)} sentences")
        ours = batch_lane(repo, texts, work)
        log("sentence-transformers on the same sentences")
        st_bulk, st_single = sentence_transformers_rate(texts)
        rows.append(["batch: sentences/s", num(ours, ",.0f"), num(st_bulk, ",.0f"), ratio(ours / st_bulk),
                     f">= {BATCH_TARGET}x"])

        mix = sentences(args.mix, seed=2, long_share=LONG_SHARE)
        short = sentences(500, seed=3, long_share=0.0)
        with serve(repo, log_path=work / "server.log") as server:
            results: dict[int, WrkResult] = {}
            for c in (1, 64):
                log(f"online, short sentences, {c} connection(s)")
                results[c] = wrk(server.url, "minilm", short, c, args.seconds, work)
            rows.append(["online c=1: requests/s", num(results[1].rps, ",.0f"), num(st_single, ",.0f"),
                         ratio(results[1].rps / st_single), "-"])
            rows.append(["online c=1: p99 ms", num(results[1].p99_ms, ".1f"), "-", "-", "-"])
            rows.append(["online c=64: requests/s", num(results[64].rps, ",.0f"), num(st_bulk, ",.0f"),
                         ratio(results[64].rps / st_bulk), "-"])
            rows.append(["online c=64: p99 ms", num(results[64].p99_ms, ".1f"), "-", "-", "-"])
            log("length-aware vs plain batching, mixed texts, 64 connections")
            aware = burst(server.url, "minilm", mix, 64)
            plain = burst(server.url, "plain", mix, 64)
            rows.append([f"mix of {len(mix)} ({LONG_SHARE:.0%} long) c=64: requests/s", num(aware, ",.1f"),
                         num(plain, ",.1f"), ratio(aware / plain), f">= {BUCKET_TARGET}x"])

    print(f"# text embedding (all-MiniLM-L6-v2), {command_line()}")
    print(f"{source_state()}; {args.rows} sentences in the batch lane, {args.seconds} s per wrk run\n")
    print(format_table([Column("measure", left=True), Column("inferlane"), Column("baseline"), Column("ratio"),
                        Column("target")], rows))
    print("\nbaselines: sentence-transformers (torch CPU) for batch and online rows, one sentence per call "
          "at c=1; plain batching (every text padded to 256 tokens) for the mix row.")
    print(machine_line(load_before, load_average(), time.monotonic() - started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
