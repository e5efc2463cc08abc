"""The ``inferlane`` command: thin wrappers over the server, the core and the demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from inferlane import __version__
from inferlane.core.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _serve(args: argparse.Namespace) -> int:
    from inferlane.core.repository import scan_repository
    from inferlane.server.app import run
    from inferlane.server.settings import ServerSettings

    if args.repository is None and not os.environ.get("INFERLANE_MODEL_REPOSITORY"):
        raise ConfigError("serve needs a model repository: give its folder (inferlane serve models/) "
                          "or set INFERLANE_MODEL_REPOSITORY")
    settings = ServerSettings.from_env(model_repository=args.repository, host=args.host,
                                       port=args.port, workers=args.workers, log_level=args.log_level,
                                       watch=args.watch or None)
    scan_repository(settings.model_repository)  # fail fast, with the field at fault, before binding
    run(settings)
    return EXIT_OK


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
    s.add_argument("--log-level", default=None,
                   choices=["critical", "error", "warning", "info", "debug"], help="default info")
    s.add_argument("--watch", action="store_true",
                   help="hot-load new version folders of the repository while serving, without traffic "
                        "(INFERLANE_WATCH)")
    s.set_defaults(func=_serve)

    from inferlane.cli import batch, jobs, rollout, stream

    batch.add_parser(sub)
    jobs.add_parser(sub)
    stream.add_parser(sub)
    rollout.add_parser(sub)

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
            "skops": "sklearn", "skl2onnx": "sklearn"}.get(name, "all")


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
