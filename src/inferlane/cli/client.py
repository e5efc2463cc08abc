"""The one HTTP client the CLI talks to a server with (``jobs ...``, ``rollout ...``, ``models ...``).

    with server_client(args.url) as call:
        job = call("GET", f"/v2/jobs/{job_id}")          # the decoded JSON answer

A 503 (a full queue, a model not ready yet) and connection errors are retried by CLIENT_RETRY
(core/retry.py); every failure becomes one line, an InferlaneError the CLI prints and maps to
its exit code, never a traceback. A 4xx is ConfigError (exit 2: the request was wrong); what
``unreachable`` and ``server_error`` raise is the caller's choice of exit code.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from inferlane.core.errors import ConfigError, InferlaneError, RetriesExhausted, Unavailable
from inferlane.core.retry import RetryPolicy

CLIENT_RETRY = RetryPolicy(attempts=4, backoff_s=0.25, max_backoff_s=2.0, give_up_after_s=60.0)
"""Each request to the server: 4 tries over about 2 s when the server is down or answers 503."""

Call = Callable[..., Any]
"""``call(method, path, **httpx_kwargs)``: the decoded JSON answer, or an InferlaneError."""


def error_text(r: Any) -> str:
    """The ``error`` of a JSON error answer, else its text (on one line, at most 300 characters)."""
    try:
        doc = r.json()
    except ValueError:
        return " ".join(str(r.text).split())[:300]
    return str(doc.get("error", r.text)) if isinstance(doc, dict) else str(r.text)


@contextlib.contextmanager
def server_client(url: str, *, prefix: str = "", headers: dict[str, str] | None = None, timeout_s: float = 30.0,
                  unreachable: str = "cannot talk to the server",
                  failed: type[InferlaneError] = ConfigError) -> Iterator[Call]:
    """``call(method, path)`` on ``url + prefix + path``. ``failed`` is raised when the server cannot
    be reached after the retries (``"{unreachable} at {url}: ..."``), for a broken answer, and for a 5xx."""
    import httpx

    # The retries are the policy's business; a give-up is reported once, as one line.
    logging.getLogger("inferlane.core.retry").setLevel(logging.ERROR)
    with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0)) as client:
        def call(method: str, path: str, **kwargs: Any) -> Any:
            def once() -> Any:
                r = client.request(method, prefix + path, **kwargs)
                if r.status_code == 503:  # a full queue, or not ready yet: worth another try
                    raise Unavailable(f"HTTP 503: {error_text(r)}")
                return r

            try:
                r = CLIENT_RETRY.call(once, what=f"{method} {prefix}{path}")
            except RetriesExhausted as e:
                raise failed(f"{unreachable} at {url}: {' '.join(e.message.split())}") from None
            except httpx.HTTPError as e:  # not transient (a bad URL, a broken answer): not retried
                raise failed(f"cannot talk to the server at {url}: {' '.join(f'{type(e).__name__}: {e}'.split())}"
                             ) from None
            if 400 <= r.status_code < 500:
                raise ConfigError(f"HTTP {r.status_code}: {error_text(r)}")
            if r.status_code >= 500:
                raise failed(f"HTTP {r.status_code}: {error_text(r)}")
            try:
                return r.json()
            except ValueError:
                raise failed(f"HTTP {r.status_code}: the answer is not JSON: {r.text[:200]!r}") from None

        yield call


def render(doc: Any, depth: int = 0) -> str:
    """JSON indented by two spaces, except that a list of plain values (a tensor's data, a shape)
    stays on one line: a job's result reads as one line per tensor, not one line per number."""
    pad = "  " * depth
    if isinstance(doc, dict) and doc:
        items = [f"{pad}  {orjson.dumps(k).decode()}: {render(v, depth + 1)}" for k, v in doc.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(doc, list) and any(isinstance(v, (dict, list)) for v in doc):
        return "[\n" + ",\n".join(f"{pad}  {render(v, depth + 1)}" for v in doc) + f"\n{pad}]"
    if isinstance(doc, list):
        return "[" + ", ".join(orjson.dumps(v).decode() for v in doc) + "]"
    return orjson.dumps(doc).decode()


def print_json(doc: Any) -> None:
    sys.stdout.write(render(doc) + "\n")
