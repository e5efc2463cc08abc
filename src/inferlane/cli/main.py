"""The ``inferlane`` command: thin wrappers over the server, the core and the demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from inferlane import __version__
from inferlane.cli import options
from inferlane.core.errors import ConfigError

if TYPE_CHECKING:
    from inferlane.server.settings import ServerSettings
    from inferlane.server.supervisor import ReplicaRange

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _serve(args: argparse.Namespace) -> int:
    from inferlane.core import tracing
    from inferlane.core.repository import scan_repository
    from inferlane.core.runtimes.devices import BUDGET_ENV, device_budgets, format_budgets
    from inferlane.server.app import run
    from inferlane.server.settings import SAGEMAKER_ON, ServerSettings

    budgets = device_budgets(args.device_memory_budget or ())  # the flags over the environment's; bad: exit 2
    if budgets:  # read from the environment by this process's runtimes, and by the workers and replicas it starts
        os.environ[BUDGET_ENV] = format_budgets(budgets)
    sagemaker = args.sagemaker or None
    if args.repository is None and not os.environ.get("INFERLANE_MODEL_REPOSITORY") and not (
            sagemaker or os.environ.get("INFERLANE_SAGEMAKER", "").lower() in SAGEMAKER_ON):
        raise ConfigError("serve needs a model repository: give its folder (inferlane serve models/) "
                          "or set INFERLANE_MODEL_REPOSITORY")
    replicas = None
    if args.replicas is not None:
        from inferlane.server.supervisor import ReplicaRange

        replicas = ReplicaRange.parse(args.replicas)  # a usage error before anything else
        if args.workers is not None:
            raise ConfigError("--replicas and --workers are exclusive: --replicas MIN..MAX runs and scales whole "
                              "server processes itself; --workers N runs a fixed number under uvicorn")
    settings = ServerSettings.from_env(model_repository=args.repository, host=args.host, target_queue=args.target_queue,
                                       port=args.port, workers=args.workers, log_level=args.log_level,
                                       log_format=args.log_format, otlp_endpoint=args.otlp_endpoint,
                                       watch=args.watch or None, grpc_port=args.grpc_port,
                                       ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                                       sagemaker=sagemaker, sagemaker_model=args.sagemaker_model)
    scan_repository(settings.model_repository)  # fail fast, with the field at fault, before binding
    tracing.check(settings.otlp_endpoint)
    if replicas is not None:
        return _supervise(settings, replicas, args)
    run(settings)
    return EXIT_OK


def _supervise(settings: ServerSettings, replicas: ReplicaRange, args: argparse.Namespace) -> int:
    from inferlane.server.supervisor import Supervisor

    down = args.scale_down_window if args.scale_down_window is not None else 6 * args.scale_window
    from inferlane.core.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    return Supervisor(settings, replicas, args.scale_window, down).run()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 86400 seconds")
    return value


def _device_budget(text: str) -> tuple[str, int]:
    from inferlane.core.runtimes.devices import parse_budget

    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _validate(args: argparse.Namespace) -> int:
    from inferlane.core.model import ModelVersion
    from inferlane.core.repository import scan_repository

    entries = scan_repository(args.repository)
    failed = 0
    for entry in entries:
        for version in entry.versions:
            t0 = time.perf_counter()
            try:
                mv = ModelVersion.load(entry.config, entry.path, version)
                forward = mv.warmup()
                mv.close()
            except ConfigError as e:
                failed += 1
                print(f"FAIL {entry.name} version {version}\n  {e.message}", file=sys.stderr)
                continue
            print(f"ok   {entry.name} version {version}: runtime {entry.config.runtime}, "
                  f"loaded and warmed up in {(time.perf_counter() - t0) * 1e3:.0f} ms "
                  f"(slowest warm-up forward {forward * 1e3:.1f} ms)")
    if failed:
        print(f"{failed} model version(s) failed validation", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    try:
        from inferlane.demo.run import run_demo
    except ImportError as e:
        print(f"the demo needs scikit-learn and skl2onnx: pip install 'inferlane[demo]' ({e})",
              file=sys.stderr)
        return EXIT_USAGE
    return run_demo(workdir=args.workdir, requests=args.requests, concurrency=args.concurrency)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inferlane",
        description="Serve one trained model through every inference pattern.",
        epilog="Exit codes: 0 success, 1 failure, 2 bad usage or configuration.")
    p.add_argument("--version", action="version", version=f"inferlane {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="serve every model in a model repository over HTTP",
                       description="Serve the Open Inference Protocol V2 REST API (and V1 :predict) "
                                   "for every model in REPOSITORY, with dynamic batching.")
    s.add_argument("repository", type=Path, nargs="?", default=None,
                   help="model repository folder (<repo>/<name>/model.yaml); default INFERLANE_MODEL_REPOSITORY")
    s.add_argument("--host", default=None, help="listen address (default 127.0.0.1, loopback only)")
    s.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    s.add_argument("--workers", type=int, default=None, help="server processes (default 1)")
    s.add_argument("--replicas", default=None, metavar="MIN..MAX",
                   help="run MIN to MAX server processes on the port and scale them on queue depth "
                        "(docs/scaling.md); not with --workers")
    s.add_argument("--target-queue", type=int, default=None, metavar="N",
                   help="load (requests waiting + batches running) one replica should carry: the divisor of "
                        "inferlane_desired_replicas and the --replicas scale-up threshold "
                        "(INFERLANE_TARGET_QUEUE; default 20)")
    s.add_argument("--scale-window", type=_seconds, default=10.0, metavar="SECONDS",
                   help="--replicas: add one when the load stays above target for this long (default 10)")
    s.add_argument("--scale-down-window", type=_seconds, default=None, metavar="SECONDS",
                   help="--replicas: remove one when the load fits one replica fewer for this long "
                        "(default 6 x --scale-window)")
    s.add_argument("--log-level", default=None,
                   choices=["critical", "error", "warning", "info", "debug"], help="default info")
    s.add_argument("--log-format", default=None, choices=["text", "json"],
                   help="json: one JSON object per line, plus one line per model request (INFERLANE_LOG_FORMAT; "
                        "default text)")
    options.add_otlp(s)
    s.add_argument("--watch", action="store_true",
                   help="hot-load new version folders of the repository while serving, without traffic "
                        "(INFERLANE_WATCH)")
    s.add_argument("--device-memory-budget", action="append", type=_device_budget, default=None,
                   metavar="DEVICE=SIZE",
                   help="most memory the loaded versions of all models may take together on DEVICE (cpu, cuda, "
                        "cuda:N), e.g. cuda:0=20GiB or cpu=2GiB (units B, KB, MB, GB, KiB, MiB, GiB); a version "
                        "that would go over it is refused at load and the loaded ones keep serving; repeat it for "
                        "each device; per server process (INFERLANE_DEVICE_MEMORY_BUDGET, comma-separated; "
                        "docs/runtimes.md)")
    s.add_argument("--grpc-port", type=int, default=None,
                   help="also serve the V2 protocol over gRPC on this port (INFERLANE_GRPC_PORT; default 0: off; "
                        "Triton's is 8001)")
    s.add_argument("--ssl-certfile", type=Path, default=None,
                   help="PEM certificate: TLS on the HTTP and gRPC ports (INFERLANE_SSL_CERTFILE)")
    s.add_argument("--ssl-keyfile", type=Path, default=None,
                   help="PEM private key of --ssl-certfile (INFERLANE_SSL_KEYFILE)")
    s.add_argument("--sagemaker", action="store_true",
                   help="the SageMaker contract: GET /ping, POST /invocations (JSON or CSV); defaults host 0.0.0.0, "
                        "port 8080, repository /opt/ml/model (INFERLANE_SAGEMAKER)")
    s.add_argument("--sagemaker-model", default=None,
                   help="the model /invocations serves when the repository has several (SAGEMAKER_INFERLANE_MODEL)")
    s.set_defaults(func=_serve)

    from inferlane.cli import advise, batch, bench, deploy, features, jobs, rollout, stream, text

    batch.add_parser(sub)
    jobs.add_parser(sub)
    stream.add_parser(sub)
    rollout.add_parser(sub)
    features.add_parser(sub)
    deploy.add_parser(sub)
    bench.add_parser(sub)
    advise.add_parser(sub)
    text.add_parser(sub)

    m = sub.add_parser("models", help="model repository tools")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    v = msub.add_parser("validate", help="check every model.yaml and run each model's warm-up once")
    v.add_argument("repository", type=Path)
    v.set_defaults(func=_validate)
    rollout.add_model_actions(msub)

    d = sub.add_parser("demo", help="train a fraud model, serve it, load-test it, show the error paths")
    d.add_argument("--workdir", type=Path, default=None,
                   help="where to write the model repository (default: a temporary folder)")
    d.add_argument("--requests", type=int, default=4000, help="requests in the load burst")
    d.add_argument("--concurrency", type=int, default=32, help="concurrent connections in the burst")
    d.set_defaults(func=_demo)
    return p


def _extra(e: ImportError) -> str:
    name = (e.name or "").split(".")[0]
    return {"pyarrow": "batch", "tqdm": "batch", "psycopg": "batch", "croniter": "batch",
            "ray": "ray", "confluent_kafka": "stream", "redis": "redis", "sklearn": "sklearn",
            "skops": "sklearn", "skl2onnx": "sklearn", "grpc": "grpc"}.get(name, "all")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as e:
        print(e.message, file=sys.stderr)
        return EXIT_USAGE
    except ImportError as e:
        print(f"{e}\nThis command needs an optional dependency: pip install 'inferlane[{_extra(e)}]'",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
