"""Server settings: flags on the command line, or ``INFERLANE_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inferlane.core.errors import ConfigError
from inferlane.core.state import state_dir
from inferlane.lanes.jobs import JobsSettings
from inferlane.lanes.jobs.lane import parse_s3_allow

ENV_PREFIX = "INFERLANE_"
MIN_ADMIN_TOKEN = 16
SAGEMAKER_PORT = 8080
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
SAGEMAKER_ON = frozenset({"true", "1", "yes", "on"})


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
    target_queue: int = Field(default=20, ge=1, le=1_000_000)
    """Load one replica should carry (requests waiting plus batches running): the divisor of the
    ``inferlane_desired_replicas`` gauge and the scale-up threshold of ``--replicas`` (docs/scaling.md)."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT and listen only once every model has loaded and warmed up, so that the
    kernel sends no connection to a cold process (set by ``--replicas`` on its replicas)."""
    log_level: str = Field(default="info", pattern="^(critical|error|warning|info|debug)$")
    """Logging level."""
    log_format: Literal["text", "json"] = "text"
    """``text`` for people; ``json``: one JSON object per line (ts, level, logger, msg, fields), and one line
    per model request with its id, model, version, lane, status and durations (docs/dashboard.md)."""
    otlp_endpoint: str | None = None
    """OpenTelemetry traces: the OTLP/HTTP traces URL (``http://collector:4318/v1/traces``); unset, the
    standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``; none: no traces.
    Needs the ``otel`` extra (docs/dashboard.md, "Traces")."""
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
    grpc_port: int = Field(default=0, ge=0, le=65535)
    """TCP port of the Open Inference Protocol V2 over gRPC (tritonclient.grpc and KServe clients), on the
    same host as HTTP; 0 (the default): no gRPC. Off unless asked, so that no second port opens
    unannounced; Triton's convention is 8001. Needs the ``grpc`` extra."""
    ssl_certfile: Path | None = None
    """PEM certificate (chain) for TLS on the HTTP and gRPC ports; with ``ssl_keyfile``."""
    ssl_keyfile: Path | None = Field(default=None, repr=False)
    """PEM private key of ``ssl_certfile``."""
    sagemaker: bool = False
    """The SageMaker container contract (``serve --sagemaker``, or the image's ``serve`` argument): GET /ping and
    POST /invocations beside /v2, and unless set otherwise host 0.0.0.0, port 8080 (``SAGEMAKER_BIND_TO_PORT``
    when SageMaker sets it) and the repository /opt/ml/model. The one case where the default host is not loopback:
    SageMaker reaches the container from outside it."""
    sagemaker_model: str | None = None
    """The model /invocations serves when the repository holds several (also ``SAGEMAKER_INFERLANE_MODEL``)."""

    @model_validator(mode="before")
    @classmethod
    def _sagemaker_defaults(cls, values: object) -> object:
        if not isinstance(values, dict) or str(values.get("sagemaker", "")).lower() not in SAGEMAKER_ON:
            return values
        defaults = {"host": "0.0.0.0", "port": os.environ.get("SAGEMAKER_BIND_TO_PORT") or SAGEMAKER_PORT,
                    "model_repository": SAGEMAKER_MODEL_DIR,
                    "sagemaker_model": os.environ.get("SAGEMAKER_INFERLANE_MODEL")}
        return {**{k: v for k, v in defaults.items() if v is not None}, **values}

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both --ssl-certfile and --ssl-keyfile (INFERLANE_SSL_CERTFILE, "
                             "INFERLANE_SSL_KEYFILE), or neither")
        for path in (self.ssl_certfile, self.ssl_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} not found (a PEM file is expected)")
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"grpc_port {self.grpc_port} is also the HTTP port: choose another")
        return self

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
