"""Who may see a job: API keys, each naming a tenant that owns the jobs it submits.

    keys = ApiKeys.parse("acme:3f9c0a...,umbrella:77d1e2...")   # or the path of a file of such lines
    tenant = keys.tenant_of(request.headers.get("authorization"))   # "acme", or Unauthenticated (401)

``INFERLANE_API_KEYS`` holds ``TENANT:KEY`` entries separated by commas or new lines (``#`` starts
a comment), or the path of a file holding them. A key is at least 16 characters. Clients send
``Authorization: Bearer KEY``. Keys are compared in constant time and never logged.

Without keys the jobs API is open (every job has the tenant ``""``), which is allowed only on a
loopback address unless ``INFERLANE_JOBS_OPEN`` says so (see :func:`check_open_access`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from inferlane.core.errors import ConfigError, Unauthenticated

log = logging.getLogger(__name__)

MIN_KEY_LENGTH = 16
_ENV = "INFERLANE_API_KEYS"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """API keys (kept only as SHA-256 digests) and the tenant each belongs to."""

    entries: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, value: str) -> ApiKeys:
        """Entries from ``value``, or from the file it names; ConfigError naming the line at fault."""
        text, where = value, _ENV
        stripped = value.strip()
        if stripped and ":" not in stripped.splitlines()[0].split("#", 1)[0]:
            try:
                text, where = Path(stripped).read_text(), f"{_ENV} file {stripped}"
            except OSError as e:
                # The value is not echoed: it may be a key written without its tenant.
                raise ConfigError(f"{_ENV} holds no TENANT:KEY entry and cannot read the key file it names: "
                                  f"{e.strerror or type(e).__name__}") from None
        entries: list[tuple[bytes, str]] = []
        seen: set[bytes] = set()
        for n, line in enumerate(text.replace(",", "\n").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            tenant, sep, key = (part.strip() for part in line.partition(":"))
            if not sep or not tenant or not key:
                raise ConfigError(f"{where}: entry {n} is not TENANT:KEY")
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigError(f"{where}: the key of tenant {tenant!r} is shorter than {MIN_KEY_LENGTH} "
                                  "characters")
            digest = _digest(key)
            if digest in seen:
                raise ConfigError(f"{where}: the key of tenant {tenant!r} is listed twice")
            seen.add(digest)
            entries.append((digest, tenant))
        if not entries:
            raise ConfigError(f"{where} holds no TENANT:KEY entry")
        return cls(tuple(entries))

    def tenant_of(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization: Bearer KEY`` header; Unauthenticated (401) otherwise."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("this server needs an API key: send Authorization: Bearer KEY")
        digest = _digest(key.strip())
        found = ""
        for known, tenant in self.entries:  # every entry is compared: the time does not depend on which matched
            if hmac.compare_digest(known, digest):
                found = tenant
        if not found:
            raise Unauthenticated("the API key is not valid")
        return found


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_open_access(keys: ApiKeys | None, host: str, allow_open: bool) -> None:
    """At start: with no API keys, refuse a non-loopback ``host`` unless ``allow_open``; log that
    the jobs API is open either way."""
    if keys is not None:
        log.info("jobs API: %d API key(s); each tenant sees only its own jobs", len(keys.entries))
        return
    if not _loopback(host) and not allow_open:
        raise ConfigError(f"no API keys for the jobs API on {host}: anyone who can reach it could read and "
                          f"cancel every job. Set {_ENV} (TENANT:KEY entries or a file of them), bind to "
                          "127.0.0.1, or set INFERLANE_JOBS_OPEN=true to serve jobs without keys")
    log.warning("jobs API is open: no %s set, so any client that can reach %s can read and cancel every job",
                _ENV, host)


__all__ = ["ApiKeys", "check_open_access"]
