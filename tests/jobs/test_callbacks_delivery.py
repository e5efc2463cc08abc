"""Callback delivery, in process, against real receivers on loopback sockets.

- where a callback may go: the host httpx would connect to (IDNA 2008), resolved once per
  attempt, every address globally routable (CGNAT, IPv4-mapped and NAT64 forms judged by the
  IPv4 address inside), and the request sent to that exact address with the original Host;
- what a receiver can cost: one deadline per attempt, at most a few KiB of its answer read;
- what is retried (5xx, 429, connection errors) and what is not (other 4xx, redirects);
- signatures over the timestamp, the job id, the URL and the body.

The resolver is the one thing replaced (a name no DNS here knows, pointing at a loopback
receiver): what is checked is that the connection goes to the address the check saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from inferlane.core.errors import InvalidInput
from inferlane.core.retry import RetryPolicy
from inferlane.lanes.jobs.callbacks import (
    JOB_ID_HEADER,
    MAX_ANSWER_BYTES,
    SIGNATURE_HEADER,
    Delivery,
    deliver,
    is_public_address,
    resolve_target,
    sign,
    verify_signature,
)
from inferlane.testing import LOOPBACK, HttpReceiver, free_port

SECRET = b"delivery-test-secret"
FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)
BODY = b'{"id": "j1"}'


def _deliver(url: str, policy: RetryPolicy = FAST, *, allow_private: bool = True, timeout_s: float = 10.0,
             resolver: object = None) -> Delivery:
    kwargs = {} if resolver is None else {"resolver": resolver}
    return asyncio.run(deliver(url, BODY, SECRET, job_id="j1", policy=policy, allow_private=allow_private,
                               timeout_s=timeout_s, **kwargs))  # type: ignore[arg-type]


class FakeDNS:
    """Answers ``names`` from a table and records every question (host, port)."""

    def __init__(self, names: dict[str, Sequence[str]]) -> None:
        self.names = names
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.names[host])


@pytest.fixture
def receivers() -> Iterator[list[HttpReceiver]]:
    made: list[HttpReceiver] = []
    yield made
    for r in made:
        r.close()


def receiver(made: list[HttpReceiver], statuses: list[int]) -> HttpReceiver:
    r = HttpReceiver(statuses)
    made.append(r)
    return r


def signed_ok(header: str, body: bytes, url: str, job_id: str) -> bool:
    """The receiver's check, written out independently of the module under test."""
    parts = dict(kv.split("=", 1) for kv in header.split(","))
    expected = hmac.new(SECRET, f"{parts['t']}.{job_id}.{url}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(int(parts["t"]) - time.time()) < 300 and hmac.compare_digest(parts["v1"], expected)


# --- the retry rule ------------------------------------------------------------------------------

@pytest.mark.parametrize("statuses", [[500, 200], [429, 200], [503, 502, 200]], ids=str)
def test_deliver_retries_5xx_and_429_until_delivered(receivers: list[HttpReceiver], statuses: list[int]) -> None:
    hook = receiver(receivers, statuses)
    assert _deliver(f"{hook.url}/h") == Delivery(delivered=True, attempts=len(statuses))
    assert hook.count == len(statuses)  # deliver returned after the 2xx: nothing more was sent
    assert {r.body for r in hook.requests} == {BODY}
    assert all(signed_ok(r.headers[SIGNATURE_HEADER], r.body, f"{hook.url}/h", "j1") for r in hook.requests)
    assert {r.headers[JOB_ID_HEADER] for r in hook.requests} == {"j1"}


@pytest.mark.parametrize("status", [400, 401, 404, 410, 301, 302, 307])
def test_deliver_stops_at_once_on_a_permanent_answer_and_never_follows_redirects(
        receivers: list[HttpReceiver], status: int) -> None:
    hook = receiver(receivers, [status, 200])
    outcome = _deliver(f"{hook.url}/h")
    assert not outcome.delivered and outcome.attempts == 1 and hook.count == 1
    assert outcome.error is not None and f"HTTP {status}" in outcome.error and "not retried" in outcome.error


def test_deliver_gives_up_after_the_policy_attempts(receivers: list[HttpReceiver]) -> None:
    hook = receiver(receivers, [500])
    outcome = _deliver(f"{hook.url}/h", RetryPolicy(attempts=3, backoff_s=0.01))
    assert (outcome.delivered, outcome.attempts, hook.count) == (False, 3, 3)
    assert outcome.error is not None and "HTTP 500" in outcome.error


def test_deliver_to_a_closed_port_gives_up_quickly() -> None:
    t0 = time.monotonic()
    outcome = _deliver(f"http://127.0.0.1:{free_port()}/h")  # connection refused, 4 times
    assert not outcome.delivered and outcome.attempts == 4
    assert time.monotonic() - t0 < 5


# --- where a callback may go ---------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",  # metadata, link-local
    "100.64.0.1", "100.100.100.200",  # carrier-grade NAT (a cloud metadata address is in it)
    "0.0.0.0", "224.0.0.1", "240.0.0.1", "192.0.0.8", "198.18.0.1",
    "::1", "::", "fe80::1", "fd00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:100.64.0.1",  # IPv4-mapped
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of 127.0.0.1 and 169.254.169.254
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(address)
    dns = FakeDNS({"hooks.example": [address]})
    with pytest.raises(InvalidInput, match=r"non-public address.*INFERLANE_JOBS_CALLBACK_ALLOW_PRIVATE"):
        resolve_target("https://hooks.example/h", allow_private=False, resolver=dns)


def test_one_non_public_address_among_public_ones_is_enough_to_refuse() -> None:
    dns = FakeDNS({"hooks.example": ["8.8.8.8", "2001:4860:4860::8888", "10.0.0.5"]})
    with pytest.raises(InvalidInput, match=r"10\.0\.0\.5"):
        resolve_target("http://hooks.example/h", allow_private=False, resolver=dns)


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed_and_become_the_connection_address(address: str) -> None:
    target = resolve_target("https://hooks.example:8443/h?x=1",
                            allow_private=False, resolver=FakeDNS({"hooks.example": [address]}))
    assert target.address == address
    assert target.connect_url.host == address and target.connect_url.port == 8443
    assert target.host_header == "hooks.example:8443" and target.server_name == "hooks.example"


def test_an_international_name_is_resolved_as_the_client_connects_to_it() -> None:
    # IDNA 2003 maps ß to "ss"; IDNA 2008 (what httpx sends) keeps it: the check must ask the
    # same name the connection uses.
    dns = FakeDNS({"xn--strae-oqa.example": ["8.8.8.8"], "strasse.example": ["10.0.0.1"]})
    target = resolve_target("http://straße.example/h", allow_private=False, resolver=dns)
    assert dns.asked == [("xn--strae-oqa.example", 80)]
    assert target.host_header == "xn--strae-oqa.example" and target.address == "8.8.8.8"


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://hooks.example/h", "http"), ("http:///nohost", "http"), ("file:///etc/passwd", "http"),
    ("http://user:pw@hooks.example/h", "credentials"), ("http://hooks.example/" + "a" * 3000, "2048"),
    ("http://[::1/h", "not a valid URL"), ("http://nowhere.invalid/h", "does not resolve"),
])
def test_malformed_targets_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        resolve_target(url, allow_private=True, resolver=FakeDNS({"hooks.example": ["8.8.8.8"]}))


def test_the_request_goes_to_the_checked_address_with_the_original_host(receivers: list[HttpReceiver]) -> None:
    """A name only our resolver knows: if the client resolved it again itself (a second lookup a
    rebinding DNS server could answer differently), the delivery could not happen at all."""
    hook = receiver(receivers, [500, 200])
    port = int(hook.url.rsplit(":", 1)[1])
    dns = FakeDNS({"hooks.example": [LOOPBACK]})
    outcome = _deliver(f"http://hooks.example:{port}/h", resolver=dns)
    assert outcome == Delivery(delivered=True, attempts=2)
    assert dns.asked == [("hooks.example", port)] * 2  # resolved and checked once per attempt
    assert [r.headers["Host"] for r in hook.requests] == [f"hooks.example:{port}"] * 2
    assert all(signed_ok(r.headers[SIGNATURE_HEADER], r.body, f"http://hooks.example:{port}/h", "j1")
               for r in hook.requests)


def test_a_name_that_moves_to_a_private_address_is_refused_at_delivery(receivers: list[HttpReceiver]) -> None:
    hook = receiver(receivers, [200])
    port = int(hook.url.rsplit(":", 1)[1])
    outcome = _deliver(f"http://hooks.example:{port}/h", allow_private=False,
                       resolver=FakeDNS({"hooks.example": [LOOPBACK]}))
    assert not outcome.delivered and outcome.attempts == 0 and hook.count == 0
    assert outcome.error is not None and "non-public address" in outcome.error


# --- what a receiver can cost --------------------------------------------------------------------

class RawReceiver:
    """A loopback TCP server that answers every connection with ``script(conn)``."""

    def __init__(self, script: object) -> None:
        self.sock = socket.create_server((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = threading.Event()
        self._script = script
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)  # the request (small: one JSON line)
            self._script(conn, self.closed)  # type: ignore[operator]
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


def endless_body(status: int) -> object:
    def script(conn: socket.socket, closed: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 100000000000\r\n\r\n".encode())
        while not closed.is_set():
            conn.sendall(b"x" * 65536)
    return script


def trickled_headers(conn: socket.socket, closed: threading.Event) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
        if closed.wait(0.1):
            return
        conn.sendall(bytes([byte]))


def test_an_endless_2xx_answer_is_delivered_without_reading_its_body() -> None:
    r = RawReceiver(endless_body(200))
    try:
        t0 = time.monotonic()
        assert _deliver(f"http://127.0.0.1:{r.port}/h", timeout_s=5) == Delivery(delivered=True, attempts=1)
        assert time.monotonic() - t0 < 2
    finally:
        r.close()


def test_an_endless_error_answer_is_read_only_a_few_kib() -> None:
    r = RawReceiver(endless_body(500))
    try:
        t0 = time.monotonic()
        outcome = _deliver(f"http://127.0.0.1:{r.port}/h", RetryPolicy(attempts=2, backoff_s=0.01), timeout_s=5)
        assert (outcome.delivered, outcome.attempts, r.connections) == (False, 2, 2)
        assert outcome.error is not None and "HTTP 500: xxx" in outcome.error
        assert len(outcome.error) < MAX_ANSWER_BYTES
        assert time.monotonic() - t0 < 3  # neither attempt waited for the body to end
    finally:
        r.close()


def test_a_receiver_that_trickles_its_answer_costs_one_deadline_per_attempt() -> None:
    r = RawReceiver(trickled_headers)
    try:
        t0 = time.monotonic()
        outcome = _deliver(f"http://127.0.0.1:{r.port}/h", RetryPolicy(attempts=2, backoff_s=0.01), timeout_s=0.5)
        took = time.monotonic() - t0
        assert (outcome.delivered, outcome.attempts) == (False, 2)
        assert outcome.error is not None and "no answer within 0.5 s" in outcome.error
        assert 1.0 <= took < 2.5
    finally:
        r.close()


# --- signatures ----------------------------------------------------------------------------------

def test_a_signature_binds_the_url_the_job_and_the_time() -> None:
    url, now = "https://hooks.example/jobs", 1_800_000_000
    header = sign(SECRET, BODY, url=url, job_id="j1", timestamp=now)
    assert verify_signature(SECRET, header, BODY, url=url, job_id="j1", now=now + 299)
    assert not verify_signature(SECRET, header, BODY, url=url, job_id="j1", now=now + 301)  # replayed late
    assert not verify_signature(SECRET, header, BODY, url="https://other.example/jobs", job_id="j1", now=now)
    assert not verify_signature(SECRET, header, BODY, url=url, job_id="j2", now=now)
    assert not verify_signature(SECRET, header, BODY + b" ", url=url, job_id="j1", now=now)
    assert not verify_signature(b"another secret", header, BODY, url=url, job_id="j1", now=now)
    for garbage in ("", "t=x,v1=00", "v1=00", "t=1", "nonsense"):
        assert not verify_signature(SECRET, garbage, BODY, url=url, job_id="j1", now=now)


def test_the_documented_receiver_check_accepts_our_signatures_and_refuses_replays() -> None:
    """The verification snippet in docs/jobs.md, run as written."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "jobs.md").read_text()
    code = doc.split("def verify(secret: bytes", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec("import hashlib, hmac, time\ndef verify(secret: bytes" + code, namespace)
    verify = namespace["verify"]
    url = "https://hooks.example/jobs?team=a"
    header = sign(SECRET, BODY, url=url, job_id="j1")
    assert verify(SECRET, header, BODY, url, "j1") is True  # type: ignore[operator]
    assert verify(SECRET, header, BODY, "https://hooks.example/other", "j1") is False  # type: ignore[operator]
    assert verify(SECRET, header, BODY, url, "j2") is False  # type: ignore[operator]
    old = sign(SECRET, BODY, url=url, job_id="j1", timestamp=int(time.time()) - 600)
    assert verify(SECRET, old, BODY, url, "j1") is False  # type: ignore[operator]
    assert verify(SECRET, "garbage", BODY, url, "j1") is False  # type: ignore[operator]
