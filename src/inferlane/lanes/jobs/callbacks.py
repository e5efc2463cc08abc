"""Job outcome callbacks: validated targets, HMAC-signed bodies, retries with backoff.

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
import random
import socket
import time
from urllib.parse import urlparse

from inferlane.core.errors import InvalidInput

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


async def deliver(url: str, body: bytes, secret: bytes | None, *, retries: int, backoff_s: float,
                  allow_private: bool) -> bool:
    """POST ``body`` until a 2xx answer or ``retries`` retries; True when delivered."""
    import httpx

    for attempt in range(retries + 1):
        try:
            # Checked again at delivery: the name may resolve elsewhere now (DNS rebinding).
            await asyncio.to_thread(validate_callback_url, url, allow_private)
            headers = {"Content-Type": "application/json", "User-Agent": "inferlane-callback"}
            if secret:
                headers[SIGNATURE_HEADER] = sign(secret, body)
            async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
                r = await client.post(url, content=body, headers=headers)
            if 200 <= r.status_code < 300:
                return True
            reason = f"HTTP {r.status_code}"
        except InvalidInput as e:
            log.warning("callback to %s refused: %s", url, e.message)
            return False
        except httpx.HTTPError as e:
            reason = f"{type(e).__name__}: {e}"
        if attempt < retries:
            delay = backoff_s * (2 ** attempt) * (0.5 + random.random())
            log.info("callback to %s failed (%s); retry %d/%d in %.2f s", url, reason, attempt + 1, retries, delay)
            await asyncio.sleep(delay)
    log.warning("callback to %s not delivered after %d attempts", url, retries + 1)
    return False
