"""The container image, as far as it can be tested without a registry: the Dockerfile's shape (hadolint is not
available), and the entrypoint script run as the image runs it, in a fresh venv installed from the lockfile."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inferlane.testing import exited, free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
Start = Callable[[list[str], dict[str, str]], tuple[subprocess.Popen[bytes], Path]]


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def test_dockerfile_shape() -> None:
    ins = _instructions()
    args = {v.split("=", 1)[0]: v.split("=", 1)[1] for k, v in ins if k == "ARG" and "=" in v}
    stages = [v for k, v in ins if k == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith("AS build") and stages[-1].endswith("AS runtime"), stages
    for stage in stages:
        image = stage.split()[0]
        image = args.get(image.strip("${}"), image)
        assert ":" in image and not image.endswith(":latest"), f"base image {image!r} must be pinned, not latest"
    runtime = ins[[i for i, (k, _) in enumerate(ins) if k == "FROM"][-1]:]
    users = [v for k, v in runtime if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must run as a non-root user"
    assert any(k == "COPY" and "--from=build" in v and "/opt/inferlane" in v for k, v in runtime)
    build = " ".join(v for k, v in ins if k == "RUN")
    assert "requirements/lock.txt" in build and "--compile-bytecode" in build and "uv pip install" in build
    health = [v for k, v in runtime if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/v2/health/ready" in health[0] and "/ping" in health[0]
    assert ("ENTRYPOINT", '["/usr/local/bin/inferlane-entrypoint"]') in runtime  # exec form: signals reach it
    env = " ".join(v for k, v in runtime if k == "ENV")
    assert "INFERLANE_HOST=0.0.0.0" in env
    ignored = (ROOT / ".dockerignore").read_text()
    assert ignored.splitlines()[1] == "*" and "!src/" in ignored


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with inferlane installed from the checkout's lockfile, as the image's build stage does
    (uv's cache makes it a few seconds)."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                    "--compile-bytecode", "-c", str(ROOT / "requirements" / "lock.txt"), str(ROOT)],
                   check=True, timeout=300)
    return venv


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


@pytest.fixture
def run_image(image_venv: Path, tmp_path: Path) -> Iterator[Start]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"entrypoint-{len(procs)}.log"
        # The image's environment (Dockerfile ENV), with the venv's bin first on PATH as in the image.
        image_env = {"PATH": f"{image_venv / 'bin'}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
                     "INFERLANE_HOST": "0.0.0.0", "INFERLANE_MODEL_REPOSITORY": "/models",
                     "INFERLANE_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
        with open(log, "wb") as out:
            proc = subprocess.Popen(["/bin/sh", str(ENTRYPOINT), *args], stdout=out, stderr=subprocess.STDOUT,
                                    env={**image_env, **env}, cwd=tmp_path)
        procs.append(proc)
        return proc, log

    yield start
    for p in procs:
        stop_process(p)


@pytest.mark.e2e
def test_entrypoint_kubernetes_convention(run_image: Start, model_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    # INFERLANE_HOST: loopback here, so that the test exposes nothing; the image sets 0.0.0.0.
    proc, log = run_image([], {"INFERLANE_MODEL_REPOSITORY": str(model_repo), "INFERLANE_PORT": str(port),
                               "INFERLANE_HOST": "127.0.0.1"})
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/v2/health/ready") == 200, "the image's server is ready", 60,
               abort_if=[exited(proc, log)])
    assert _get(f"http://127.0.0.1:{port}/ping") == 404  # SageMaker routes only in SageMaker mode
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]


@pytest.mark.e2e
def test_entrypoint_sagemaker_convention(run_image: Start, model_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    one = tmp_path / "opt-ml-model"  # what SageMaker mounts at /opt/ml/model: the model's own folder
    shutil.copytree(model_repo / "fraud", one)
    # Exactly `serve`, as SageMaker runs it; SAGEMAKER_BIND_TO_PORT instead of 8080 (SageMaker sets it in
    # multi-container endpoints), and the repository path instead of /opt/ml/model.
    proc, log = run_image(["serve"], {"SAGEMAKER_BIND_TO_PORT": str(port),
                                      "INFERLANE_MODEL_REPOSITORY": str(one), "INFERLANE_HOST": "127.0.0.1"})
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/ping") == 200, "/ping answers 200", 60,
               abort_if=[exited(proc, log)])
    body = ",".join(["0.25"] * 30).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": "text/csv", "Accept": "text/csv"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and len(r.read().decode().strip().split(",")) == 3  # label, two probabilities
    assert "SageMaker mode" in log.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
