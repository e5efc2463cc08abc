"""A materialization's settings and its report."""

from __future__ import annotations

from dataclasses import dataclass, field

MODEL = "features"
"""The model name of every materialized value (serving checks neither it nor the version)."""
MAX_FIELDS = 255
"""The most columns one value holds (codec.py)."""
REJECT_SAMPLES = 5
"""Rejected rows named in the report."""
SHARD_ROWS = 262_144
"""Rows of a file read at once (a Parquet shard follows row groups)."""


@dataclass(frozen=True, slots=True)
class Materialization:
    source: str
    """Files (Parquet, CSV, JSONL: a file, folder or glob, local or s3://) or a SQL table URL."""
    key: list[str]
    store: str
    """``store://NAME`` or ``redis://host:port/db?prefix=NAME``."""
    columns: list[str] | None = None
    """The feature columns (default: every numeric column but the key)."""
    ttl_s: float | None = None
    batch_rows: int = 65_536
    """Rows read and written at once."""
    input_format: str | None = None
    """Files: parquet, csv or jsonl (default: from each file's suffix)."""
    endpoint_url: str | None = None
    progress: bool = False


@dataclass(slots=True)
class MaterializeReport:
    source: str
    store: str
    columns: list[str] = field(default_factory=list)
    """The columns stored."""
    skipped_columns: dict[str, str] = field(default_factory=dict)
    """Column → why it was not stored."""
    rows_read: int = 0
    keys_written: int = 0
    keys_older: int = 0
    """Rows not written because the store held a newer value for the key."""
    rows_rejected: int = 0
    rejects: list[str] = field(default_factory=list)
    """The first REJECT_SAMPLES rejected rows: where and why."""
    duration_s: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.duration_s if self.duration_s else 0.0
