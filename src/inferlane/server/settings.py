"""Server settings: flags on the command line, or ``INFERLANE_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferlane.core.errors import ConfigError

ENV_PREFIX = "INFERLANE_"


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
    graceful_timeout_s: float = Field(default=30.0, ge=0)
    """On SIGTERM: longest wait for in-flight requests before exiting."""

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
        return {ENV_PREFIX + k.upper(): str(v) for k, v in self.model_dump().items()}
