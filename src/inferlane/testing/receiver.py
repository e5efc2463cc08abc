"""A real HTTP server on a free loopback port that records every request and answers from a
script: a callback receiver, or a stand-in for the server the jobs CLI talks to.

    with HttpReceiver(statuses=[500, 200]) as r:       # request n gets statuses[n] (the last repeats)
        deliver(f"{r.url}/hook", ...)
        assert [q.path for q in r.requests] == ["/hook", "/hook"]
    HttpReceiver(fail_first=2)                          # 500 to the first two requests of each path, then 200
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from inferlane.testing.ports import LOOPBACK


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def doc(self) -> Any:
        return orjson.loads(self.body)


class HttpReceiver:
    """A threaded HTTP server on a free loopback port; ``requests`` holds every request received,
    in order. Use it as a context manager, or call ``close()``."""

    def __init__(self, statuses: Sequence[int] = (200,), *, fail_first: int = 0, answer: Any = None) -> None:
        """``statuses``: the status of request n (the last one repeats). ``fail_first``: instead, 500
        to the first that many requests of each path, then 200. ``answer``: the JSON body of a
        2xx/3xx answer (4xx/5xx answers carry ``{"error": ...}``)."""
        self.requests: list[Request] = []
        self._per_path: Counter[str] = Counter()
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    n = len(receiver.requests)
                    receiver.requests.append(Request(self.command, self.path, dict(self.headers.items()), data))
                    receiver._per_path[self.path] += 1
                    if fail_first:
                        status = 500 if receiver._per_path[self.path] <= fail_first else 200
                    else:
                        status = statuses[min(n, len(statuses) - 1)]
                out = orjson.dumps(answer if status < 400 else {"error": f"scripted {status}"})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def count(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> HttpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
