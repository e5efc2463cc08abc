"""End to end: a real ``inferlane serve`` with a torch model, a tree model and a model that runs out of
memory on large batches, answering Open Inference Protocol V2 requests over a real socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from inferlane.testing import LOOPBACK, serve_or_fail
from tests.grpc.conftest import Served, serve_grpc
from tests.runtimes.builders import load, rows, write_lightgbm, write_torch

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_torch(root, "net", "torchscript", warmup={"batch_sizes": [1, 8]})
    write_torch(root, "greedy", "module", torch={"kind": "module", "module": "net:Greedy"},
                batching={"max_batch_size": 64, "max_queue_delay_ms": 0})
    write_lightgbm(root, "gbm")
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``inferlane serve`` with HTTP and gRPC on free ports."""
    yield from serve_or_fail(serve_grpc(repo, tmp_path_factory.mktemp("log") / "server.log"))


def url(server: Served) -> str:
    return f"http://{LOOPBACK}:{server.http_port}"


def infer(server: Served, model: str, name: str, x: np.ndarray) -> httpx.Response:
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    return httpx.post(f"{url(server)}/v2/models/{model}/infer", json=body, timeout=30)


def outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def test_torch_and_tree_models_answer_v2_requests(server: Served, repo: Path) -> None:
    x = rows(5, seed=11)
    got = outputs(infer(server, "net", "x", x))["probabilities"]
    want = load(repo, "net").forward({"x": x})["probabilities"]
    assert np.array_equal(got.astype(np.float32), want)
    trees = outputs(infer(server, "gbm", "features", x))
    direct = load(repo, "gbm").forward({"features": x})
    assert np.array_equal(trees["label"], direct["label"])
    assert np.array_equal(trees["probabilities"].astype(np.float32), direct["probabilities"])
    meta = httpx.get(f"{url(server)}/v2/models/net", timeout=10).json()
    assert meta["platform"] == "pytorch"
    assert httpx.get(f"{url(server)}/v2/models/gbm", timeout=10).json()["platform"] == "lightgbm"


def test_out_of_memory_answers_507_and_the_server_keeps_serving(server: Served) -> None:
    big = infer(server, "greedy", "x", rows(9))
    assert big.status_code == 507, big.text
    assert "ran out of cpu memory on a batch of 9 rows" in big.json()["error"]
    assert outputs(infer(server, "greedy", "x", rows(8)))["probabilities"].shape == (8, 2)
    client = tg.InferenceServerClient(url=f"{LOOPBACK}:{server.grpc_port}")
    x = tg.InferInput("x", [9, 6], "FP32")
    x.set_data_from_numpy(rows(9))
    with pytest.raises(InferenceServerException) as failed:
        client.infer("greedy", [x])
    assert failed.value.status() == "StatusCode.RESOURCE_EXHAUSTED", failed.value.message()
    assert "ran out of cpu memory" in (failed.value.message() or "")
    client.close()
    assert httpx.get(f"{url(server)}/v2/health/ready", timeout=10).status_code == 200
