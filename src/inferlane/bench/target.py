"""What to send and where: a URL, a model and a body, checked before any load is sent.

    target = resolve("http://127.0.0.1:8000", model="fraud")        # body from GET /v2/models/fraud
    target = resolve("http://host:8080", model="m", protocol="v1", body=Path("row.json"))
    target = resolve("http://host:9000/predict", body=Path("req.json"))   # any JSON POST endpoint

Without a body the requests come from the server's V2 model metadata: every declared input with
random values of its datatype and shape (a ``-1`` dimension is one row), 64 distinct bodies. A bad
URL, a server that cannot be reached and an unknown model are ConfigErrors (exit 2), raised here
by one probe request, never in the middle of a run.
"""

from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from inferlane.bench.engine import Target
from inferlane.bench.wire import Response, ResponseParser, build_request
from inferlane.core.errors import ConfigError

DISTINCT_BODIES = 64
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Resolved:
    target: Target
    url: str
    """The full URL requests are POSTed to."""
    body_source: str
    """Where the body came from, for the report: a file, --inputs, or the model metadata."""


def infer_path(model: str, protocol: str) -> str:
    return f"/v2/models/{model}/infer" if protocol == "v2" else f"/v1/models/{model}:predict"


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an ``http://`` URL; ConfigError for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        raise ConfigError(f"{url}: bench speaks plain HTTP/1.1; https is not supported (point it at the HTTP port)")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{url!r} is not a server URL such as http://127.0.0.1:8000")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise ConfigError(f"{url!r} has a bad port: {e}") from None
    return parts.hostname, port, parts.path.rstrip("/") + (f"?{parts.query}" if parts.query else "")


def exchange(host: str, port: int, raw: bytes, timeout_s: float = PROBE_TIMEOUT_S) -> Response:
    """One request on a fresh blocking connection; ConfigError when the server cannot be reached."""
    parser = ResponseParser(keep_body=True)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(raw)
            while True:
                data = sock.recv(65536)
                if not data:
                    raise ConfigError(f"the server at {host}:{port} closed the connection without answering")
                responses = parser.feed(data)
                if responses:
                    return responses[0]
    except OSError as e:
        raise ConfigError(f"cannot reach the server at http://{host}:{port}: {e.strerror or e}") from None


def _random_data(datatype: str, count: int, rng: np.random.Generator) -> list[Any]:
    dt = datatype.upper()
    if dt.startswith("FP"):
        return [round(v, 4) for v in rng.normal(0.0, 1.0, count).tolist()]
    if dt.startswith("INT") or dt.startswith("UINT"):
        return rng.integers(0, 100, count).tolist()  # type: ignore[no-any-return]
    if dt == "BOOL":
        return [bool(v) for v in rng.integers(0, 2, count)]
    if dt == "BYTES":
        return [f"text-{v}" for v in rng.integers(0, 1000, count)]
    raise ConfigError(f"cannot make random values of datatype {datatype!r}: give a body with --body or --inputs")


def bodies_from_metadata(meta: dict[str, Any], protocol: str, n: int = DISTINCT_BODIES,
                         seed: int = 7) -> list[bytes]:
    """``n`` distinct one-row request bodies matching the declared inputs."""
    inputs = meta.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ConfigError("the model metadata declares no inputs: give a body with --body or --inputs")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tensors = []
        for spec in inputs:
            shape = [1 if int(d) < 0 else int(d) for d in spec["shape"]]
            data = _random_data(str(spec["datatype"]), int(np.prod(shape)), rng)
            tensors.append({"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "data": data})
        if protocol == "v2":
            out.append(orjson.dumps({"inputs": tensors}))
        else:  # V1: rows of the first input, without the batch dimension
            first = tensors[0]
            row = np.array(first["data"]).reshape(first["shape"]).tolist()
            out.append(orjson.dumps({"instances": row}))
    return out


def _metadata(host: str, port: int, model: str) -> dict[str, Any]:
    r = exchange(host, port, build_request(host, port, f"/v2/models/{model}", b"", method="GET"))
    if r.status == 404:
        raise ConfigError(f"the server at http://{host}:{port} has no model {model!r} (GET /v2/models/{model}: 404)")
    if r.status != 200:
        raise ConfigError(f"GET /v2/models/{model} answered HTTP {r.status}: cannot build a body from the model "
                          "metadata; give one with --body or --inputs")
    try:
        doc = orjson.loads(r.body or b"")
    except orjson.JSONDecodeError:
        raise ConfigError(f"GET /v2/models/{model} did not answer JSON") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"GET /v2/models/{model} did not answer a metadata object")
    return doc


def _given_bodies(body: Path | None, inputs: str | None, protocol: str) -> list[bytes] | None:
    if body is not None and inputs is not None:
        raise ConfigError("--body and --inputs are exclusive")
    if body is not None:
        try:
            raw = body.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read --body {body}: {e.strerror}") from None
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ConfigError(f"--body {body} is not JSON: {e}") from None
        return [raw]
    if inputs is not None:
        try:
            doc = orjson.loads(inputs)
        except orjson.JSONDecodeError as e:
            raise ConfigError(f"--inputs is not JSON: {e}") from None
        return [orjson.dumps({"inputs": doc} if protocol == "v2" else {"instances": doc})]
    return None


def resolve(url: str, *, model: str | None = None, protocol: str = "v2", body: Path | None = None,
            inputs: str | None = None, timeout_s: float = 10.0) -> Resolved:
    """Check the URL, the server, the model and the body with one probe request; ConfigError otherwise."""
    if protocol not in ("v2", "v1"):
        raise ConfigError(f"--protocol must be v2 or v1, not {protocol!r}")
    host, port, path = split_url(url)
    if path and model is not None:
        raise ConfigError(f"give either a server URL with --model, or a full endpoint URL ({url}), not both")
    if not path and model is None:
        raise ConfigError("which model? give --model NAME (or the full endpoint URL)")
    path = path or infer_path(str(model), protocol)
    bodies = _given_bodies(body, inputs, protocol)
    source = f"--body {body}" if body is not None else "--inputs" if inputs is not None else ""
    if bodies is None:
        if model is None:
            raise ConfigError("with a full endpoint URL, give the body with --body FILE or --inputs JSON")
        bodies = bodies_from_metadata(_metadata(host, port, model), protocol)
        source = f"random rows from GET /v2/models/{model}"
    requests = tuple(build_request(host, port, path, b) for b in bodies)
    probe = exchange(host, port, requests[0], timeout_s)
    if probe.status == 404:
        raise ConfigError(f"POST {path} answered 404: no such model or endpoint at http://{host}:{port}")
    return Resolved(Target(host, port, requests, timeout_s), f"http://{host}:{port}{path}", source)
