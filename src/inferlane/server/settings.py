"""Server settings: flags on the command line, or ``INFERLANE_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inferlane.core.errors import ConfigError
from inferlane.core.state import state_dir
from inferlane.lanes.jobs import JobsSettings
from inferlane.lanes.jobs.lane import parse_s3_allow

ENV_PREFIX = "INFERLANE_"
MIN_ADMIN_TOKEN = 16


class ServerSettings(BaseModel):
    """
        settings = ServerSettings(model_repository=Path("models"), port=8000)
        settings = ServerSettings.from_env()   # INFERLANE_MODEL_REPOSITORY, INFERLANE_PORT, ...
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_repository: Path
    """Folder of models: <repo>/<name>/model.yaml and <repo>/<name>/<version>/<artifact>."""
    host: str = "127.0.0.1"
    """Address to listen on. Loopback by default: set 0.0.0.0 deliberately to expose the server."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    workers: int = Field(default=1, ge=1, le=256)
    """Server processes sharing the port; each loads every model."""
    log_level: str = Field(default="info", pattern="^(critical|error|warning|info|debug)$")
    """Logging level."""
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Longest a client may take to send a request body (408 past it)."""
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """Longest a client may take to send its request line and headers (408 past it)."""
    max_header_bytes: int = Field(default=32_768, ge=1024, le=16 * 1024 * 1024)
    """Largest request line and headers together, in bytes (431 past it)."""
    max_headers: int = Field(default=100, ge=8, le=10_000)
    """Most header fields in one request (431 past it)."""
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    """Most open connections per server process; requests on extra ones get 503 with Retry-After."""
    drain_max_bytes: int = Field(default=128 * 1024 * 1024, ge=0)
    """Most bytes of an unread request body dropped after answering it (e.g. 413), so that the client
    can read the answer; past it the connection is closed."""
    jobs_store: str = Field(default_factory=lambda: f"sqlite:///{state_dir() / 'jobs.db'}")
    """Job store: sqlite:///path.db (one machine) or redis://host:port/db (many workers, many hosts);
    default ``jobs.db`` in the state folder (``$INFERLANE_STATE_DIR``, else ``.inferlane``)."""
    jobs_workers: int = Field(default=4, ge=0, le=1024)
    """Jobs this server runs at once (0: accept jobs, leave running them to `inferlane jobs worker`)."""
    jobs_ttl_s: float = Field(default=86_400.0, gt=0)
    """How long finished jobs keep their results."""
    jobs_expire_interval_s: float = Field(default=30.0, gt=0)
    """How often workers turn finished jobs past their TTL into expired tombstones."""
    jobs_max_attempts: int = Field(default=3, ge=1, le=100)
    """Attempts before a job is dead-lettered (status failed)."""
    jobs_lease_s: float = Field(default=60.0, gt=0)
    """A worker silent for this long is presumed dead and its job runs again elsewhere."""
    jobs_retry_backoff_s: float = Field(default=1.0, ge=0)
    """First retry delay of a failed job attempt (doubles each attempt)."""
    jobs_results_uri: str = Field(default_factory=lambda: str(state_dir() / "results"))
    """Folder or s3:// prefix for results too large to keep inline; default ``results`` in the state folder."""
    jobs_local_root: Path | None = None
    """Folder that input_uri/output_uri local paths may use (unset: local paths refused)."""
    jobs_callback_secret: str | None = Field(default=None, repr=False)
    """HMAC-SHA256 key for the Inferlane-Signature header on callbacks."""
    jobs_callback_allow_private: bool = False
    """Allow callback URLs on loopback or private networks."""
    jobs_callback_concurrency: int = Field(default=16, ge=1, le=10_000)
    """Callbacks one process delivers at once."""
    jobs_s3_allow: str | None = None
    """Comma-separated s3://bucket/prefix that a job's input_uri and output_uri may name (unset: s3:// refused)."""
    api_keys: str | None = Field(default=None, repr=False)
    """API keys of the jobs API: TENANT:KEY entries (comma or newline separated), or a file of them."""
    jobs_open: bool = False
    """Serve the jobs API without API keys on a non-loopback address (anyone reaching it sees every job)."""
    s3_endpoint_url: str | None = None
    """Object-store endpoint for s3:// URIs (MinIO, Ceph, ...)."""
    graceful_timeout_s: float = Field(default=30.0, ge=0)
    """On SIGTERM: longest wait for in-flight requests before exiting."""
    admin_token: str | None = Field(default=None, repr=False)
    """Bearer token of the admin API (/v2/admin: hot load, rollouts), at least 16 characters; unset: the
    admin API is off and its paths answer 404."""
    rollout_store: str = Field(default_factory=lambda: f"sqlite:///{state_dir() / 'rollouts.db'}")
    """Rollout state (routes, steps, history): sqlite:///path.db (one machine) or redis://host:port/db
    (several hosts); default ``rollouts.db`` in the state folder."""
    watch: bool = False
    """Watch the model repository and hot-load new version folders (they get no traffic until a route
    or a rollout names them)."""
    watch_interval_s: float = Field(default=2.0, gt=0, le=3600)
    """How often ``watch`` looks for new version folders."""

    @field_validator("admin_token")
    @classmethod
    def _admin_token_length(cls, v: str | None) -> str | None:
        if v is not None and len(v.strip()) < MIN_ADMIN_TOKEN:
            raise ValueError(f"INFERLANE_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters "
                             "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        return v.strip() if v is not None else None

    @classmethod
    def from_env(cls, **overrides: object) -> ServerSettings:
        values: dict[str, object] = {}
        for field in cls.model_fields:
            raw = os.environ.get(ENV_PREFIX + field.upper())
            if raw is not None:
                values[field] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ConfigError(f"invalid server settings: {problems}") from e

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + k.upper(): str(v) for k, v in self.model_dump().items() if v is not None}

    def jobs_settings(self) -> JobsSettings:
        return JobsSettings(
            lease_s=self.jobs_lease_s, ttl_s=self.jobs_ttl_s, expire_interval_s=self.jobs_expire_interval_s,
            max_attempts=self.jobs_max_attempts,
            retry_backoff_s=self.jobs_retry_backoff_s, results_uri=self.jobs_results_uri,
            local_root=self.jobs_local_root, endpoint_url=self.s3_endpoint_url,
            callback_secret=self.jobs_callback_secret.encode() if self.jobs_callback_secret else None,
            callback_allow_private=self.jobs_callback_allow_private, workers=self.jobs_workers,
            callback_concurrency=self.jobs_callback_concurrency, s3_allow=parse_s3_allow(self.jobs_s3_allow))
