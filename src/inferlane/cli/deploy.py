"""``inferlane deploy k8s``: Kubernetes manifests for a model repository (src/inferlane/deploy/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from inferlane.core.errors import ConfigError


def k8s(args: argparse.Namespace) -> int:
    from inferlane.core.repository import scan_repository
    from inferlane.deploy import K8sPlan, StreamPlan, k8s_manifests, parse_replicas, write_manifests

    entries = scan_repository(args.repository)
    lo, hi = parse_replicas(args.replicas)
    stream = None
    if args.stream:
        if not args.stream_sink:
            raise ConfigError("--stream needs --stream-sink (where the consumers write their outputs)")
        model = args.stream_model or (entries[0].name if len(entries) == 1 else None)
        if model is None:
            raise ConfigError("the repository has several models: choose the stream's with --stream-model")
        stream = StreamPlan(source=args.stream, sink=args.stream_sink, group=args.stream_group,
                            key=args.stream_key, model=model)
    plan = K8sPlan(image=args.image, name=args.name, namespace=args.namespace, min_replicas=lo, max_replicas=hi,
                   target_queue=args.target_queue, jobs_store=args.jobs_store, target_backlog=args.target_backlog,
                   stream=stream, prometheus_url=args.prometheus)
    for path in write_manifests(k8s_manifests(entries, plan), args.out):
        print(path)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("deploy", help="write deployment manifests (Kubernetes)")
    dsub = d.add_subparsers(dest="deploy_command", required=True, metavar="TARGET")
    k = dsub.add_parser("k8s", help="Deployment, Service, PDB, HPA or KEDA on queue depth, job workers, stream "
                                    "consumers (docs/deploy.md)")
    k.add_argument("repository", type=Path, help="model repository (baked into the image at /models)")
    k.add_argument("--image", required=True, help="the image (registry/name:tag), built from the Dockerfile")
    k.add_argument("--out", type=Path, default=Path("deploy"), help="output folder (default deploy/)")
    k.add_argument("--name", default="inferlane", help="name of the Deployment and Service (default inferlane)")
    k.add_argument("--namespace", default="default")
    k.add_argument("--replicas", default="2..10", help="MIN..MAX server replicas (default 2..10; MIN >= 1)")
    k.add_argument("--target-queue", type=int, default=20,
                   help="pending requests per replica before scaling out (default 20)")
    k.add_argument("--jobs-store", help="redis://host:6379/0: also job workers, scaled by KEDA on the backlog")
    k.add_argument("--target-backlog", type=int, default=20, help="queued jobs per worker (default 20)")
    k.add_argument("--stream", help="kafka://broker:9092/topic or redis://host:6379/0/stream: also stream "
                                    "consumers, scaled by KEDA on the group's lag")
    k.add_argument("--stream-sink", help="the consumers' sink (as inferlane stream run --sink)")
    k.add_argument("--stream-group", default="inferlane", help="consumer group (default inferlane)")
    k.add_argument("--stream-key", default="id", help="event field naming the event (default id)")
    k.add_argument("--stream-model", help="the model the consumers score (default: the repository's only one)")
    k.add_argument("--prometheus", default="http://prometheus-server.monitoring.svc:80",
                   help="Prometheus URL for the KEDA scalers")
    k.set_defaults(func=k8s)
