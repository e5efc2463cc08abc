"""One parser per kind of URL, each with one rule, used by every lane and store.

    sqlite_url("sqlite:///out/scores.db?table=t")     # SqliteURL(path=Path("out/scores.db"), params={"table": "t"})
    postgres_url("postgresql://app@db/scores?table=t") # PostgresURL(dsn="postgresql://app@db/scores", ...)
    redis_url("redis://:pw@cache:6379/2/events")       # RedisURL(host, port=6379, db=2, name="events", ...)
    kafka_url("kafka://b1:9092,b2:9092/tx?acks=all")   # KafkaURL(bootstrap="b1:9092,b2:9092", names=["tx"], ...)

S3 URIs are opened by ``core/uri.py`` (``filesystem_for``). Every parser raises ConfigError naming
``flag`` (the option the URL came from) and the accepted form.

Rules:

- SQLite: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's form).
- PostgreSQL: a libpq URL, ``postgresql://`` or ``postgres://``; inferlane's own query parameters
  (``table``) are taken out, the rest stays in the DSN (``sslmode=...``).
- Redis: ``redis://[user:password@]host[:port][/db][/name][?db=N&...]`` (``rediss://`` for TLS). A
  numeric first path segment is the database number; what follows it is a name (a stream, a key
  prefix). ``?db=N`` works as well; both at once must agree. A stream named like a number needs
  the database first: ``redis://host/0/42``.
- Kafka: ``kafka://host:port[,host:port]/name[,name]?<librdkafka setting>=<value>``.
- Key-value store (hybrid lane): ``store://NAME`` (the embedded SQLite store, namespace NAME) or a
  Redis URL with ``?prefix=NAME`` and no stream name (keys ``NAME:<key>``). NAME:
  ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlsplit, urlunparse

from inferlane.core.errors import ConfigError


def _params(query: str) -> dict[str, str]:
    return dict(parse_qsl(query, keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class SqliteURL:
    path: Path
    params: dict[str, str] = field(default_factory=dict)


def sqlite_url(url: str, flag: str) -> SqliteURL:
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"{flag} {redact(url)}: write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    rest, _, query = url[len("sqlite:///"):].partition("?")
    if not rest or rest.endswith("/"):
        raise ConfigError(f"{flag} {redact(url)}: names no file; write sqlite:///path/to/file.db")
    return SqliteURL(Path(unquote(rest)), _params(query))


@dataclass(frozen=True, slots=True)
class PostgresURL:
    dsn: str
    """The libpq URL without inferlane's own parameters."""
    params: dict[str, str] = field(default_factory=dict)
    """inferlane's own parameters taken out of the query (``table``)."""


def postgres_url(url: str, flag: str, own: tuple[str, ...] = ("table",)) -> PostgresURL:
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"{flag} {redact(url)}: write postgresql://user@host:port/database")
    query = parse_qsl(parsed.query, keep_blank_values=True)
    mine = {k: v for k, v in query if k in own}
    dsn = urlunparse(parsed._replace(query=urlencode([(k, v) for k, v in query if k not in own])))
    return PostgresURL(dsn, mine)


@dataclass(frozen=True, slots=True)
class RedisURL:
    host: str
    port: int
    db: int
    name: str | None
    """What follows the database in the path: a stream or a key prefix (None when absent)."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    params: dict[str, str] = field(default_factory=dict)
    """Other query parameters, for the caller (``field=``, ``maxlen=``, ``prefix=``)."""

    @property
    def address(self) -> str:
        """``host:port/db``, for messages (never the password)."""
        return f"{self.host}:{self.port}/{self.db}"

    def client(self, **kwargs: Any) -> Any:
        """A redis-py client (the ``redis`` extra); ``kwargs`` override the timeouts.

        redis-py's own retries are off: a command that fails raises, and the caller applies the one
        retry rule (core/retry.py). A hidden retry would re-send commands that are not idempotent
        (XREADGROUP hands out new entries each time: the first reply, lost with the connection,
        would leave its entries pending and unseen), and would hide outages from readiness."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {"socket_connect_timeout": 5.0, "socket_timeout": 30.0,
                                   "health_check_interval": 30, "retry": Retry(NoBackoff(), 0), **kwargs}
        return redis.Redis(host=self.host, port=self.port, db=self.db, username=self.username,
                           password=self.password, ssl=self.tls, **options)


def redis_url(url: str, flag: str, *, name: str = "forbidden") -> RedisURL:
    """``name``: "required" (a stream), "optional" (a key prefix) or "forbidden" (a database only)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ConfigError(f"{flag} {redact(url)}: write redis://host:port/db"
                          + ("/name" if name != "forbidden" else ""))
    try:
        port = parsed.port or 6379
    except ValueError:
        raise ConfigError(f"{flag} {redact(url)}: the port is not a number") from None
    params = _params(parsed.query)
    parts = [unquote(p) for p in parsed.path.split("/") if p]
    db: int | None = None
    if parts and parts[0].isdigit():
        db = int(parts.pop(0))
    if "db" in params:
        raw = params.pop("db")
        if not raw.isdigit():
            raise ConfigError(f"{flag} {redact(url)}: db={raw} is not a database number")
        if db is not None and db != int(raw):
            raise ConfigError(f"{flag} {redact(url)}: the database is {db} in the path and {raw} in ?db=")
        db = int(raw)
    rest = "/".join(parts) or None
    if name == "required" and rest is None:
        raise ConfigError(f"{flag} {redact(url)}: name the stream, e.g. redis://host:port/0/events")
    if name == "forbidden" and rest is not None:
        raise ConfigError(f"{flag} {redact(url)}: the path is the database number, e.g. redis://host:port/0")
    return RedisURL(parsed.hostname, port, db or 0, rest,
                    unquote(parsed.username) if parsed.username else None,
                    unquote(parsed.password) if parsed.password else None,
                    parsed.scheme == "rediss", params)


@dataclass(frozen=True, slots=True)
class KafkaURL:
    bootstrap: str
    names: list[str]
    """Topics."""
    settings: dict[str, str] = field(default_factory=dict)
    """librdkafka settings from the query."""


def kafka_url(url: str, flag: str) -> KafkaURL:
    parsed = urlparse(url)
    names = [unquote(n) for n in parsed.path.strip("/").split(",") if n]
    if parsed.scheme != "kafka" or not parsed.hostname or not names:
        raise ConfigError(f"{flag} {redact(url)}: write kafka://host:port/topic")
    return KafkaURL(parsed.netloc.rsplit("@", 1)[-1], names, _params(parsed.query))


STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A key-value store's namespace or key prefix: no ``:`` or ``#``, so no two names' keys collide."""


@dataclass(frozen=True, slots=True)
class StoreURL:
    name: str
    """The namespace (``store://NAME``) or the key prefix (``?prefix=NAME``)."""
    redis: RedisURL | None = None
    """The Redis server; None for the embedded SQLite store."""


def store_url(url: str, flag: str) -> StoreURL:
    """``store://NAME`` or ``redis(s)://host:port/db?prefix=NAME``."""
    s = scheme(url)
    target: RedisURL | None = None
    if s == "store":
        parsed = urlsplit(url)
        name = parsed.netloc
        if parsed.path or "?" in url or "#" in url:
            raise ConfigError(f"{flag} {redact(url)}: write store://NAME (nothing after the name)")
    elif s in ("redis", "rediss"):
        target = redis_url(url, flag, name="optional")
        if target.name is not None:
            raise ConfigError(f"{flag} {redact(url)}: a key-value store names its keys with ?prefix=, not a "
                              f"path ({target.name!r} would be a stream); write redis://host:port/db?prefix=NAME")
        params = dict(target.params)
        name = params.pop("prefix", "")
        if params:
            raise ConfigError(f"{flag} {redact(url)}: unknown parameter(s) {', '.join(sorted(params))}; "
                              "write redis://host:port/db?prefix=NAME")
    else:
        raise ConfigError(f"{flag} {redact(url)}: write store://NAME or redis://host:port/db?prefix=NAME")
    if not STORE_NAME.fullmatch(name):
        raise ConfigError(f"{flag} {redact(url)}: the name {name[:140]!r} must be 1 to 128 letters, digits, "
                          "'_', '.' or '-', starting with a letter or digit")
    return StoreURL(name, target)


def scheme(url: str) -> str:
    """The URL's scheme, lower case ('' for a plain path)."""
    s = urlparse(url).scheme.lower()
    return "" if len(s) == 1 else s  # a Windows drive letter is a path


_SECRET_NAMES = ("password", "secret", "token")
"""A query parameter whose name contains one of these (``sasl.password``, ``ssl.key.password``,
``sasl.oauthbearer.client.secret``) is a credential."""

_SECRETS_IN_TEXT = re.compile(r"(?i)(://[^\s:/@]*:)[^\s@/]+(@)"
                              r"|([\w.]*(?:password|secret|token)[\w.]*[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;)]+")


def redact(url: str) -> str:
    """``url`` without its password or any secret query parameter, for log lines and messages."""
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if any(s in parts.query.lower() for s in _SECRET_NAMES):
        query = [(k, "***" if any(s in k.lower() for s in _SECRET_NAMES) else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()


def redact_text(text: str) -> str:
    """``text`` (an error message from a library) with URL passwords and ``password=...``-like
    settings masked."""
    return _SECRETS_IN_TEXT.sub(lambda m: f"{m[1]}***{m[2]}" if m[1] else f"{m[3]}***", text)
