"""One model version, every lane, the same answers: the input contract and the one forward, end to end.

1. 1,024 rows (random features plus edge values: zeros, -0.0, huge and tiny magnitudes, subnormals,
   the largest FP32) scored through online V2 JSON, V2 binary, V1, jobs, batch (Parquet and CSV)
   and stream (Redis) give bit-identical labels and probabilities, equal to one direct forward.
2. A table of hostile values (HOSTILE, the same table as docs/inputs.md) gets the same accept or
   refuse decision from every lane that can express the value.

The online, V1 and jobs lanes go through the real ``inferlane serve``; batch and stream run
in-process against real files and a real redis-server.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import redis

from inferlane.core.model import ModelVersion
from inferlane.lanes.batch import BatchJob, run_batch
from inferlane.lanes.stream import StreamJob, StreamSettings, run_stream
from tests.conftest import Server

pytestmark = pytest.mark.e2e  # the online, V1 and jobs lanes go through the real server

WIDTH = 30
FIELDS = [f"f{i}" for i in range(WIDTH)]
ROOT = Path(__file__).resolve().parents[1]

Outputs = dict[int, tuple[int, np.ndarray]]
"""Row id → (label, probabilities as float32)."""


def rows() -> np.ndarray:
    """1,024 rows of 30 FP32 features: random, then rows of edge values."""
    rng = np.random.default_rng(20261129)
    x = rng.standard_normal((1024, WIDTH)).astype(np.float32) * 3
    # (A whole row of ±1e38 overflows inside the model to NaN, which JSON outputs cannot carry:
    # the largest values go among ordinary ones only.)
    edge = [0.0, -0.0, 1e30, -1e30, 1e-30, -1e-30, 1e-40, -1e-40, 1.4e-45, 1.0, 123456.789,
            2.0**24 + 1, 0.1, 1 / 3]
    among = [*edge, 1e38, -1e38, 3.4e38, -3.4e38]
    for i, v in enumerate(edge):
        x[i, :] = np.float32(v)                                # a row of one edge value
    for i, v in enumerate(among):
        x[len(edge) + i, i % WIDTH] = np.float32(v)            # an edge value among ordinary ones
    start = len(edge) + len(among)
    x[start:start + 8] = rng.choice(np.asarray(edge, np.float32), size=(8, WIDTH))
    return x


def as_json_numbers(x: np.ndarray) -> Any:
    """The exact FP32 values as JSON numbers (each float written as the 64-bit float it equals)."""
    return x.astype(np.float64).tolist()


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def assert_same(name: str, got: Outputs, want: Outputs) -> None:
    assert sorted(got) == sorted(want), f"{name}: rows {len(got)} != {len(want)}"
    differ = [i for i in want if got[i][0] != want[i][0] or not np.array_equal(bits(got[i][1]), bits(want[i][1]))]
    assert not differ, f"{name}: {len(differ)} rows differ, first {differ[:5]}: {got[differ[0]]} != {want[differ[0]]}"


def from_v2_json(doc: dict[str, Any], ids: list[int]) -> Outputs:
    outs = {o["name"]: o for o in doc["outputs"]}
    labels = outs["label"]["data"]
    probs = np.asarray(outs["probabilities"]["data"], np.float64).astype(np.float32).reshape(-1, 2)
    return {i: (int(labels[k]), probs[k]) for k, i in enumerate(ids)}


# -- the lanes -----------------------------------------------------------------------------------

CHUNK = 32


def online_v2_json(url: str, x: np.ndarray) -> Outputs:
    out: Outputs = {}
    with httpx.Client(base_url=url, timeout=30) as c:
        for lo in range(0, len(x), CHUNK):
            part = x[lo:lo + CHUNK]
            body = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": list(part.shape),
                                             "data": as_json_numbers(part)}]})
            r = c.post("/v2/models/fraud/infer", content=body)
            assert r.status_code == 200, r.text
            out.update(from_v2_json(r.json(), list(range(lo, lo + len(part)))))
    return out


def online_v2_binary(url: str, x: np.ndarray) -> Outputs:
    out: Outputs = {}
    with httpx.Client(base_url=url, timeout=30) as c:
        for lo in range(0, len(x), CHUNK):
            part = np.ascontiguousarray(x[lo:lo + CHUNK])
            raw = part.astype("<f4").tobytes()
            head = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": list(part.shape),
                                             "parameters": {"binary_data_size": len(raw)}}],
                                 "parameters": {"binary_data_output": True}})
            r = c.post("/v2/models/fraud/infer", content=head + raw,
                       headers={"Inference-Header-Content-Length": str(len(head))})
            assert r.status_code == 200, r.text
            n = int(r.headers["inference-header-content-length"])
            doc = orjson.loads(r.content[:n])
            blob, pos, tensors = r.content[n:], 0, {}
            for o in doc["outputs"]:
                size = o["parameters"]["binary_data_size"]
                dtype = {"FP32": "<f4", "INT64": "<i8"}[o["datatype"]]
                tensors[o["name"]] = np.frombuffer(blob[pos:pos + size], dtype).reshape(o["shape"])
                pos += size
            for k in range(len(part)):
                out[lo + k] = (int(tensors["label"][k]), tensors["probabilities"][k].astype(np.float32))
    return out


def online_v1(url: str, x: np.ndarray) -> Outputs:
    out: Outputs = {}
    with httpx.Client(base_url=url, timeout=30) as c:
        for lo in range(0, len(x), CHUNK):
            part = x[lo:lo + CHUNK]
            r = c.post("/v1/models/fraud:predict", content=orjson.dumps({"instances": as_json_numbers(part)}))
            assert r.status_code == 200, r.text
            for k, p in enumerate(r.json()["predictions"]):
                out[lo + k] = (int(p["label"]), np.asarray(p["probabilities"], np.float64).astype(np.float32))
    return out


def wait_job(c: httpx.Client, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        doc: dict[str, Any] = c.get(f"/v2/jobs/{job_id}").json()
        if doc["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return doc
        assert time.monotonic() < deadline, f"job {job_id} still {doc['status']}"
        time.sleep(0.02)


def jobs_lane(url: str, x: np.ndarray) -> Outputs:
    out: Outputs = {}
    chunk = 64  # the model's max_batch_size: one job is one request
    with httpx.Client(base_url=url, timeout=30) as c:
        submitted = []
        for lo in range(0, len(x), chunk):
            part = x[lo:lo + chunk]
            body = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": list(part.shape),
                                             "data": as_json_numbers(part)}]})
            r = c.post("/v2/models/fraud/jobs", content=body)
            assert r.status_code == 202, r.text
            submitted.append((r.json()["id"], list(range(lo, lo + len(part)))))
        for job_id, ids in submitted:
            doc = wait_job(c, job_id)
            assert doc["status"] == "succeeded", doc
            out.update(from_v2_json(doc["result"], ids))
    return out


def from_table(table: pa.Table) -> Outputs:
    labels = table.column("label").to_pylist()
    probs = np.asarray(table.column("probabilities").combine_chunks().flatten(), np.float32).reshape(-1, 2)
    return {int(i): (int(labels[k]), probs[k]) for k, i in enumerate(table.column("id").to_pylist())}


def batch_lane(model_dir: Path, x: np.ndarray, folder: Path, fmt: str) -> Outputs:
    folder.mkdir()
    table = pa.table({"id": pa.array(range(len(x)), pa.int64()),
                      **{f: pa.array(x[:, j], pa.float32()) for j, f in enumerate(FIELDS)}})
    if fmt == "parquet":
        pq.write_table(table, folder / "in.parquet", row_group_size=300)
    else:
        pacsv.write_csv(table, folder / "in.csv")
    report = run_batch(BatchJob(model=str(model_dir), input=str(folder / f"in.{fmt}"), output=str(folder / "out"),
                                key=["id"], job_id=f"cross-{fmt}", shard_rows=500, batch_size=100, progress=False))
    assert report["status"] == "succeeded" and report["rows_written"] == len(x), report
    return from_table(pq.read_table(folder / "out"))


def stream_lane(model_dir: Path, x: np.ndarray, redis_url: str, prefix: str) -> Outputs:
    client = redis.Redis.from_url(redis_url)
    base = redis_url.rsplit("/", 1)[0]
    try:
        pipe = client.pipeline(transaction=False)
        for i, row in enumerate(x):
            pipe.xadd(f"{prefix}:in", {"data": orjson.dumps({"id": i, "features": as_json_numbers(row)})})
        pipe.execute()
        job = StreamJob(model=str(model_dir), source=f"{base}/{prefix}:in", group=f"{prefix}-g",
                        sink=f"{base}/{prefix}:out", dlq=f"{base}/{prefix}:dlq", key="id",
                        settings=StreamSettings(max_batch=100, max_wait_ms=20, idle_exit_s=1.0))
        report = run_stream(job, threading.Event())
        assert report["events_out"] == len(x) and report["dead_lettered"] == 0, report
        out: Outputs = {}
        for _, fields in client.xrange(f"{prefix}:out"):
            rec = orjson.loads(fields[b"data"])
            out[int(rec["id"])] = (int(rec["label"]), np.asarray(rec["probabilities"], np.float64).astype(np.float32))
        return out
    finally:
        client.close()


def test_every_lane_gives_bit_identical_outputs(server: Server, model_repo: Path, redis_url: str,
                                                tmp_path: Path) -> None:
    x = rows()
    model = ModelVersion.open(model_repo / "fraud")
    try:
        direct = model.forward({"features": x})
    finally:
        model.close()
    want: Outputs = {i: (int(direct["label"][i]), direct["probabilities"][i]) for i in range(len(x))}
    assert np.isfinite(direct["probabilities"]).all()
    lanes = {
        "online V2 JSON": online_v2_json(server.url, x),
        "online V2 binary": online_v2_binary(server.url, x),
        "online V1": online_v1(server.url, x),
        "jobs": jobs_lane(server.url, x),
        "batch Parquet": batch_lane(model_repo / "fraud", x, tmp_path / "parquet", "parquet"),
        "batch CSV": batch_lane(model_repo / "fraud", x, tmp_path / "csv", "csv"),
        "stream Redis": stream_lane(model_repo / "fraud", x, redis_url, "cross"),
    }
    for name, got in lanes.items():
        assert_same(name, got, want)
    negative_zero = [i for i in range(len(x)) if np.signbit(x[i]).any() and (x[i] == 0).any()]
    assert negative_zero, "the edge rows include -0.0"


# -- hostile values: the same decision in every lane ----------------------------------------------

@dataclass(frozen=True)
class Case:
    """One value put in place of feature 3 of an ordinary row, written the way each source can."""

    name: str
    json: str | None
    """The JSON literal (V2, V1, jobs, stream events, JSONL lines); None: a row with no feature 3."""
    accepted: bool
    csv: str | None = ""
    """The CSV cell text; None: the value cannot be written in CSV (CSV has no types)."""
    parquet: tuple[Any, pa.DataType] | None = None
    """The Parquet column value and type; None: no such column."""
    binary: float | None = None
    """The FP32 value for the V2 binary extension, when FP32 can hold it."""


NAN, INF = float("nan"), float("inf")
HOSTILE = [
    Case("a number", "0.5", True, "0.5", (0.5, pa.float64()), 0.5),
    Case("an integer", "7", True, "7", (7, pa.int64()), 7.0),
    Case("negative zero", "-0.0", True, "-0.0", (-0.0, pa.float64()), -0.0),
    Case("a tiny number (rounds to an FP32 subnormal)", "1e-45", True, "1e-45", (1e-45, pa.float64())),
    Case("a tinier number (rounds to zero)", "1e-50", True, "1e-50", (1e-50, pa.float64())),
    Case("the largest FP32", "3.4028234663852886e38", True, "3.4028234663852886e38",
         (3.4028234663852886e38, pa.float64()), 3.4028234663852886e38),
    Case("a number past FP32", "1e39", False, "1e39", (1e39, pa.float64())),
    Case("a number past 64-bit floats", "1e400", False, "1e400"),
    Case("true", "true", False, "true", (True, pa.bool_())),
    Case("a numeric string", '"0.5"', False, None, ("0.5", pa.string())),
    Case("a string", '"abc"', False, "abc", ("abc", pa.string())),
    Case("null", "null", False, "", (None, pa.float64())),
    Case("NaN", "NaN", False, "NaN", (NAN, pa.float64()), NAN),
    Case("infinity", "Infinity", False, "Infinity", (INF, pa.float64()), INF),
    Case("a list", "[0.5]", False, "[0.5]", ([0.5], pa.list_(pa.float64()))),
    Case("an object", "{}", False, "{}", ({"a": 1.0}, pa.struct([("a", pa.float64())]))),
    Case("a missing feature", None, False, None, None),
]
BASE = [0.25] * WIDTH


def case_row(case: Case) -> str:
    """The features as JSON text (a list of 30, or 29 when the value is missing)."""
    parts = [repr(v) for v in BASE]
    if case.json is None:
        del parts[3]
    else:
        parts[3] = case.json
    return "[" + ", ".join(parts) + "]"


def decisions_over_http(url: str, path: str, body: str, accepted: int = 200) -> dict[str, bool]:
    """POST ``body`` (``{row}`` marks where the case's row goes) for every case: accepted or 400."""
    out = {}
    with httpx.Client(base_url=url, timeout=30) as c:
        for case in HOSTILE:
            r = c.post(path, content=body.replace("{row}", case_row(case)).encode())
            assert r.status_code in (accepted, 400), r.text
            if r.status_code == 202:  # a job: accepted means it runs and succeeds
                assert wait_job(c, r.json()["id"])["status"] == "succeeded"
            out[case.name] = r.status_code == accepted
    return out


V2_BODY = '{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": {row}}]}'


def decisions_binary(url: str) -> dict[str, bool]:
    out = {}
    with httpx.Client(base_url=url, timeout=30) as c:
        for case in HOSTILE:
            if case.binary is None and case.json is not None:
                continue  # FP32 bytes cannot hold it
            values = list(BASE)
            if case.json is None:
                del values[3]
            else:
                assert case.binary is not None
                values[3] = case.binary
            raw = np.asarray(values, "<f4").tobytes()
            head = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30],
                                             "parameters": {"binary_data_size": len(raw)}}]})
            r = c.post("/v2/models/fraud/infer", content=head + raw,
                       headers={"Inference-Header-Content-Length": str(len(head))})
            assert r.status_code in (200, 400), r.text
            out[case.name] = r.status_code == 200
    return out


def record(i: int, case: Case) -> bytes:
    return ('{"id": ' + str(i) + ', "features": ' + case_row(case) + "}").encode()


def decisions_stream(model_dir: Path, redis_url: str, prefix: str) -> dict[str, bool]:
    client = redis.Redis.from_url(redis_url)
    base = redis_url.rsplit("/", 1)[0]
    try:
        for i, case in enumerate(HOSTILE):
            client.xadd(f"{prefix}:in", {"data": record(i, case)})
        job = StreamJob(model=str(model_dir), source=f"{base}/{prefix}:in", group=f"{prefix}-g",
                        sink=f"{base}/{prefix}:out", dlq=f"{base}/{prefix}:dlq", key="id",
                        settings=StreamSettings(max_batch=64, max_wait_ms=20, idle_exit_s=1.0))
        run_stream(job, threading.Event())
        scored = {int(orjson.loads(f[b"data"])["id"]) for _, f in client.xrange(f"{prefix}:out")}
        dead = {orjson.loads(f[b"data"])["payload"] for _, f in client.xrange(f"{prefix}:dlq")}
    finally:
        client.close()
    out = {}
    for i, case in enumerate(HOSTILE):
        assert (i in scored) != (record(i, case).decode() in dead), case.name
        out[case.name] = i in scored
    return out


def batch_decisions(model_dir: Path, folder: Path, fmt: str) -> dict[str, bool]:
    """Which rows a batch job over one input file per case (JSONL, CSV) or one Parquet file per case
    (a column has one type) wrote, and which it rejected."""
    folder.mkdir()
    cases = {i: c for i, c in enumerate(HOSTILE) if not (fmt == "csv" and c.csv is None and c.json is not None)}
    row_of = {i: n for n, i in enumerate(cases)}  # JSONL and CSV: the file row of each case
    if fmt == "jsonl":
        (folder / "in.jsonl").write_bytes(b"\n".join(record(i, c) for i, c in cases.items()) + b"\n")
    elif fmt == "csv":
        lines = ["id," + ",".join(FIELDS)]
        for i, c in cases.items():
            cells = [repr(v) for v in BASE]
            if c.json is None:
                del cells[3]  # a short line: malformed CSV
            else:
                assert c.csv is not None
                cells[3] = '"' + c.csv.replace('"', '""') + '"' if c.csv else ""
            lines.append(f"{i}," + ",".join(cells))
        (folder / "in.csv").write_text("\n".join(lines) + "\n")
    else:
        for i, c in cases.items():
            cols: dict[str, pa.Array] = {"id": pa.array([i], pa.int64())}
            for j, f in enumerate(FIELDS):
                if j != 3:
                    cols[f] = pa.array([BASE[j]], pa.float64())
                elif c.parquet is not None:
                    cols[f] = pa.array([c.parquet[0]], c.parquet[1])
            pq.write_table(pa.table(cols), folder / f"case-{i:02d}.parquet")
    out = folder.parent / f"{folder.name}-out"  # beside the input folder: an output never sits inside it
    report = run_batch(BatchJob(model=str(model_dir), input=str(folder), input_format=fmt,  # type: ignore[arg-type]
                                output=str(out), key=["id"], job_id=f"hostile-{fmt}",
                                columns={} if fmt == "jsonl" else {"features": FIELDS}, max_reject_ratio=1.0,
                                progress=False))
    assert report["shards_failed"] == 0, report
    written = set(pq.read_table(out).column("id").to_pylist()) if report["rows_written"] else set()
    rejects = [orjson.loads(line) for p in (out / "_rejects").glob("*.jsonl")
               for line in p.read_bytes().splitlines()]
    if fmt == "parquet":  # one file per case: every reject has the case's key
        rejected = {int(r["key"]) for r in rejects}
    else:  # by file row: a line that is not JSON (or not CSV) has no key to report
        case_at = {n: i for i, n in row_of.items()}
        rejected = {case_at[r["row"]] for r in rejects}
    assert len(rejected) == len(rejects)
    out = {}
    for i, c in cases.items():
        assert (i in written) != (i in rejected), (fmt, c.name)
        out[c.name] = i in written
    return out


def test_hostile_values_get_the_same_decision_in_every_lane(server: Server, model_repo: Path, redis_url: str,
                                                            tmp_path: Path) -> None:
    expected = {c.name: c.accepted for c in HOSTILE}
    model_dir = model_repo / "fraud"
    lanes = {
        "online V2 JSON": decisions_over_http(server.url, "/v2/models/fraud/infer", V2_BODY),
        "online V2 binary": decisions_binary(server.url),
        "online V1": decisions_over_http(server.url, "/v1/models/fraud:predict", '{"instances": [{row}]}'),
        "jobs": decisions_over_http(server.url, "/v2/models/fraud/jobs", V2_BODY, accepted=202),
        "stream Redis": decisions_stream(model_dir, redis_url, "hostile"),
        "batch JSONL": batch_decisions(model_dir, tmp_path / "jsonl", "jsonl"),
        "batch CSV": batch_decisions(model_dir, tmp_path / "csv", "csv"),
        "batch Parquet": batch_decisions(model_dir, tmp_path / "parquet", "parquet"),
    }
    for lane, got in lanes.items():
        differ = {name: accepted for name, accepted in got.items() if accepted != expected[name]}
        assert not differ, f"{lane} decided otherwise than the table: {differ}"
    assert len(lanes["online V2 binary"]) == 7 and len(lanes["batch CSV"]) == len(HOSTILE) - 1


def test_the_table_in_docs_matches_the_rules() -> None:
    """docs/inputs.md lists every case of HOSTILE with the decision the lanes were checked against."""
    text = (ROOT / "docs" / "inputs.md").read_text(encoding="utf-8")
    for case in HOSTILE:
        row = re.search(r"^\| " + re.escape(case.name) + r" \|(.*)$", text, re.MULTILINE)
        assert row is not None, f"docs/inputs.md has no row for {case.name!r}"
        verdict = "accepted" if case.accepted else "refused"
        assert f"| {verdict} |" in row.group(0), f"{case.name}: the docs do not say {verdict}"
