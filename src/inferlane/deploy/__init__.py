"""Deployment artefacts built from a model repository: Kubernetes manifests (``inferlane deploy k8s``).

    plan = K8sPlan(name="inferlane", image="registry.example.com/inferlane:0.1.0")
    files = k8s_manifests(scan_repository(Path("models")), plan)   # {"00-server.yaml": [objects...], ...}
    write_manifests(files, Path("deploy"))

It only reads model configs and writes YAML: it sits just under the CLI, above everything else.
"""

from inferlane.deploy.k8s import K8sPlan, StreamPlan, k8s_manifests, parse_replicas, write_manifests

__all__ = ["K8sPlan", "StreamPlan", "k8s_manifests", "parse_replicas", "write_manifests"]
