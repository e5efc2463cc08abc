"""Job outcome callbacks: validated targets, HMAC-signed bodies, retries by the one retry policy.

    delivered = await deliver(url, body, secret, policy=RetryPolicy(attempts=6, backoff_s=0.5),
                              allow_private=False)

What is retried is the rule of ``core/retry.py``: connection errors and timeouts, and answers a
later try may change (HTTP 5xx and 429, raised as :class:`~inferlane.core.errors.Unavailable`).
Any other answer that is not 2xx (a 4xx, a redirect) is the receiver refusing this body: it is
logged once and never sent again.

The receiver checks ``Inferlane-Signature: t=<unix seconds>,v1=<hex>`` where ``v1`` is
HMAC-SHA256(secret, f"{t}.{body}"), and rejects old timestamps to stop replays::

    t, v1 = (kv.split("=", 1)[1] for kv in header.split(","))
    ok = hmac.compare_digest(v1, hmac.new(secret, f"{t}.".encode() + body, "sha256").hexdigest())
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from urllib.parse import urlparse

from inferlane.core.errors import InferlaneError, InvalidInput, RetriesExhausted, Unavailable
from inferlane.core.retry import RetryPolicy

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "Inferlane-Signature"


def sign(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _private(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast
            or ip.is_unspecified)


def validate_callback_url(url: str, allow_private: bool) -> None:
    """Refuse URLs that are not http(s) or that resolve to loopback, private, link-local or
    reserved addresses (unless allowed): a callback must not reach into the server's network."""
    if len(url) > 2048:
        raise InvalidInput("callback_url is longer than 2048 characters")
    p = urlparse(url)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise InvalidInput(f"callback_url must be an http(s) URL with a host, not {url[:100]!r}")
    if p.username or p.password:
        raise InvalidInput("callback_url must not carry credentials")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(p.hostname, p.port or (443 if p.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidInput(f"callback_url host {p.hostname!r} does not resolve: {e}") from None
    bad = sorted({str(i[4][0]) for i in infos if _private(str(i[4][0]))})
    if bad:
        raise InvalidInput(f"callback_url host {p.hostname!r} resolves to a loopback or private address "
                           f"({', '.join(bad)}); allowed only when the server sets callback_allow_private")


class CallbackRefused(InferlaneError):
    """The receiver answered with a status a retry cannot change (a 4xx other than 429, a 3xx)."""


def _raise_for_status(status: int) -> None:
    """Nothing for a 2xx; Unavailable (transient) for 5xx and 429; CallbackRefused otherwise."""
    if 200 <= status < 300:
        return
    if status >= 500 or status == 429:
        raise Unavailable(f"the receiver answered HTTP {status}")
    raise CallbackRefused(f"the receiver answered HTTP {status}")


async def deliver(url: str, body: bytes, secret: bytes | None, *, policy: RetryPolicy, allow_private: bool,
                  timeout_s: float = 10.0) -> bool:
    """POST ``body`` until a 2xx answer, retrying what ``policy`` says is transient; True when delivered.

    Never raises: an undelivered callback is logged (the job's state in the store is the record)."""
    import httpx

    async def post() -> None:
        # Checked again at delivery: the name may resolve elsewhere now (DNS rebinding).
        await asyncio.to_thread(validate_callback_url, url, allow_private)
        headers = {"Content-Type": "application/json", "User-Agent": "inferlane-callback"}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)  # signed per attempt: a fresh timestamp
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
            r = await client.post(url, content=body, headers=headers)
        _raise_for_status(r.status_code)

    try:
        await policy.acall(post, what=f"callback to {url}")
    except InvalidInput as e:
        log.warning("callback to %s refused: %s", url, e.message)
        return False
    except RetriesExhausted as e:
        log.warning("callback to %s not delivered: %s", url, e.message)
        return False
    except Exception as e:  # permanent: CallbackRefused, or an httpx error no retry can fix
        log.warning("callback to %s not delivered (not retried): %s: %s", url, type(e).__name__, e)
        return False
    return True
