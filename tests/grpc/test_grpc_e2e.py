"""End to end over gRPC: the real ``tritonclient.grpc`` (and raw stubs of Triton's own proto, an
independent encoder) against ``inferlane serve --grpc-port``, beside HTTP on the same server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tpb_grpc
from tritonclient.utils import InferenceServerException

from inferlane.demo.models import synthetic_transactions
from tests.grpc.conftest import Served

pytestmark = pytest.mark.e2e


def fraud_input(x: np.ndarray) -> tg.InferInput:
    inp = tg.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a failed tritonclient call."""
    with pytest.raises(InferenceServerException) as failed:
        call()  # type: ignore[operator]
    return failed.value.status(), failed.value.message()


def test_health_and_metadata(served: Served) -> None:
    c = tg.InferenceServerClient(served.grpc_url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("fraud") and c.is_model_ready("fraud", "1")
    code, message = status_of(lambda: c.is_model_ready("nope"))
    assert code == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in message
    meta = c.get_server_metadata(as_json=True)
    assert meta["name"] == "inferlane"
    assert {"statistics", "model_repository"} <= set(meta["extensions"])
    grpc_meta = c.get_model_metadata("fraud", as_json=True)
    http_meta = httpx.get(f"http://{served.url}/v2/models/fraud").json()
    assert grpc_meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "30"]}]
    assert grpc_meta["name"] == http_meta["name"] and grpc_meta["versions"] == http_meta["versions"]
    assert grpc_meta["platform"] == http_meta["platform"] == "onnxruntime_onnx"
    assert [o["name"] for o in grpc_meta["outputs"]] == [o["name"] for o in http_meta["outputs"]]
    code, _ = status_of(lambda: c.get_model_metadata("fraud", "9"))
    assert code == "StatusCode.NOT_FOUND"
    code, _ = status_of(lambda: c.get_model_config("fraud"))  # left out of the vendored proto
    assert code == "StatusCode.UNIMPLEMENTED"
    c.close()


@pytest.mark.parametrize("rows", [1, 64])
def test_infer_is_bit_identical_to_http(served: Served, rows: int) -> None:
    x, _ = synthetic_transactions(rows, seed=31 + rows)
    g = tg.InferenceServerClient(served.grpc_url)
    h = th.InferenceServerClient(served.url)
    got = g.infer("fraud", [fraud_input(x)], request_id=f"rows-{rows}", parameters={"tenant": "t-1"})
    response = got.get_response()
    assert (response.id, response.model_name, response.model_version) == (f"rows-{rows}", "fraud", "1")
    assert response.parameters["tenant"].string_param == "t-1"  # echoed, as HTTP echoes it
    assert len(response.raw_output_contents) == 2  # outputs in raw contents, as Triton answers
    hin = th.InferInput("features", list(x.shape), "FP32")
    hin.set_data_from_numpy(x, binary_data=True)
    want = h.infer("fraud", [hin], outputs=[th.InferRequestedOutput(n) for n in ("label", "probabilities")])
    for name in ("label", "probabilities"):
        a, b = got.as_numpy(name), want.as_numpy(name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    only = g.infer("fraud", [fraud_input(x)], outputs=[tg.InferRequestedOutput("label")])
    assert [o.name for o in only.get_response().outputs] == ["label"]
    assert only.as_numpy("label").tobytes() == want.as_numpy("label").tobytes()
    g.close()
    h.close()


def test_typed_contents_and_routing_key(served: Served) -> None:
    """Triton's own messages through its own stub: typed fp32_contents answer what raw contents answer."""
    x, _ = synthetic_transactions(3, seed=41)
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = tpb_grpc.GRPCInferenceServiceStub(channel)
        typed = tpb.ModelInferRequest(model_name="fraud")
        t = typed.inputs.add(name="features", datatype="FP32", shape=[3, 30])
        t.contents.fp32_contents.extend(x.ravel().tolist())
        typed.parameters["routing_key"].string_param = "user-7"
        raw = tpb.ModelInferRequest(model_name="fraud", raw_input_contents=[x.tobytes()])
        raw.inputs.add(name="features", datatype="FP32", shape=[3, 30])
        a = stub.ModelInfer(typed, metadata=[("inferlane-routing-key", "user-7")])
        b = stub.ModelInfer(raw)
        assert list(a.raw_output_contents) == list(b.raw_output_contents)
        assert "routing_key" not in a.parameters  # consumed by the protocol, not echoed


def _infer_error(served: Served, request: tpb.ModelInferRequest,
                 metadata: tuple[tuple[str, str], ...] = (), timeout: float | None = None) -> grpc.RpcError:
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = tpb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(request, metadata=metadata, timeout=timeout)
    return failed.value


def _request(model: str, datatype: str, shape: list[int], raw: bytes, version: str = "") -> tpb.ModelInferRequest:
    req = tpb.ModelInferRequest(model_name=model, model_version=version, raw_input_contents=[raw])
    req.inputs.add(name="features" if model == "fraud" else "x", datatype=datatype, shape=shape)
    return req


@pytest.mark.parametrize(("request_", "code", "words"), [
    (_request("fraud", "FP64", [1, 30], b"\0" * 240), "INVALID_ARGUMENT", "datatype must be FP32"),
    (_request("fraud", "FP32", [1, 29], b"\0" * 116), "INVALID_ARGUMENT", "does not match [-1, 30]"),
    (_request("fraud", "FP32", [1, 30], b"\0" * 119), "INVALID_ARGUMENT", "is not 30 x 4 bytes"),
    (_request("fraud", "FP32", [1, 30], np.full(30, np.nan, np.float32).tobytes()), "INVALID_ARGUMENT",
     "NaN or infinity where FP32 numbers belong"),
    (_request("fraud", "FP32", [10_000, 30], b"\0" * 1_200_000), "RESOURCE_EXHAUSTED",
     "exceeds the model's limit of 1048576 bytes"),
    (_request("fraud", "FP32", [10**9, 30], b""), "RESOURCE_EXHAUSTED", "the limit is"),
    (_request("nope", "FP32", [1, 4], b"\0" * 16), "NOT_FOUND", "unknown model 'nope'"),
    (_request("fraud", "FP32", [1, 30], b"\0" * 120, version="7"), "NOT_FOUND", "has no version '7'"),
    (_request("broken", "FP32", [1, 4], np.full(4, 13.0, np.float32).tobytes()), "INTERNAL", "request id"),
], ids=["dtype", "shape", "raw-size", "nan", "too-large", "shape-too-large", "unknown-model", "unknown-version",
        "model-failed"])
def test_hostile_input_gets_its_status_and_the_server_stays_up(served: Served, request_: tpb.ModelInferRequest,
                                                                 code: str, words: str) -> None:
    e = _infer_error(served, request_)
    assert e.code() == getattr(grpc.StatusCode, code), e.details()
    assert words in (e.details() or "")
    assert "secret detail" not in (e.details() or "")  # the model's own words go to the log only
    c = tg.InferenceServerClient(served.grpc_url)
    assert c.is_server_live()
    c.close()


def test_malformed_messages(served: Served) -> None:
    with grpc.insecure_channel(served.grpc_url) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as failed:
            raw(b"\xff\xff\xff\xff garbage")
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid inference.ModelInferRequest" in (failed.value.details() or "")
        huge = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as failed:
            huge(b"\0" * (9 * 1024 * 1024))  # past the largest model's limit: gRPC itself refuses it
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    both = _request("fraud", "FP32", [1, 30], b"\0" * 120)
    both.inputs[0].contents.fp32_contents.extend([0.0] * 30)
    assert "exclusive" in (_infer_error(served, both).details() or "")
    wrong_field = tpb.ModelInferRequest(model_name="fraud")
    wrong_field.inputs.add(name="features", datatype="FP32", shape=[1, 30]).contents.int_contents.extend([0] * 30)
    assert "belong in contents.fp32_contents" in (_infer_error(served, wrong_field).details() or "")
    unknown_output = _request("fraud", "FP32", [1, 30], b"\0" * 120)
    unknown_output.outputs.add(name="nope")
    e = _infer_error(served, unknown_output)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown requested outputs" in (e.details() or "")


def test_deadlines(served: Served) -> None:
    x = np.ones((1, 4), np.float32)
    slow = _request("slow", "FP32", [1, 4], x.tobytes())
    # the gRPC deadline, as tritonclient's client_timeout sets it
    assert _infer_error(served, slow, timeout=0.02).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the timeout parameter (microseconds), as tritonclient's infer(timeout=...) sends it
    c = tg.InferenceServerClient(served.grpc_url)
    inp = tg.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    code, message = status_of(lambda: c.infer("slow", [inp], timeout=20_000))
    assert code == "StatusCode.DEADLINE_EXCEEDED" and "deadline passed" in message
    # the metadata, as HTTP's inferlane-timeout-ms header
    e = _infer_error(served, slow, metadata=(("inferlane-timeout-ms", "20"),))
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    e = _infer_error(served, slow, metadata=(("inferlane-timeout-ms", "soon"),))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert c.infer("slow", [inp], client_timeout=5).as_numpy("y").tolist() == [[2.0] * 4]
    c.close()


def test_a_full_queue_is_unavailable_with_retry_after(served: Served) -> None:
    x = np.ones((1, 4), np.float32)

    async def burst() -> list[grpc.aio.AioRpcError | None]:
        async with grpc.aio.insecure_channel(served.grpc_url) as channel:
            stub = tpb_grpc.GRPCInferenceServiceStub(channel)

            async def one() -> grpc.aio.AioRpcError | None:
                try:
                    await stub.ModelInfer(_request("slow", "FP32", [1, 4], x.tobytes()))
                except grpc.aio.AioRpcError as e:
                    return e
                return None

            return await asyncio.gather(*(one() for _ in range(24)))

    outcomes = asyncio.run(burst())
    refused = [e for e in outcomes if e is not None]
    assert refused and len(refused) < len(outcomes)
    for e in refused:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
        assert "max_queue_size" in (e.details() or "")
        assert dict(e.trailing_metadata() or ())["retry-after"].isdigit()


def test_stats_over_both_transports(served: Served) -> None:
    x, _ = synthetic_transactions(5, seed=51)
    g = tg.InferenceServerClient(served.grpc_url)
    h = th.InferenceServerClient(served.url)
    for _ in range(3):  # 3 requests of 5 rows over gRPC, 2 over HTTP
        g.infer("stats", [fraud_input(x)])
    for _ in range(2):
        hin = th.InferInput("features", [5, 30], "FP32")
        hin.set_data_from_numpy(x)
        h.infer("stats", [hin])
    over_http = h.get_inference_statistics("stats")["model_stats"]
    over_grpc = g.get_inference_statistics("stats", as_json=True)["model_stats"]
    assert len(over_http) == len(over_grpc) == 1
    s, t = over_http[0], over_grpc[0]
    assert (s["name"], s["version"]) == (t["name"], t["version"]) == ("stats", "1")
    assert s["inference_count"] == int(t["inference_count"]) == 25
    assert 1 <= s["execution_count"] == int(t["execution_count"]) <= 5
    stats = s["inference_stats"]
    assert stats["success"]["count"] == 5 and stats["success"]["ns"] > 0
    assert stats["queue"]["count"] == stats["compute_infer"]["count"] == 5
    assert sum(b["compute_infer"]["count"] for b in s["batch_stats"]) == s["execution_count"]
    assert int(t["inference_stats"]["success"]["ns"]) == stats["success"]["ns"]
    one = g.get_inference_statistics("stats", "1", as_json=True)["model_stats"]
    assert [m["version"] for m in one] == ["1"]
    every = h.get_inference_statistics()["model_stats"]
    assert {m["name"] for m in every} == {"fraud", "stats", "slow", "broken"}
    code, _ = status_of(lambda: g.get_inference_statistics("nope"))
    assert code == "StatusCode.NOT_FOUND"
    g.close()
    h.close()


def test_repository_over_both_transports(served: Served, grpc_repo: Path) -> None:
    from tests.grpc.conftest import AUTH

    g = tg.InferenceServerClient(served.grpc_url)
    h = th.InferenceServerClient(served.url)
    http_auth = {"Authorization": AUTH["authorization"]}
    code, _ = status_of(lambda: g.get_model_repository_index())
    assert code == "StatusCode.UNAUTHENTICATED"
    code, _ = status_of(lambda: g.get_model_repository_index(headers={"authorization": "Bearer wrong-token"}))
    assert code == "StatusCode.PERMISSION_DENIED"
    assert httpx.post(f"http://{served.url}/v2/repository/index").status_code == 401

    index = g.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {("fraud", "1", "READY"), ("slow", "1", "READY")}
    assert h.get_model_repository_index(headers=http_auth) == [
        {"name": m["name"], "version": m["version"], "state": m["state"], "reason": m.get("reason", "")}
        for m in index]

    import shutil
    shutil.copytree(grpc_repo / "fraud" / "1", grpc_repo / "fraud" / "2")
    try:
        entry = {(m["name"], m["version"]): m for m in h.get_model_repository_index(headers=http_auth)}
        assert entry[("fraud", "2")]["state"] == "UNAVAILABLE" and entry[("fraud", "2")]["reason"] == "not loaded"
        g.load_model("fraud", headers=AUTH)  # every version folder not loaded yet
        assert g.is_model_ready("fraud", "2")
        x, _ = synthetic_transactions(2, seed=61)
        assert g.infer("fraud", [fraud_input(x)], model_version="2").get_response().model_version == "2"
        h.unload_model("fraud", headers=http_auth)  # every loaded version no route names: 2, not 1
        ready = {(m["name"], m["version"]) for m in g.get_model_repository_index(headers=AUTH, as_json=True)["models"]
                 if m["state"] == "READY"}
        assert ("fraud", "1") in ready and ("fraud", "2") not in ready
        code, message = status_of(lambda: g.infer("fraud", [fraud_input(x)], model_version="2"))
        assert code == "StatusCode.UNAVAILABLE" and "not ready" in message
        with grpc.insecure_channel(served.grpc_url) as channel:  # one version, by parameter
            stub = tpb_grpc.GRPCInferenceServiceStub(channel)
            load = tpb.RepositoryModelLoadRequest(model_name="fraud")
            load.parameters["version"].string_param = "2"
            stub.RepositoryModelLoad(load, metadata=tuple(AUTH.items()))
            assert g.is_model_ready("fraud", "2")
            unload = tpb.RepositoryModelUnloadRequest(model_name="fraud")
            unload.parameters["version"].string_param = "1"
            with pytest.raises(grpc.RpcError) as failed:  # its route names it
                stub.RepositoryModelUnload(unload, metadata=tuple(AUTH.items()))
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            config = tpb.RepositoryModelLoadRequest(model_name="fraud")
            config.parameters["config"].string_param = "{}"
            with pytest.raises(grpc.RpcError) as failed:
                stub.RepositoryModelLoad(config, metadata=tuple(AUTH.items()))
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        r = httpx.post(f"http://{served.url}/v2/repository/models/fraud/unload", headers=http_auth,
                       json={"parameters": {"version": "2"}})
        assert r.status_code == 200 and r.json()["unloaded"] == ["2"]
        code, _ = status_of(lambda: g.load_model("nope", headers=AUTH))
        assert code == "StatusCode.NOT_FOUND"
    finally:
        shutil.rmtree(grpc_repo / "fraud" / "2")
    g.close()
    h.close()
