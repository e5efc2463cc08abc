"""The SageMaker contract over a real socket: ``inferlane serve --sagemaker`` answers /ping and /invocations
(JSON V2, V1, CSV; Accept), and hostile CSV bodies get 400/413, never 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from inferlane.core.errors import ConfigError
from inferlane.testing import serve, serve_or_fail
from inferlane.transport.http.sagemaker import model_for_sagemaker
from tests.conftest import Server

pytestmark = pytest.mark.e2e

ROWS = np.random.default_rng(7).normal(size=(3, 30)).astype(np.float32)


@pytest.fixture(scope="module")
def sm(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("sagemaker") / "server.log"
    env = {"INFERLANE_JOBS_STORE": f"sqlite:///{log.parent / 'jobs.db'}", "SAGEMAKER_INFERLANE_MODEL": "fraud"}
    # Loopback in the test: SageMaker mode's own default host is 0.0.0.0.
    yield from serve_or_fail(serve(model_repo, log_path=log, extra=["--sagemaker", "--host", "127.0.0.1"], env=env))


@pytest.fixture(scope="module")
def client(sm: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sm.url, timeout=30) as c:
        yield c


def _outputs(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}


def _v2(client: httpx.Client) -> dict[str, np.ndarray]:
    """The fraud model's outputs for ROWS through /v2 (label, probabilities)."""
    r = client.post("/v2/models/fraud/infer", json={"inputs": [
        {"name": "features", "datatype": "FP32", "shape": [3, 30], "data": ROWS.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    return _outputs(r.json())


def _v1_rows(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    preds = doc["predictions"]
    return {name: np.asarray([p[name] for p in preds]) for name in preds[0]}


def test_ping_is_ready(client: httpx.Client) -> None:
    r = client.get("/ping")
    assert r.status_code == 200 and r.json() == {"ready": True}


def test_invocations_v2_json_matches_v2_route(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 30], "data": ROWS.ravel().tolist()}]}
    r = client.post("/invocations", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    got, want = _outputs(r.json()), _v2(client)
    assert sorted(got) == ["label", "probabilities"]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_invocations_v1_instances(client: httpx.Client) -> None:
    r = client.post("/invocations", json={"instances": ROWS.tolist()})
    assert r.status_code == 200, r.text
    got, want = _v1_rows(r.json()), _v2(client)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_invocations_csv_in_json_out(client: httpx.Client) -> None:
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in ROWS) + "\n"
    r = client.post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    got, want = _v1_rows(r.json()), _v2(client)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_invocations_accept_csv(client: httpx.Client) -> None:
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in ROWS)
    r = client.post("/invocations", content=body, headers={"content-type": "text/csv", "accept": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    got = np.asarray([[float(x) for x in line.split(",")] for line in r.text.strip().splitlines()])
    want = _v2(client)  # one line per row: label, then the two probabilities
    np.testing.assert_array_equal(got[:, 0], want["label"])
    np.testing.assert_array_equal(got[:, 1:].astype(np.float32), want["probabilities"].astype(np.float32))


def test_accept_that_is_not_served_is_400(client: httpx.Client) -> None:
    r = client.post("/invocations", json={"instances": ROWS.tolist()}, headers={"accept": "application/x-protobuf"})
    assert r.status_code == 400 and "Accept" in r.json()["error"]


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"", 400, "no rows"),
    (b"\n\n", 400, "no rows"),
    (b"1,2,3\n", 400, "takes 30 per row"),
    (b",".join([b"1"] * 30) + b"\n" + b",".join([b"1"] * 29), 400, "row 2 has 29 fields"),
    (b",".join([b"x"] * 30), 400, "is not a number"),
    (b",".join([b"nan"] * 30), 400, "features"),
    (b",".join([b"1e999"] * 30), 400, "features"),
    (b'"1' + b",1" * 29, 400, "CSV"),
    (b"\xff\xfe" + b",1" * 29, 400, "UTF-8"),
    (b"1" * 5000 + b",1" * 29, 400, "characters long"),
    ((b",".join([b"0.5"] * 30) + b"\n") * 40_000, 413, "limit"),
    (b"0" * (9 * 1024 * 1024), 413, "limit"),
])
def test_hostile_csv_is_refused(client: httpx.Client, body: bytes, status: int, words: str) -> None:
    r = client.post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == status, r.text[:300]
    assert words in r.json()["error"]


def test_unknown_content_type_and_bad_json(client: httpx.Client) -> None:
    r = client.post("/invocations", content=b"x", headers={"content-type": "application/x-npy"})
    assert r.status_code == 400 and "Content-Type" in r.json()["error"]
    r = client.post("/invocations", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = client.post("/invocations", json={"instances": [[1.0] * 29]})
    assert r.status_code == 400


def test_v2_routes_still_served(client: httpx.Client) -> None:
    assert client.get("/v2/health/ready").status_code == 200


def test_model_choice() -> None:
    entries = {"fraud": object(), "slow": object()}
    assert model_for_sagemaker({"fraud": object()}, None) == "fraud"  # type: ignore[dict-item]
    assert model_for_sagemaker(entries, "slow") == "slow"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="SAGEMAKER_INFERLANE_MODEL"):
        model_for_sagemaker(entries, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not in the repository"):
        model_for_sagemaker(entries, "nope")  # type: ignore[arg-type]


def test_sagemaker_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from inferlane.server.settings import ServerSettings

    for name in ("INFERLANE_HOST", "INFERLANE_PORT", "INFERLANE_MODEL_REPOSITORY", "SAGEMAKER_BIND_TO_PORT"):
        monkeypatch.delenv(name, raising=False)
    s = ServerSettings.from_env(sagemaker=True)
    assert (s.host, s.port, s.model_repository) == ("0.0.0.0", 8080, Path("/opt/ml/model"))
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9090")
    monkeypatch.setenv("INFERLANE_HOST", "127.0.0.1")
    s = ServerSettings.from_env(sagemaker=True)
    assert (s.host, s.port) == ("127.0.0.1", 9090)
    assert ServerSettings.from_env(model_repository=Path("m")).host == "127.0.0.1"  # loopback unless SageMaker
