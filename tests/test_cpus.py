"""Model threads from the CPUs the process may really use (core/cpus.py): affinity, cgroup quota,
the split between the model and serving, and what a real server logs under taskset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inferlane.core.cpus import CpuBudget, cgroup_quota, cpu_budget, thread_plan
from inferlane.demo.models import write_mlp_model
from inferlane.testing import serve, serve_or_fail


def cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


def test_cgroup_v2_and_v1_quotas(tmp_path: Path) -> None:
    assert cgroup_quota(cgroup(tmp_path / "a", {"cpu.max": "150000 100000"})) == 1.5
    assert cgroup_quota(cgroup(tmp_path / "b", {"cpu.max": "max 100000"})) is None
    assert cgroup_quota(cgroup(tmp_path / "c", {"cpu/cpu.cfs_quota_us": "50000",
                                                "cpu/cpu.cfs_period_us": "100000"})) == 0.5
    assert cgroup_quota(cgroup(tmp_path / "d", {"cpu/cpu.cfs_quota_us": "-1",
                                                "cpu/cpu.cfs_period_us": "100000"})) is None
    assert cgroup_quota(cgroup(tmp_path / "e", {"cpu.max": "garbage"})) is None
    assert cgroup_quota(tmp_path / "nothing-here") is None


def test_the_budget_is_the_smaller_of_affinity_and_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert cpu_budget(tmp_path / "none").cpus == affinity
    half = cpu_budget(cgroup(tmp_path / "q", {"cpu.max": "50000 100000"}))
    assert (half.cpus, half.quota, half.affinity) == (1, 0.5, affinity)  # a fraction rounds up to one CPU
    many = cpu_budget(cgroup(tmp_path / "m", {"cpu.max": "6400000 100000"}))
    assert many.cpus == affinity  # a quota above the affinity does not add CPUs


@pytest.mark.parametrize(("cpus", "role", "threads"), [(1, "serving", 1), (2, "serving", 1), (8, "serving", 7),
                                                       (1, "batch", 1), (8, "batch", 8)])
def test_the_plan_keeps_a_cpu_for_serving_and_never_spins(cpus: int, role: str, threads: int) -> None:
    plan = thread_plan(role, budget=CpuBudget(cpus, cpus, None))  # type: ignore[arg-type]
    assert plan.threads == threads and not plan.spinning
    assert f"{threads} model thread" in plan.reason and "spinning off" in plan.reason


def test_explicit_settings_win() -> None:
    plan = thread_plan("serving", threads=4, spinning=True, budget=CpuBudget(2, 2, None))
    assert (plan.threads, plan.spinning) == (4, True)
    assert "set in model.yaml" in plan.reason


@pytest.mark.e2e
def test_a_server_limited_to_one_cpu_runs_one_unspun_model_thread_and_says_so(tmp_path: Path) -> None:
    if shutil.which("taskset") is None:
        pytest.fail("taskset (util-linux) is needed to limit the server's CPUs", pytrace=False)
    repo = tmp_path / "models"
    write_mlp_model(repo, "mlp", (16,), threads=0)  # threads 0: nothing in model.yaml, the default
    log = tmp_path / "server.log"
    one_cpu = serve(repo, log_path=log, prefix=["taskset", "-c", "0"], extra=["--log-level", "info"])
    for server in serve_or_fail(one_cpu):
        text = log.read_text()
        assert ("model mlp version 1: 1 model thread (1 usable CPU (affinity 1, no cgroup quota)), "
                "spinning off (idle threads would take CPU from serving)") in text, text[-2000:]
        assert server.port > 0


BLAS_PROBE = """
import json, sys
from pathlib import Path
import numpy as np, skops.io as sio, yaml
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info
from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model
d = Path(sys.argv[1]) / "clf"
(d / "1").mkdir(parents=True)
x = np.random.default_rng(0).normal(size=(200, 4))
sio.dump(LogisticRegression().fit(x, x[:, 0] > 0), d / "1" / "model.skops")
(d / "model.yaml").write_text(yaml.safe_dump({
    "runtime": "sklearn", "artifact": "model.skops",
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 4]}],
    "outputs": [{"name": "label", "datatype": "BOOL", "shape": [-1]}],
    "sklearn": {"methods": {"label": "predict"}}}))
before = sorted({p["num_threads"] for p in threadpool_info()})
entry = scan_model(d)
mv = ModelVersion.load(entry.config, entry.path, "1", role=sys.argv[2], threads=int(sys.argv[3]))
after = sorted({p["num_threads"] for p in threadpool_info()})
print(json.dumps({"before": before, "after": after, "planned": mv.threads.threads}))
"""


@pytest.mark.parametrize(("role", "threads"), [("serving", 0), ("batch", 1)])
def test_blas_and_openmp_pools_get_the_model_threads(tmp_path: Path, role: str, threads: int) -> None:
    # In a child process: the pools are per process, and this one's must stay as they are.
    out = subprocess.run([sys.executable, "-c", BLAS_PROBE, str(tmp_path), role, str(threads)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    pools = json.loads(out)
    expected = thread_plan(role, threads=threads).threads  # type: ignore[arg-type]
    assert pools["before"], "scikit-learn brings BLAS and OpenMP pools for threadpoolctl to see"
    assert pools["after"] == [expected] and pools["planned"] == expected, pools
