"""``inferlane deploy k8s``: the manifests validate against the Kubernetes schemas (offline, kubernetes-validate),
KEDA ScaledObjects are checked for their structure (no CRD schema ships offline), and every metric the
autoscalers name is one a running server really exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from inferlane.cli.main import main
from inferlane.core.errors import ConfigError
from inferlane.core.repository import scan_repository
from inferlane.deploy import K8sPlan, StreamPlan, k8s_manifests, parse_replicas
from inferlane.deploy.k8s import JOBS_BACKLOG_METRIC, QUEUE_METRIC, STREAM_LAG_METRIC, cpu_limit
from inferlane.testing import serve, wait_until

K8S_VERSION = "1.32.0"
"""A recent Kubernetes release whose schemas kubernetes-validate bundles."""
SRC = Path(__file__).resolve().parents[2] / "src" / "inferlane"


def _generate(repo: Path, out: Path, *extra: str) -> dict[str, list[dict[str, Any]]]:
    code = main(["deploy", "k8s", str(repo), "--image", "registry.example.com/inferlane:0.1.0", "--out", str(out),
                 "--jobs-store", "redis://jobs-redis:6379/0", "--stream", "kafka://kafka:9092/events",
                 "--stream-sink", "kafka://kafka:9092/scores", "--stream-model", "fraud", *extra])
    assert code == 0
    return {str(p.relative_to(out)): [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(out.rglob("*.yaml"))}


def _objects(files: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [o for objs in files.values() for o in objs]


def test_manifests_validate_against_kubernetes_schemas(model_repo: Path, tmp_path: Path) -> None:
    files = _generate(model_repo, tmp_path)
    assert set(files) == {"00-server.yaml", "10-hpa.yaml", "keda/10-server-scaledobject.yaml",
                          "20-jobs-worker.yaml", "30-stream-consumer.yaml"}
    kinds = []
    for obj in _objects(files):
        kinds.append(obj["kind"])
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert sorted(kinds) == sorted(["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                                    "ScaledObject", "Deployment", "ScaledObject", "Deployment", "ScaledObject"])


def test_keda_scaled_objects_are_well_formed(model_repo: Path, tmp_path: Path) -> None:
    """Structure only: apiVersion, kind, required fields and known trigger types (KEDA's CRD schema is not
    bundled offline)."""
    objects = _objects(_generate(model_repo, tmp_path))
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    assert len(scaled) == 3
    for o in scaled:
        assert o["apiVersion"] == "keda.sh/v1alpha1"
        spec = o["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["triggers"]
        for t in spec["triggers"]:
            assert t["type"] in {"prometheus", "kafka", "redis-streams"}
            assert all(isinstance(v, str) for v in t["metadata"].values())  # KEDA takes strings only
            if t["type"] == "prometheus":
                assert {"serverAddress", "query", "threshold"} <= set(t["metadata"])
            if t["type"] == "kafka":
                assert t["metadata"] == {"bootstrapServers": "kafka:9092", "consumerGroup": "inferlane",
                                         "topic": "events", "lagThreshold": "100"}


def test_server_policy(model_repo: Path, tmp_path: Path) -> None:
    files = _generate(model_repo, tmp_path, "--replicas", "3..7", "--target-queue", "25")
    deployment = files["00-server.yaml"][0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    res = container["resources"]
    assert res["requests"] == res["limits"]  # Guaranteed: the quota is exactly the CPUs the threads are planned on
    assert res["limits"]["cpu"] == str(cpu_limit(scan_repository(model_repo)))
    assert {"name": "INFERLANE_HOST", "value": "0.0.0.0"} in container["env"]
    hpa = files["10-hpa.yaml"][0]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 7)
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "25"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


def test_cpu_limit_follows_the_thread_setting(model_repo: Path) -> None:
    entries = scan_repository(model_repo)
    assert cpu_limit(entries) == 2  # auto: one model thread, one CPU for the event loop
    fraud = next(e for e in entries if e.name == "fraud")
    onnx = fraud.config.onnx.model_copy(update={"intra_op_num_threads": 3}) if fraud.config.onnx else None
    if onnx is None:
        from inferlane.core.spec import OnnxOptions
        onnx = OnnxOptions(intra_op_num_threads=3)
    tuned = fraud.__class__(fraud.name, fraud.path, fraud.config.model_copy(update={"onnx": onnx}), fraud.versions)
    assert cpu_limit([tuned]) == 4


@pytest.mark.parametrize(("args", "words"), [
    ({"min_replicas": 0}, "MIN >= 1"),
    ({"min_replicas": 5, "max_replicas": 2}, "MIN <= MAX"),
    ({"name": "Bad_Name"}, "DNS label"),
    ({"target_queue": 0}, "at least 1"),
])
def test_plan_refuses(args: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        K8sPlan(image="x:1", **args)


def test_bad_inputs(model_repo: Path) -> None:
    assert parse_replicas("2..10") == (2, 10) and parse_replicas("3") == (3, 3)
    with pytest.raises(ConfigError, match=r"MIN\.\.MAX"):
        parse_replicas("two")
    entries = scan_repository(model_repo)
    with pytest.raises(ConfigError, match="Redis store"):
        k8s_manifests(entries, K8sPlan(image="x:1", jobs_store="sqlite:///jobs.db"))
    with pytest.raises(ConfigError, match="kafka://"):
        k8s_manifests(entries, K8sPlan(image="x:1", stream=StreamPlan("http://x/y", "s", "g", "id", "fraud")))


def _metric_names(files: dict[str, list[dict[str, Any]]]) -> set[str]:
    names = set()
    for o in _objects(files):
        if o["kind"] == "HorizontalPodAutoscaler":
            names |= {m["pods"]["metric"]["name"] for m in o["spec"]["metrics"]}
        if o["kind"] == "ScaledObject":
            for t in o["spec"]["triggers"]:
                if t["type"] == "prometheus":
                    names |= set(re.findall(r"inferlane_[a-z_]+", t["metadata"]["query"]))
    return names


@pytest.mark.e2e
def test_autoscalers_name_metrics_the_server_exports(model_repo: Path, tmp_path: Path, redis_url: str) -> None:
    files = _generate(model_repo, tmp_path / "out")
    names = _metric_names(files)
    assert names == {QUEUE_METRIC, JOBS_BACKLOG_METRIC}
    with serve(model_repo, log_path=tmp_path / "server.log",
               env={"INFERLANE_JOBS_STORE": redis_url, "INFERLANE_JOBS_WORKERS": "1",
                    "INFERLANE_JOBS_EXPIRE_INTERVAL_S": "0.2"}) as server:
        # a request, and queued jobs, so that every per-model series has a sample
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": [0.0] * 30}]}
        assert httpx.post(f"{server.url}/v2/models/fraud/infer", json=body, timeout=30).status_code == 200
        slow = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}]}
        for _ in range(40):  # 50 ms each on one worker: a backlog that lasts while the gauge is published
            assert httpx.post(f"{server.url}/v2/models/slow/jobs", json=slow, timeout=30).status_code == 202

        found: set[str] = set()

        def exported() -> bool:
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            found.update(line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#"))
            return names <= found
        try:
            wait_until(exported, f"/metrics exports {sorted(names)}", timeout_s=30)
        except AssertionError as e:
            raise AssertionError(f"{e}; missing {sorted(names - found)}") from None
    # KEDA reads stream lag from the broker; the servers' own name for it still exists in the code.
    assert f'"{STREAM_LAG_METRIC}"' in (SRC / "lanes" / "stream" / "metrics.py").read_text()
