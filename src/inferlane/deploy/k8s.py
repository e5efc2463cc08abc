"""Kubernetes manifests for a model repository: server, autoscaling, job workers, stream consumers.

What is written, and why (docs/deploy.md tells the whole story):

- ``00-server.yaml``: Deployment (startup probe on /v2/health/live, readiness on /v2/health/ready, which
  turns 200 only after every version loaded and ran its warm-up, liveness), Service, PodDisruptionBudget.
  CPU request = limit, so the container's cgroup quota is exactly that many CPUs, and core/cpus.py gives
  the model that number minus one threads (one stays with the event loop): the limit is chosen from the
  model thread settings so that both agree.
- ``10-hpa.yaml``: HorizontalPodAutoscaler on ``inferlane_queue_depth`` per pod (Prometheus adapter), min
  replicas >= 1 (no cold start on the hot path), fast scale-up, slow scale-down.
- ``keda/10-server-scaledobject.yaml``: the same policy as a KEDA ScaledObject (Prometheus scaler); apply
  this *instead of* the HPA, never both.
- ``20-jobs-worker.yaml`` (with a Redis job store): ``inferlane jobs worker`` scaled by KEDA on
  ``inferlane_jobs_backlog``, which the servers publish from the shared store.
- ``30-stream-consumer.yaml`` (with a stream source): ``inferlane stream run`` scaled by KEDA's Kafka or
  Redis Streams scaler on the consumer group's lag, read from the broker itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from inferlane.core.errors import ConfigError
from inferlane.core.repository import ModelEntry

Obj = dict[str, Any]

QUEUE_METRIC = "inferlane_queue_depth"
"""Requests waiting in a server's batcher queues (core/metrics.py): what the server pool scales on."""
DESIRED_METRIC = "inferlane_desired_replicas"
"""ceil(queue depth / target per replica), exported beside the queue depth (core/metrics.py)."""
JOBS_BACKLOG_METRIC = "inferlane_jobs_backlog"
"""Queued jobs per model (lanes/jobs/metrics.py): what job workers scale on."""
STREAM_LAG_METRIC = "inferlane_stream_consumer_lag"
"""Events not yet consumed per partition (lanes/stream/metrics.py); KEDA reads the lag from the broker."""
HTTP_PORT = 8000
METRICS_PORT = 9100
MODELS_DIR = "/models"
STATE_DIR = "/tmp/inferlane"
GRACEFUL_S = 30
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?")
_DEFAULT_PROMETHEUS = "http://prometheus-server.monitoring.svc:80"


@dataclass(frozen=True)
class StreamPlan:
    source: str
    """kafka://broker:9092/topic or redis://host:6379/0/stream (as ``inferlane stream run --source``)."""
    sink: str
    group: str
    key: str
    model: str
    lag_threshold: int = 100


@dataclass(frozen=True)
class K8sPlan:
    image: str
    name: str = "inferlane"
    namespace: str = "default"
    min_replicas: int = 2
    max_replicas: int = 10
    target_queue: int = 20
    """Pending requests per replica before scaling out (the seeds' example threshold)."""
    jobs_store: str | None = None
    target_backlog: int = 20
    stream: StreamPlan | None = None
    prometheus_url: str = _DEFAULT_PROMETHEUS
    scale_down_window_s: int = 300

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"name {self.name!r} must be a DNS label: lower-case letters, digits and '-', "
                              "at most 42 characters")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"replicas {self.min_replicas}..{self.max_replicas}: need 1 <= MIN <= MAX "
                              "(MIN >= 1 keeps a warm replica: no cold start on the hot path)")
        if self.target_queue < 1 or self.target_backlog < 1:
            raise ConfigError("--target-queue and --target-backlog must be at least 1")
        if not self.image or any(c.isspace() for c in self.image):
            raise ConfigError(f"--image {self.image!r} must be an image reference (registry/name:tag)")


def parse_replicas(text: str) -> tuple[int, int]:
    """``"2..10"`` -> (2, 10); ``"3"`` -> (3, 3)."""
    lo, sep, hi = text.partition("..")
    try:
        bounds = (int(lo), int(hi) if sep else int(lo))
    except ValueError:
        raise ConfigError(f"--replicas {text!r}: expected MIN..MAX, e.g. 2..10") from None
    return bounds


def cpu_limit(entries: list[ModelEntry]) -> int:
    """Whole CPUs for one server: the model threads core/cpus.py would pick (CPUs - 1 while serving), plus
    the event loop's. A model that sets ``onnx.intra_op_num_threads`` gets that many, others two CPUs."""
    threads = [e.config.onnx.intra_op_num_threads for e in entries
               if e.config.onnx is not None and e.config.onnx.intra_op_num_threads > 0]
    return max(threads, default=1) + 1


def memory_mib(entries: list[ModelEntry]) -> int:
    """Memory limit: 512 MiB for the process plus three times the artefacts of every version (loaded copy,
    runtime arenas, the next version during a hot load), rounded up to 256 MiB."""
    size = sum(f.stat().st_size for e in entries for f in e.path.rglob("*") if f.is_file())
    need = 512 + 3 * size / 2**20
    return int(math.ceil(need / 256) * 256)


def _labels(plan: K8sPlan, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": component}


def _meta(plan: K8sPlan, name: str, component: str) -> Obj:
    return {"name": name, "namespace": plan.namespace, "labels": _labels(plan, component)}


def _security() -> Obj:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def _env(plan: K8sPlan, extra: dict[str, str]) -> list[Obj]:
    env = {"INFERLANE_MODEL_REPOSITORY": MODELS_DIR, "INFERLANE_STATE_DIR": STATE_DIR, **extra}
    if plan.jobs_store:
        env["INFERLANE_JOBS_STORE"] = plan.jobs_store
    return [{"name": k, "value": v} for k, v in env.items()]


def _pod(plan: K8sPlan, component: str, container: Obj, scrape_port: int) -> Obj:
    return {
        "metadata": {"labels": _labels(plan, component),
                     "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(scrape_port),
                                     "prometheus.io/path": "/metrics"}},
        "spec": {
            "terminationGracePeriodSeconds": GRACEFUL_S + 5,  # SIGTERM drains for up to GRACEFUL_S
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
            "containers": [container],
            "volumes": [{"name": "state", "emptyDir": {}}],
        },
    }


def _resources(cpus: int, mem: int) -> Obj:
    # NOTE: requests == limits (Guaranteed QoS): the cgroup CPU quota is then exactly `cpus`, which is what
    # core/cpus.py reads to choose the model threads (cpus - 1 while serving, one CPU for the event loop).
    amount = {"cpu": str(cpus), "memory": f"{mem}Mi"}
    return {"requests": dict(amount), "limits": dict(amount)}


def _http_probe(path: str, period: int, failures: int) -> Obj:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 2,
            "failureThreshold": failures}


def server_objects(entries: list[ModelEntry], plan: K8sPlan) -> list[Obj]:
    cpus, mem = cpu_limit(entries), memory_mib(entries)
    extra = {"INFERLANE_HOST": "0.0.0.0", "INFERLANE_PORT": str(HTTP_PORT),
             "INFERLANE_GRACEFUL_TIMEOUT_S": str(GRACEFUL_S)}
    if plan.jobs_store:
        # The servers accept jobs and run one at a time themselves at background priority; their worker also
        # publishes inferlane_jobs_backlog from the shared store, which scales the job workers.
        extra["INFERLANE_JOBS_WORKERS"] = "1"
    container = {
        "name": "server", "image": plan.image, "args": ["serve"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": _env(plan, extra),
        "resources": _resources(cpus, mem),
        # Live at once; loading can take long (large models): up to 5 minutes before liveness applies.
        "startupProbe": _http_probe("/v2/health/live", 2, 150),
        # Ready only after every version loaded and ran its warm-up batch: a cold pod gets no traffic.
        "readinessProbe": _http_probe("/v2/health/ready", 5, 2),
        "livenessProbe": _http_probe("/v2/health/live", 10, 3),
        "securityContext": _security(),
        "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}],
    }
    selector = {"matchLabels": _labels(plan, "server")}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(plan, plan.name, "server"),
        "spec": {"replicas": plan.min_replicas, "selector": selector,
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": _pod(plan, "server", container, HTTP_PORT)},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(plan, plan.name, "server"),
        "spec": {"type": "ClusterIP", "selector": _labels(plan, "server"),
                 "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}]},
    }
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(plan, plan.name, "server"),
        "spec": {"maxUnavailable": 1, "selector": selector},
    }
    return [deployment, service, pdb]


def _behavior(plan: K8sPlan) -> Obj:
    """Scale up at once (a queue is already late), down slowly: a replica removed during a lull is a cold
    start when the traffic comes back."""
    return {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                                 {"type": "Pods", "value": 2, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": plan.scale_down_window_s, "selectPolicy": "Min",
                      "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
    }


def hpa(plan: K8sPlan) -> Obj:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(plan, plan.name, "server"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name},
            "minReplicas": plan.min_replicas, "maxReplicas": plan.max_replicas,
            # Average pending requests per pod (the Prometheus adapter sums the pod's models); the HPA computes
            # ceil(total / target), the same number as the pods' own inferlane_desired_replicas gauge.
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(plan.target_queue)}}}],
            "behavior": _behavior(plan),
        },
    }


def _scaled_object(plan: K8sPlan, name: str, component: str, target: str, lo: int, hi: int,
                   triggers: list[Obj], behavior: Obj | None) -> Obj:
    spec: Obj = {"scaleTargetRef": {"name": target}, "minReplicaCount": lo, "maxReplicaCount": hi,
                 "pollingInterval": 15, "cooldownPeriod": plan.scale_down_window_s, "triggers": triggers}
    if behavior is not None:
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": behavior}}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(plan, name, component),
            "spec": spec}


def _prometheus(plan: K8sPlan, query: str, threshold: int) -> Obj:
    return {"type": "prometheus", "metadata": {"serverAddress": plan.prometheus_url, "query": query,
                                               "threshold": str(threshold)}}


def server_scaled_object(plan: K8sPlan) -> Obj:
    pods = f'namespace="{plan.namespace}", pod=~"{plan.name}-[a-z0-9]+-[a-z0-9]+"'
    query = f"sum({QUEUE_METRIC}{{{pods}}})"
    return _scaled_object(plan, plan.name, "server", plan.name, plan.min_replicas, plan.max_replicas,
                          [_prometheus(plan, query, plan.target_queue)], _behavior(plan))


def jobs_objects(plan: K8sPlan) -> list[Obj]:
    assert plan.jobs_store is not None
    name = f"{plan.name}-jobs-worker"
    container = {
        "name": "worker", "image": plan.image,
        "args": ["jobs", "worker", MODELS_DIR, "--store", plan.jobs_store],
        "env": _env(plan, {"INFERLANE_GRACEFUL_TIMEOUT_S": str(GRACEFUL_S)}),
        "resources": _resources(2, 1024),
        "securityContext": _security(),
        "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(plan, name, "jobs-worker"),
        "spec": {"replicas": 1, "selector": {"matchLabels": _labels(plan, "jobs-worker")},
                 "template": _pod(plan, "jobs-worker", container, METRICS_PORT)},
    }
    # Every server reads the same store, so each reports the whole backlog: max per model, then the sum.
    query = f'sum(max by (model) ({JOBS_BACKLOG_METRIC}{{namespace="{plan.namespace}"}}))'
    # Jobs have no caller waiting: workers may scale to zero when the backlog is empty.
    scaled = _scaled_object(plan, name, "jobs-worker", name, 0, plan.max_replicas,
                            [_prometheus(plan, query, plan.target_backlog)], None)
    return [deployment, scaled]


def _stream_trigger(s: StreamPlan) -> Obj:
    url = urlsplit(s.source)
    path = [p for p in url.path.split("/") if p]
    if url.scheme == "kafka" and len(path) == 1:
        return {"type": "kafka", "metadata": {"bootstrapServers": url.netloc, "consumerGroup": s.group,
                                              "topic": path[0], "lagThreshold": str(s.lag_threshold)}}
    if url.scheme == "redis" and path:
        return {"type": "redis-streams", "metadata": {
            "address": url.hostname and f"{url.hostname}:{url.port or 6379}", "stream": path[-1],
            "consumerGroup": s.group, "pendingEntriesCount": str(s.lag_threshold)}}
    raise ConfigError(f"--stream {s.source!r}: expected kafka://broker:9092/topic or redis://host:6379/0/stream")


def stream_objects(plan: K8sPlan) -> list[Obj]:
    s = plan.stream
    assert s is not None
    trigger = _stream_trigger(s)
    name = f"{plan.name}-stream"
    container = {
        "name": "consumer", "image": plan.image,
        "args": ["stream", "run", "--model", f"{MODELS_DIR}/{s.model}", "--source", s.source, "--group", s.group,
                 "--sink", s.sink, "--key", s.key, "--state-dir", STATE_DIR,
                 "--metrics-port", str(METRICS_PORT), "--metrics-host", "0.0.0.0"],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "env": _env(plan, {}),
        "resources": _resources(2, 1024),
        "securityContext": _security(),
        "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(plan, name, "stream"),
        "spec": {"replicas": 1, "selector": {"matchLabels": _labels(plan, "stream")},
                 "template": _pod(plan, "stream", container, METRICS_PORT)},
    }
    # More consumers than partitions sit idle: keep max replicas at or below the topic's partitions.
    scaled = _scaled_object(plan, name, "stream", name, 1, plan.max_replicas, [trigger], None)
    return [deployment, scaled]


def k8s_manifests(entries: list[ModelEntry], plan: K8sPlan) -> dict[str, list[Obj]]:
    """File name -> the objects it holds."""
    if not entries:
        raise ConfigError("the model repository has no model")
    if plan.stream is not None and plan.stream.model not in {e.name for e in entries}:
        raise ConfigError(f"--stream-model {plan.stream.model!r} is not in the repository")
    files = {"00-server.yaml": server_objects(entries, plan), "10-hpa.yaml": [hpa(plan)],
             "keda/10-server-scaledobject.yaml": [server_scaled_object(plan)]}
    if plan.jobs_store:
        if not plan.jobs_store.startswith(("redis://", "rediss://")):
            raise ConfigError(f"--jobs-store {plan.jobs_store!r}: workers on many pods share a Redis store "
                              "(redis://host:6379/0); SQLite is one machine's")
        files["20-jobs-worker.yaml"] = jobs_objects(plan)
    if plan.stream is not None:
        files["30-stream-consumer.yaml"] = stream_objects(plan)
    return files


_HEADER = ("# Generated by `inferlane deploy k8s`; see docs/deploy.md. {note}\n")
_NOTES = {
    "00-server.yaml": "CPU requests = limits: core/cpus.py reads the quota and runs CPUs-1 model threads.",
    "10-hpa.yaml": f"Needs the Prometheus adapter to expose {QUEUE_METRIC} per pod. Do not apply with keda/.",
    "keda/10-server-scaledobject.yaml": "Use instead of 10-hpa.yaml (KEDA makes its own HPA); never both.",
    "20-jobs-worker.yaml": "Needs KEDA.",
    "30-stream-consumer.yaml": "Needs KEDA; max replicas should not exceed the topic's partitions.",
}


def write_manifests(files: dict[str, list[Obj]], out: Path) -> list[Path]:
    written = []
    for name, objects in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = _HEADER.format(note=_NOTES.get(name, "")) + yaml.safe_dump_all(objects, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
