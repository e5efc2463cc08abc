"""``inferlane rollout start|status|promote|abort|history`` and ``inferlane models load|unload|drift``:
clients of the server's admin API (``/v2/admin``, transport/http/admin.py).

    inferlane rollout start fraud --to 3 --canary 5 --steps 5,25,50,100 --window 60s
    inferlane rollout status fraud
    inferlane models load fraud 3 --url http://10.0.0.5:8000 --token "$TOKEN"

The token comes from ``--token`` or ``INFERLANE_ADMIN_TOKEN``. Exit codes: 0 done; 2 bad usage or
a refusal by the server (HTTP 4xx: no such model, a rollout already running, a wrong token); 1
the server could not be reached (after the retries of core/retry.py) or failed (HTTP 5xx).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from inferlane.cli.client import Call, print_json, server_client
from inferlane.core.duration import parse_duration
from inferlane.core.errors import ConfigError, InferlaneError

EXIT_OK, EXIT_FAILED = 0, 1
TOKEN_ENV = "INFERLANE_ADMIN_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8000"
ADMIN = "/v2/admin"



class ServerFailed(InferlaneError):
    """The server could not be reached after the retries, or failed itself (5xx): exit 1."""




def duration(text: str) -> float:
    """``60s``, ``500ms``, ``2m``, ``1h`` or plain seconds (core/duration.py)."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def percents(text: str) -> list[float]:
    """``5,25,50,100``."""
    try:
        return [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of percentages "
                                         "such as 5,25,50,100") from None


def _client(args: argparse.Namespace) -> contextlib.AbstractContextManager[Call]:
    """The admin API at ``--url`` with the token: a 4xx is ConfigError (exit 2); the server
    unreachable after CLIENT_RETRY, or a 5xx, is ServerFailed (exit 1)."""
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise ConfigError(f"the admin API needs its token: pass --token or set {TOKEN_ENV}")
    return server_client(args.url, prefix=ADMIN, headers={"Authorization": f"Bearer {token}"}, timeout_s=300.0,
                         unreachable="cannot reach the admin API", failed=ServerFailed)


_print = print_json


def _summary(s: dict[str, Any]) -> str:
    """One line per rollout: ``fraud: running, stable 2, canary 3 at 25% (step 2/4)``."""
    spec = s.get("spec") or {}
    steps = spec.get("steps") or []
    where = f"canary {s['canary']} at {float(s.get('weight') or 0) * 100:g}%" if s.get("canary") else "no canary"
    if spec.get("shadow_pct"):
        where = f"shadow {s.get('canary')} mirroring {float(spec['shadow_pct']):g}%"
    return (f"{s['model']}: {s['state']}, stable {s['stable']}, {where}"
            + (f" (step {int(s.get('step_index', 0)) + 1}/{len(steps)})" if steps else ""))


def start(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"to": args.to}
    for key, value in (("canary", args.canary), ("steps", args.steps), ("window_s", args.window),
                       ("min_samples", args.min_samples), ("max_error_rate", args.max_error_rate),
                       ("max_p99_ratio", args.max_p99_ratio), ("max_psi", args.max_psi),
                       ("shadow", args.shadow), ("drain_s", args.drain)):
        if value is not None:
            body[key] = value
    with _client(args) as call:
        status = call("POST", f"/rollouts/{args.model}", json=body)
    print(_summary(status))
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    with _client(args) as call:
        if args.model is None:
            rollouts = call("GET", "/rollouts")["rollouts"]
            for s in rollouts:
                print(_summary(s))
            if not rollouts:
                print("no rollouts")
            return EXIT_OK
        doc = call("GET", f"/rollouts/{args.model}")
    if args.json:
        _print(doc)
    else:
        print(_summary(doc))
        if doc.get("last_checks"):
            _print(doc["last_checks"])
    return EXIT_OK


def promote(args: argparse.Namespace) -> int:
    with _client(args) as call:
        print(_summary(call("POST", f"/rollouts/{args.model}/promote")))
    return EXIT_OK


def abort(args: argparse.Namespace) -> int:
    with _client(args) as call:
        body = {"reason": args.reason} if args.reason else {}
        print(_summary(call("POST", f"/rollouts/{args.model}/abort", json=body)))
    return EXIT_OK


def _when(at: Any) -> str:
    try:
        return datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(at)


def history(args: argparse.Namespace) -> int:
    with _client(args) as call:
        events = call("GET", f"/rollouts/{args.model}/history", params={"limit": str(args.limit)})["events"]
    if args.json:
        _print(events)
        return EXIT_OK
    for e in events:
        detail = " ".join(f"{k}={orjson.dumps(v).decode()}" for k, v in (e.get("detail") or {}).items())
        print(f"{_when(e.get('at'))}  {e.get('kind', '?'):<11} {detail}".rstrip())
    return EXIT_OK


def load(args: argparse.Namespace) -> int:
    with _client(args) as call:
        doc = call("POST", f"/models/{args.model}/versions/{args.version}/load")
    print(f"{args.model} version {args.version} loaded and warmed up (no traffic until a route names it); "
          f"loaded versions: {', '.join(doc.get('versions', []))}")
    return EXIT_OK


def unload(args: argparse.Namespace) -> int:
    with _client(args) as call:
        doc = call("POST", f"/models/{args.model}/versions/{args.version}/unload",
                   params={"drain_timeout_s": str(args.drain_timeout)})
    print(f"{args.model} version {args.version} unloaded; loaded versions: {', '.join(doc.get('versions', []))}")
    return EXIT_OK


def drift_lines(doc: dict[str, Any]) -> list[str]:
    """``fraud version 2 (online) probabilities: psi 0.012 stable (window 1000/1000, reference: first 1000
    predictions)``, one line per tracked tensor of each version."""
    model = doc.get("model", "?")
    if not doc.get("enabled"):
        return [f"{model}: drift monitoring is off (model.yaml drift.enabled: false)"]
    lines = []
    for v in doc.get("versions", []):
        where = f"{model} version {v['version']} ({v['lane']}{', stable' if v.get('stable') else ''})"
        for kind in ("outputs", "inputs"):
            for name, t in (v.get(kind) or {}).items():
                label = name if kind == "outputs" else f"input {name}"
                if t["state"] == "collecting reference":
                    lines.append(f"{where} {label}: collecting reference "
                                 f"({t['reference_predictions']}/{t['reference_size']} predictions)")
                    continue
                window = f"window {t['window_predictions']}/{t['window_size']}, reference: {t['reference']}"
                if t["psi"] is None:
                    lines.append(f"{where} {label}: filling window ({window})")
                else:
                    lines.append(f"{where} {label}: psi {t['psi']:.3f} {t['verdict']} ({window})")
    return lines or [f"{model}: no predictions yet (drift counts unpinned online requests)"]


def drift(args: argparse.Namespace) -> int:
    with _client(args) as call:
        doc = call("GET", f"/models/{args.model}/drift")
    if args.json:
        _print(doc)
    else:
        print("\n".join(drift_lines(doc)))
    return EXIT_OK


def _failing(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Exit 1 with one line when the server is unreachable or fails (``main`` maps ConfigError to 2)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ServerFailed as e:
            print(e.message, file=sys.stderr)
            return EXIT_FAILED
    return run


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    p.add_argument("--token", default=None, help=f"admin token (default ${TOKEN_ENV})")


EPILOG = ("Exit codes: 0 done, 1 server unreachable or failing (HTTP 5xx), "
          "2 bad usage or refused by the server (HTTP 4xx).")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("rollout", help="roll a new model version out: canary steps, metric checks, rollback",
                       description="Canary rollouts over the server's admin API (/v2/admin). The server needs "
                                   f"{TOKEN_ENV}; give the same token with --token or the variable.",
                       epilog=EPILOG)
    rsub = r.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str, func: Callable[[argparse.Namespace], int],
               model_optional: bool = False) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = rsub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG)
        p.add_argument("model", nargs="?" if model_optional else None, help="model name")
        _client_args(p)
        p.set_defaults(func=_failing(func))
        return p

    s = action("start", "load and warm a version, then shift traffic to it step by step while its error rate, "
                        "p99 latency and output drift stay within limits; roll back at once on a breach", start)
    s.add_argument("--to", required=True, help="the version to roll out (a folder in the model repository)")
    s.add_argument("--canary", type=float, help="first step, percent of traffic (default 5)")
    s.add_argument("--steps", type=percents, help="percent steps ending at 100 (default 5,25,50,100)")
    s.add_argument("--window", type=duration, help="length of each step's comparison window (default 60s)")
    s.add_argument("--min-samples", type=int, help="canary requests a window needs before it can pass (default 500)")
    s.add_argument("--max-error-rate", type=float, help="highest canary error rate, 0..1 (default 0.01)")
    s.add_argument("--max-p99-ratio", type=float, help="highest canary p99 / stable p99 (default 1.3)")
    s.add_argument("--max-psi", type=float, help="highest PSI of each output, canary vs stable (default 0.2)")
    s.add_argument("--shadow", type=float, help="shadow mode: mirror this percent of requests to the version, "
                                                "compare, never answer with it; promote by hand")
    s.add_argument("--drain", type=duration, help="after promotion, unload the old version after this (default 5s)")
    st = action("status", "show a model's rollout (every rollout without a model)", status, model_optional=True)
    st.add_argument("--json", action="store_true", help="the whole status as JSON")
    action("promote", "send all traffic to the canary now and unload the old version after the drain", promote)
    a = action("abort", "send all traffic back to the stable version and unload the canary", abort)
    a.add_argument("--reason", help="recorded in the history (default: aborted by an operator)")
    h = action("history", "the rollout events of a model, oldest first: started, step, promoted, rolled_back, ...",
               history)
    h.add_argument("--limit", type=int, default=100, help="most events (default 100)")
    h.add_argument("--json", action="store_true", help="events as JSON")


def add_model_actions(msub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``inferlane models load|unload MODEL VERSION`` (hot load while serving), ``inferlane models drift MODEL``."""
    load_help = ("hot-load and warm a version on a running server (it gets no traffic until a route or a "
                 "rollout names it); every process sharing its rollout store follows within a second or two")
    unload_help = ("unload a version from a running server after its queued and in-flight requests finish "
                   "(refused while a route names it); every process sharing its rollout store follows")
    ld = msub.add_parser("load", help=load_help, description=load_help, epilog=EPILOG)
    un = msub.add_parser("unload", help=unload_help, description=unload_help, epilog=EPILOG)
    for p, func in ((ld, load), (un, unload)):
        p.add_argument("model", help="model name")
        p.add_argument("version", help="version folder name")
        _client_args(p)
        p.set_defaults(func=_failing(func))
    un.add_argument("--drain-timeout", type=duration, default=30.0,
                    help="longest wait for queued and in-flight requests (default 30s)")
    drift_help = ("each served version's output drift: PSI of its recent predictions against its reference "
                  "(above 0.2: shifted)")
    dr = msub.add_parser("drift", help=drift_help, description=drift_help, epilog=EPILOG)
    dr.add_argument("model", help="model name")
    dr.add_argument("--json", action="store_true", help="the whole report as JSON")
    _client_args(dr)
    dr.set_defaults(func=_failing(drift))
