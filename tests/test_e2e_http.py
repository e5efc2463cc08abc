"""End to end: `inferlane serve` as a subprocess on a free port, driven over real sockets."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
import yaml

from inferlane.bench.burst import run_load
from inferlane.bench.wire import build_request
from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model
from inferlane.demo.models import synthetic_transactions
from inferlane.testing import accepts_connections, exited, free_port, start_server, stop_process, wait_ready, wait_until
from tests.conftest import Server, write_slow_model

pytestmark = pytest.mark.e2e


def v2_body(x: np.ndarray, name: str = "features", **extra: object) -> bytes:
    return orjson.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape),
                                     "data": x.ravel().tolist()}], **extra})


def direct(model_repo: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    entry = scan_model(model_repo / "fraud")
    return ModelVersion.load(entry.config, entry.path, "1").forward({"features": x})


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_matches_the_model(server: Server, model_repo: Path, binary: bool) -> None:
    client = triton.InferenceServerClient(url=server.address)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("fraud")
    assert client.is_model_ready("fraud", "1")
    meta = client.get_model_metadata("fraud")
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]

    x, _ = synthetic_transactions(5, seed=21)
    inp = triton.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = client.infer("fraud", [inp], outputs=outs, request_id="req-42")
    want = direct(model_repo, x)
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_version"] == "1"
    assert np.array_equal(result.as_numpy("probabilities"), want["probabilities"])
    assert np.array_equal(result.as_numpy("label"), want["label"])
    client.close()


def test_v1_predict(server: Server, model_repo: Path) -> None:
    x, _ = synthetic_transactions(3, seed=22)
    r = httpx.post(f"{server.url}/v1/models/fraud:predict", content=orjson.dumps({"instances": x.tolist()}))
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    want = direct(model_repo, x)
    assert len(preds) == 3
    for i, p in enumerate(preds):
        assert p["label"] == int(want["label"][i])
        assert np.array_equal(np.asarray(p["probabilities"], np.float32), want["probabilities"][i])
    r1 = httpx.post(f"{server.url}/v1/models/fraud/versions/1:predict",
                    content=orjson.dumps({"instances": [{"features": x[0].tolist()}]}))
    assert r1.status_code == 200
    assert r1.json()["predictions"][0]["label"] == int(want["label"][0])


def _batch_histogram(text: str, model: str) -> tuple[float, float]:
    """(batches of size 1, all batches) for the model."""
    ones = total = 0.0
    for line in text.splitlines():
        if not line.startswith("inferlane_batch_size") or f'model="{model}"' not in line:
            continue
        if line.startswith("inferlane_batch_size_bucket") and 'le="1.0"' in line:
            ones = float(line.rsplit(" ", 1)[1])
        if line.startswith("inferlane_batch_size_count"):
            total = float(line.rsplit(" ", 1)[1])
    return ones, total


def test_concurrent_burst_forms_batches_larger_than_one(server: Server) -> None:
    x, _ = synthetic_transactions(600, seed=23)
    reqs = [build_request("127.0.0.1", server.port, "/v2/models/fraud/infer", v2_body(x[i:i + 1]))
            for i in range(len(x))]
    res = asyncio.run(run_load("127.0.0.1", server.port, reqs, concurrency=48, keep_headers=True))
    assert res.statuses == {200: 600}
    timing = res.headers[0]["server-timing"]
    assert re.match(r"queue;dur=[\d.]+, forward;dur=[\d.]+, total;dur=[\d.]+", timing)
    metrics = httpx.get(f"{server.url}/metrics").text
    ones, total = _batch_histogram(metrics, "fraud")
    assert total > ones, "every batch had one row: no batching happened"
    assert 'inferlane_requests_total{lane="online",model="fraud",status="200",version="1"}' in metrics
    for series in ("inferlane_queue_wait_seconds_bucket", "inferlane_forward_seconds_bucket",
                   "inferlane_request_duration_seconds_bucket", "inferlane_queue_depth",
                   "inferlane_inflight_batches"):
        assert series in metrics


def test_error_statuses_and_health_afterwards(server: Server) -> None:
    url = f"{server.url}/v2/models/fraud/infer"
    x = np.zeros((1, 30), np.float32)
    r = httpx.post(url, content=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert r.status_code == 413
    assert "exceeds the model's limit" in r.json()["error"]
    bad_dtype = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 30],
                                          "data": [0.0] * 30}]})
    r = httpx.post(url, content=bad_dtype)
    assert r.status_code == 400
    assert "datatype must be FP32" in r.json()["error"]
    r = httpx.post(url, content=v2_body(np.zeros((1, 29), np.float32)))
    assert r.status_code == 400
    assert "shape [1, 29] does not match [-1, 30]" in r.json()["error"]
    r = httpx.post(url, content=v2_body(x, name="feature"))
    assert r.status_code == 400
    assert "unexpected ['feature']" in r.json()["error"]
    r = httpx.post(f"{server.url}/v2/models/nope/infer", content=v2_body(x))
    assert r.status_code == 404
    r = httpx.post(f"{server.url}/v2/models/fraud/versions/9/infer", content=v2_body(x))
    assert r.status_code == 404
    r = httpx.post(url, content=v2_body(x), headers={"inferlane-timeout-ms": "0"})
    assert r.status_code == 504

    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    r = httpx.post(url, content=v2_body(x, id="after"))
    assert r.status_code == 200
    assert r.json()["id"] == "after"


def test_queue_overflow_is_503_with_retry_after_and_deadlines_504(server: Server) -> None:
    body = v2_body(np.ones((1, 4), np.float32), name="x")
    reqs = [build_request("127.0.0.1", server.port, "/v2/models/slow/infer", body) for _ in range(24)]
    res = asyncio.run(run_load("127.0.0.1", server.port, reqs, concurrency=24, keep_headers=True))
    assert res.statuses[503] > 0, res.statuses
    assert res.statuses[200] > 0
    assert all(h.get("retry-after", "").isdigit() for h in res.headers if "retry-after" in h)
    assert sum("retry-after" in h for h in res.headers) == res.statuses[503]

    # 50 ms per batch, one at a time: the third of three 80 ms requests cannot finish in time.
    timed = [build_request("127.0.0.1", server.port, "/v2/models/slow/infer", body,
                           {"inferlane-timeout-ms": "80"}) for _ in range(3)]
    res = asyncio.run(run_load("127.0.0.1", server.port, timed, concurrency=3))
    assert res.statuses[504] >= 1, res.statuses
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_server_metadata_and_docs(server: Server) -> None:
    meta = httpx.get(f"{server.url}/v2").json()
    assert meta["name"] == "inferlane"
    assert "binary_tensor_data" in meta["extensions"]
    if "statistics" in meta["extensions"]:  # advertised only when its route exists
        assert httpx.get(f"{server.url}/v2/models/fraud/stats").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v2/models/{name}/infer" in spec["paths"]
    assert "swagger-ui" in httpx.get(f"{server.url}/docs").text


# A model that holds at two gates, named pipes in its version folder: its warm-up batch waits until
# the test opens warmup.gate, and the first batch after it until the test opens predict.gate.
# Opening a pipe blocks until the other end is opened too, so each gate is an event, not a sleep.
GATED_MODEL = textwrap.dedent('''
    class Model:
        def load(self, version_dir):
            self.gates = [version_dir / "warmup.gate", version_dir / "predict.gate"]

        def predict(self, batch):
            if self.gates:
                with open(self.gates.pop(0), "rb") as gate:
                    gate.read()
            return {"y": batch["x"]}
''')


def open_gate(gate: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Let the model past ``gate``: open the pipe for writing once the model waits at it, then close
    it (the model's read returns at end of file)."""
    fds: list[int] = []

    def model_waits() -> bool:
        try:
            fds.append(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO until the model opened its end
        except OSError:
            return False
        return True

    wait_until(model_waits, f"the model waits at {gate.name}", 30, abort_if=[exited(proc, log)])
    os.close(fds[0])


def queue_depth(url: str, model: str) -> float:
    """The model's ``inferlane_queue_depth`` on the server's /metrics."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("inferlane_queue_depth{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def is_live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/live").status_code == 200
    except httpx.TransportError:
        return False


def test_readiness_waits_for_warmup_and_sigterm_drains_in_flight(tmp_path: Path) -> None:
    d = write_slow_model(tmp_path, "sleepy", max_batch_size=1)  # one request per batch: 1 running, 3 queued
    (d / "1" / "model.py").write_text(GATED_MODEL)
    for gate in ("warmup.gate", "predict.gate"):
        os.mkfifo(d / "1" / gate)
    port, log = free_port(), tmp_path / "log"
    proc = start_server(tmp_path, port, log_path=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: is_live(url), "the server is live", 20, abort_if=[exited(proc, log)])
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503  # loaded, held in its warm-up batch
        r = httpx.post(f"{url}/v2/models/sleepy/infer", content=v2_body(np.ones((1, 4), np.float32), name="x"))
        assert r.status_code == 503
        open_gate(d / "1" / "warmup.gate", proc, log)
        wait_ready(port, proc, log=log)

        async def in_flight_then_sigterm() -> list[int]:
            async with httpx.AsyncClient(timeout=10) as c:
                body = v2_body(np.ones((1, 4), np.float32), name="x")
                tasks = [asyncio.ensure_future(c.post(f"{url}/v2/models/sleepy/infer", content=body))
                         for _ in range(4)]
                # In flight: the first request is in the model (held at predict.gate), three are queued.
                await asyncio.to_thread(wait_until, lambda: queue_depth(url, "sleepy") == 3,
                                        "the server holds all four requests", 30)
                proc.send_signal(signal.SIGTERM)
                # Draining: the server closed its listening socket, with the four still unanswered.
                await asyncio.to_thread(wait_until, lambda: not accepts_connections(port),
                                        "the server stops accepting connections", 30)
                assert not any(t.done() for t in tasks)
                await asyncio.to_thread(open_gate, d / "1" / "predict.gate", proc, log)
                return [r.status_code for r in await asyncio.gather(*tasks)]

        assert asyncio.run(in_flight_then_sigterm()) == [200, 200, 200, 200]
        assert proc.wait(15) == 0
    finally:
        stop_process(proc)


def test_several_workers_serve_the_same_port(model_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = start_server(model_repo, port, extra=["--workers", "2"], log_path=tmp_path / "log")
    try:
        wait_ready(port, proc)
        x = np.zeros((1, 30), np.float32)

        def every_answer_ok() -> bool:
            # A new connection each time: the kernel spreads them over the workers, and the readiness
            # check above may have reached the one that finished loading first.
            return {httpx.post(f"http://127.0.0.1:{port}/v2/models/fraud/infer", content=v2_body(x)).status_code
                    for _ in range(10)} == {200}

        wait_until(every_answer_ok, "10 requests in a row on new connections answered 200", 60,
                   abort_if=[exited(proc, tmp_path / "log")])
    finally:
        assert stop_process(proc) == 0


def test_serve_refuses_a_bad_repository_with_the_field_named(tmp_path: Path) -> None:
    import subprocess
    import sys

    d = write_slow_model(tmp_path)
    cfg = yaml.safe_load((d / "model.yaml").read_text())
    cfg["batching"]["max_queue_size"] = -1
    (d / "model.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "inferlane", "serve", str(tmp_path), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "batching.max_queue_size: Input should be greater than or equal to 1" in r.stderr


def test_request_parameters_are_echoed_except_protocol_ones(server: Server) -> None:
    x = np.zeros((1, 30), np.float32)
    body = v2_body(x, parameters={"tenant": "acme", "trace": 7, "timeout": 5_000_000})
    r = httpx.post(f"{server.url}/v2/models/fraud/infer", content=body)
    assert r.status_code == 200
    assert r.json()["parameters"] == {"tenant": "acme", "trace": 7}


def test_a_stalled_body_is_answered_408(model_repo: Path, tmp_path: Path) -> None:
    import socket

    port = free_port()
    proc = start_server(model_repo, port, log_path=tmp_path / "log", env={"INFERLANE_BODY_TIMEOUT_S": "1"})
    try:
        wait_ready(port, proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
            reply = b""
            while b"within" not in reply and (chunk := s.recv(4096)):
                reply += chunk
            reply_text = reply.decode()
        assert reply_text.startswith("HTTP/1.1 408"), reply_text
        assert "not received within 1 s" in reply_text
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/fraud/infer",
                       content=v2_body(np.zeros((1, 30), np.float32)))
        assert r.status_code == 200
    finally:
        stop_process(proc)


def test_a_port_in_use_is_one_line_and_exit_2(model_repo: Path) -> None:
    import socket
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "inferlane", "serve", str(model_repo), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another with --port / INFERLANE_PORT, or --host / INFERLANE_HOST)"], r.stderr


def test_serve_takes_the_repository_from_the_environment(model_repo: Path, tmp_path: Path) -> None:
    import sys

    r = subprocess.run([sys.executable, "-m", "inferlane", "serve", "--port", "0"], capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items() if k != "INFERLANE_MODEL_REPOSITORY"})
    assert r.returncode == 2
    assert "give its folder (inferlane serve models/) or set INFERLANE_MODEL_REPOSITORY" in r.stderr
    port, log = free_port(), tmp_path / "log"
    env = {**os.environ, "INFERLANE_MODEL_REPOSITORY": str(model_repo),
           "INFERLANE_JOBS_STORE": f"sqlite:///{tmp_path / 'jobs.db'}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "inferlane", "serve", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(port, proc, log=log)
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/fraud").json()["name"] == "fraud"
    finally:
        assert stop_process(proc) == 0
