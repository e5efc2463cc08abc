"""The gRPC server inside ``create_app``'s lifespan, in process: it starts and stops with the app, answers
on the app's event loop, and the repository extension is absent without an admin token (404 over HTTP,
UNIMPLEMENTED over gRPC)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from inferlane.testing import accepts_connections, free_port
from inferlane.transport.grpc.proto import grpc_service_pb2 as pb
from inferlane.transport.grpc.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.conftest import write_slow_model
from tests.grpc.conftest import in_process

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def running(tmp_path: Path, port: int) -> AsyncIterator[tuple[httpx.AsyncClient, GRPCInferenceServiceStub]]:
    write_slow_model(tmp_path / "models", delay=0.0)
    async with in_process(tmp_path / "models", tmp_path, port) as running_app:
        yield running_app


async def test_starts_and_stops_with_the_app_and_answers_on_its_loop(tmp_path: Path) -> None:
    port = free_port()
    async with running(tmp_path, port) as (http, stub):
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        req = pb.ModelInferRequest(model_name="slow", raw_input_contents=[b"\0" * 16])
        req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        answer = await stub.ModelInfer(req)
        assert answer.model_version == "1" and answer.raw_output_contents[0] == b"\0" * 16
        stats = (await http.get("/v2/models/slow/stats")).json()["model_stats"]
        assert stats[0]["inference_count"] == 1 and stats[0]["inference_stats"]["success"]["count"] == 1
        assert (await http.get("/v2/models/slow/versions/1/stats")).status_code == 200
        assert (await http.get("/v2/models/nope/stats")).status_code == 404
        assert (await http.get("/v2/models/slow")).json()["name"] == "slow"  # metadata still there
    assert not accepts_connections(port)  # stopped with the app


async def test_without_an_admin_token_the_repository_extension_is_absent(tmp_path: Path) -> None:
    async with running(tmp_path, free_port()) as (http, stub):
        for path in ("/v2/repository/index", "/v2/repository/models/slow/load", "/v2/repository/models/slow/unload"):
            assert (await http.post(path)).status_code == 404, path
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=(("authorization", "Bearer x"),))
        assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "INFERLANE_ADMIN_TOKEN" in (failed.value.details() or "")
