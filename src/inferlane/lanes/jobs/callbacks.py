"""Job outcome callbacks: targets that cannot reach private networks, signed bodies, bounded deliveries.

    delivery = await deliver(url, body, secret, job_id=job.id, allow_private=False,
                             policy=RetryPolicy(attempts=6, backoff_s=0.5))
    delivery.delivered, delivery.attempts, delivery.error

**Where a callback may go.** A URL is parsed once, by httpx, the client that sends it: the host is
the IDNA 2008 form httpx would connect to (``straße.example`` is ``xn--strae-oqa.example``, not
the IDNA 2003 ``strasse.example``). The host is resolved once per attempt, every address it
resolves to must be globally routable (``ipaddress.is_global``; an IPv4-mapped or NAT64 IPv6
address is judged by the IPv4 address inside it), and the request is sent to that exact address,
with the original ``Host`` header and TLS server name, so a DNS answer that changes between the
check and the connection (DNS rebinding) cannot move it. Loopback, private, link-local,
carrier-grade NAT (100.64.0.0/10, which holds cloud metadata addresses), reserved and multicast
addresses are refused unless the server sets ``INFERLANE_JOBS_CALLBACK_ALLOW_PRIVATE=true``.
Redirects are never followed.

**What a receiver can cost.** Each attempt has one deadline for everything (resolving,
connecting, sending, the answer's headers); only the status line matters, and at most
:data:`MAX_ANSWER_BYTES` of a non-2xx answer's body are read, for the log. A receiver that
trickles or never ends its answer costs one attempt's deadline and a few KiB, no more.

**What is retried** is the rule of ``core/retry.py``: connection errors and timeouts, and answers a
later try may change (HTTP 5xx and 429, raised as :class:`~inferlane.core.errors.Unavailable`).
Any other answer that is not 2xx (a 4xx, a redirect) is the receiver refusing this body: it is
not sent again.

**Signatures.** With a secret configured, every attempt carries
``Inferlane-Signature: t=<unix seconds>,v1=<hex>`` where ``v1`` is
HMAC-SHA256(secret, ``f"{t}.{job_id}.{url}."`` + body), and ``Inferlane-Job-Id: <job id>``. The
target URL and the job id are signed, so a captured callback cannot be replayed to another
receiver or passed off as another job's; the timestamp lets a receiver refuse old ones. A
receiver verifies with :func:`verify_signature` (or the same few lines in any language), using
the URL it registered and a window of :data:`SIGNATURE_TOLERANCE_S` (5 minutes).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inferlane.core.errors import InferlaneError, InvalidInput, RetriesExhausted, Unavailable
from inferlane.core.retry import RetryPolicy

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Inferlane-Signature"
JOB_ID_HEADER = "Inferlane-Job-Id"
SIGNATURE_TOLERANCE_S = 300.0
"""How old a signature timestamp a receiver should accept (either way, for clock skew)."""
MAX_URL_LENGTH = 2048
MAX_ANSWER_BYTES = 4096
"""The most of a receiver's answer body that is ever read (and only of a non-2xx answer)."""
ALLOW_PRIVATE_ENV = "INFERLANE_JOBS_CALLBACK_ALLOW_PRIVATE"

Resolver = Callable[[str, int], Sequence[str]]
"""Host and port to the addresses to connect to (the default asks the system resolver)."""

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NOT_GLOBAL = (ipaddress.ip_network("192.0.0.0/24"),)
"""IETF protocol assignments, not routable, that older ``ipaddress`` versions call global."""


# --- signatures -------------------------------------------------------------------------------

def _mac(secret: bytes, t: int, job_id: str, url: str, body: bytes) -> str:
    return hmac.new(secret, f"{t}.{job_id}.{url}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, *, url: str, job_id: str, timestamp: int | None = None) -> str:
    """The ``Inferlane-Signature`` value for ``body`` sent to ``url`` about job ``job_id``."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, job_id, url, body)}"


def verify_signature(secret: bytes, header: str, body: bytes, *, url: str, job_id: str,
                     now: float | None = None, tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """True when ``header`` signs exactly this body, URL and job id, and its timestamp is within
    ``tolerance_s`` of ``now``. What a receiver runs on every callback::

        ok = verify_signature(SECRET, request.headers["Inferlane-Signature"], request.body,
                              url="https://hooks.example.com/jobs", job_id=request.headers["Inferlane-Job-Id"])
    """
    try:
        parts = dict(kv.split("=", 1) for kv in header.split(","))
        t = int(parts["t"])
        v1 = parts["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        return False
    return hmac.compare_digest(v1, _mac(secret, t, job_id, url, body))


# --- where a callback may go ------------------------------------------------------------------

def is_public_address(addr: str) -> bool:
    """Globally routable, judging an IPv4-mapped or NAT64 IPv6 address by the IPv4 address inside."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast and not any(ip in net for net in _NOT_GLOBAL)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (an IDNA-encoded name or an IP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: the URL to connect to (the host replaced by the checked address),
    and the ``Host`` header and TLS server name of the original URL."""

    url: str
    """The URL as given (what is signed and logged)."""
    connect_url: Any
    """``httpx.URL`` with the address in place of the host."""
    host_header: str
    server_name: str
    address: str


def _parse(url: str) -> Any:
    """The ``httpx.URL`` of an http(s) URL with a host and no credentials, or InvalidInput."""
    import httpx

    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"callback_url must be a string of at most {MAX_URL_LENGTH} characters")
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError, ValueError) as e:
        raise InvalidInput(f"callback_url is not a valid URL: {e}") from None
    if u.scheme not in ("http", "https") or not u.raw_host:
        raise InvalidInput(f"callback_url must be an http(s) URL with a host, not {url[:100]!r}")
    if u.userinfo:
        raise InvalidInput("callback_url must not carry credentials")
    return u


def resolve_target(url: str, allow_private: bool, resolver: Resolver = system_resolver) -> Target:
    """Check ``url`` and resolve its host once; raise InvalidInput when it may not be called back.

    Blocking (the resolver): call it from a thread on the event loop."""
    u = _parse(url)
    host = u.raw_host.decode("ascii")  # what httpx would connect to: IDNA 2008, lower case
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        addresses = list(resolver(host, port))
    except (OSError, UnicodeError) as e:
        raise InvalidInput(f"callback_url host {host!r} does not resolve: {e}") from None
    if not addresses:
        raise InvalidInput(f"callback_url host {host!r} does not resolve")
    if not allow_private:
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            raise InvalidInput(
                f"callback_url host {host!r} resolves to a non-public address ({', '.join(refused)}); "
                f"callbacks to loopback, private, link-local or shared networks need {ALLOW_PRIVATE_ENV}=true")
    address = addresses[0].split("%", 1)[0]
    default_port = u.port is None
    host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
    return Target(url=url, connect_url=u.copy_with(host=address), host_header=host_header,
                  server_name=host, address=address)


def validate_callback_url(url: str, allow_private: bool, resolver: Resolver = system_resolver) -> None:
    """At submit: refuse (InvalidInput, a 400) a URL no delivery could be made to. Blocking."""
    resolve_target(url, allow_private, resolver)


# --- delivery ---------------------------------------------------------------------------------

class CallbackRefused(InferlaneError):
    """The receiver answered with a status a retry cannot change (a 4xx other than 429, a 3xx)."""


def _raise_for_status(status: int, answer: bytes) -> None:
    """Nothing for a 2xx; Unavailable (transient) for 5xx and 429; CallbackRefused otherwise."""
    if 200 <= status < 300:
        return
    said = answer.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
    detail = f"the receiver answered HTTP {status}" + (f": {said}" if said else "")
    if status >= 500 or status == 429:
        raise Unavailable(detail)
    raise CallbackRefused(detail)


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one :func:`deliver` call."""

    delivered: bool
    attempts: int
    """HTTP attempts made in this call (0 when the URL was refused before any)."""
    error: str | None = None
    """Why it was not delivered (one line); None when delivered."""


async def _attempt(client: Any, target: Target, body: bytes, headers: dict[str, str]) -> None:
    """One POST to the checked address; raises what the retry rule judges."""
    extensions = {"sni_hostname": target.server_name} if target.connect_url.scheme == "https" else {}
    request = client.build_request("POST", target.connect_url, content=body,
                                   headers={**headers, "Host": target.host_header}, extensions=extensions)
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        answer = b""
        if not 200 <= response.status_code < 300:
            async for chunk in response.aiter_raw():
                answer += chunk
                if len(answer) >= MAX_ANSWER_BYTES:
                    break
        _raise_for_status(response.status_code, answer[:MAX_ANSWER_BYTES])
    finally:
        await response.aclose()


async def deliver(url: str, body: bytes, secret: bytes | None, *, job_id: str, policy: RetryPolicy,
                  allow_private: bool, timeout_s: float = 10.0,
                  resolver: Resolver = system_resolver, headers: dict[str, str] | None = None) -> Delivery:
    """POST ``body`` to ``url`` until a 2xx answer, retrying what ``policy`` says is transient.

    Never raises. Each attempt re-resolves and re-checks the host (a name may move between
    attempts) and has ``timeout_s`` for everything."""
    import httpx

    attempts = 0
    base = {"Content-Type": "application/json", "User-Agent": "inferlane-callback", JOB_ID_HEADER: job_id,
            **(headers or {})}

    async def post() -> None:
        nonlocal attempts
        target = await asyncio.to_thread(resolve_target, url, allow_private, resolver)
        sent = dict(base)
        if secret:
            sent[SIGNATURE_HEADER] = sign(secret, body, url=url, job_id=job_id)  # fresh timestamp
        attempts += 1
        try:
            async with asyncio.timeout(timeout_s):
                async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
                    await _attempt(client, target, body, sent)
        except TimeoutError:
            raise Unavailable(f"no answer within {timeout_s:g} s") from None

    try:
        await policy.acall(post, what=f"callback of job {job_id}")
    except InvalidInput as e:
        return _failed(url, attempts, f"refused: {e.message}")
    except RetriesExhausted as e:
        return _failed(url, attempts, e.message)
    except InferlaneError as e:  # CallbackRefused: a retry cannot change it
        return _failed(url, attempts, f"{e.message} (not retried)")
    except Exception as e:  # an httpx error no retry can fix (e.g. a TLS certificate refused)
        return _failed(url, attempts, f"{type(e).__name__}: {e} (not retried)")
    return Delivery(delivered=True, attempts=attempts)


def _failed(url: str, attempts: int, error: str) -> Delivery:
    log.warning("callback to %s not delivered after %d attempt(s): %s", url, attempts, error)
    return Delivery(delivered=False, attempts=attempts, error=error)
