"""Hybrid answers over gRPC: a request with ``parameters.key`` is answered from the store (or live) by
the same rule as over HTTP, and says where the answer came from in the response parameters."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferlane.lanes.batch import BatchJob, run_batch
from inferlane.testing import free_port
from inferlane.transport.grpc.proto import grpc_service_pb2 as pb
from inferlane.transport.grpc.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.grpc.conftest import in_process
from tests.hybrid.test_hybrid_serve import FEATURES, features_of, with_hybrid

pytestmark = pytest.mark.anyio
ROWS = 200


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, GRPCInferenceServiceStub]]:
    url = f"store://grpc-scores-{int(time.time() * 1e6)}"
    repo = tmp_path / "repo"
    with_hybrid(repo, "scores", {"store": url, "max_age": "1h"})
    x = features_of(ROWS)
    pq.write_table(pa.table({"id": [f"k{i}" for i in range(ROWS)], **{f"f{j}": x[:, j] for j in range(FEATURES)}}),
                   tmp_path / "in.parquet")
    report = run_batch(BatchJob(model=str(repo / "scores"), input=str(tmp_path / "in.parquet"), output=url,
                                key=["id"], job_id="precompute", progress=False))
    assert report["rows_written"] == ROWS, report
    async with in_process(repo, tmp_path, free_port()) as running_app:
        yield running_app


def keyed(key: str, x: np.ndarray | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="scores")
    req.parameters["key"].string_param = key
    if x is not None:
        req.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
    return req


def params(answer: pb.ModelInferResponse) -> dict[str, object]:
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in answer.parameters.items()}


async def test_keys_over_grpc_follow_the_http_rule(tmp_path: Path) -> None:
    x = features_of(ROWS)
    async with running(tmp_path) as (http, stub):
        hit = await stub.ModelInfer(keyed("k7"))
        p = params(hit)
        assert p["source"] == "precomputed" and p["model_version"] == "1", p
        assert 0 <= float(str(p["age_s"])) < 3600
        # bit for bit the HTTP answer for the same key
        body = {"parameters": {"key": "k7", "binary_data_output": True}}
        r = await http.post("/v2/models/scores/infer", content=orjson.dumps(body))
        assert r.status_code == 200, r.text
        length = int(r.headers["inference-header-content-length"])
        sizes = [t["parameters"]["binary_data_size"] for t in orjson.loads(r.content[:length])["outputs"]]
        names = [t["name"] for t in orjson.loads(r.content[:length])["outputs"]]
        pos, over_http = length, {}
        for name, size in zip(names, sizes, strict=True):
            over_http[name] = r.content[pos:pos + size]
            pos += size
        over_grpc = {o.name: raw for o, raw in zip(hit.outputs, hit.raw_output_contents, strict=True)}
        assert over_grpc == over_http

        # a key never stored: NOT_FOUND with the reason without inputs, scored live with them
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ModelInfer(keyed("nobody"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "missing" in (missing.value.details() or "")
        live = await stub.ModelInfer(keyed("nobody", x[:1]))
        assert params(live)["source"] == "live" and "age_s" not in params(live)

        # bad keys are INVALID_ARGUMENT, as over HTTP
        for bad in ("", "a\0b", "k" * 2000):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ModelInfer(keyed(bad))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        # no key and no inputs
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.ModelInfer(pb.ModelInferRequest(model_name="scores"))
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
