"""What the table outputs promise, and the durable-file helpers they share.

- :class:`RowWriter` (stream lane, and anything appending scored rows): ``write`` returns once the
  rows are durable; databases upsert them on the key, so a re-delivered row overwrites itself;
  a folder gets one more part.
- :class:`ShardSink` (batch lane): ``commit`` makes one shard's rows and rejects durable and records
  the shard as finished, atomically, so a killed job re-run with the same id writes exactly the
  same rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa


class RowWriter(Protocol):
    description: str

    def write(self, table: pa.Table) -> None:
        """Make the rows durable (upserted on the key where the output has one)."""
        ...

    def close(self) -> None: ...


class ShardSink(Protocol):
    description: str

    def finished_shards(self) -> dict[str, dict[str, Any]]:
        """Shard id → its manifest record, for shards already committed by this job."""
        ...

    def commit(self, shard_id: str, table: pa.Table, rejects: list[dict[str, Any]]) -> None:
        """Make the shard's rows and rejects durable, then record the shard as finished."""
        ...

    def write_report(self, report: dict[str, Any]) -> str:
        """Store the final report; returns where."""
        ...

    def close(self) -> None: ...


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then fsync and rename over ``path``: readers see the old file or the new one."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a write that failed (a full disk) gives its space back
        raise
    os.replace(tmp, path)


def write_report_beside(rejects_dir: Path, job_id: str, report: dict[str, Any]) -> str:
    """A database or key-value output's job report: ``<job_id>-report.json`` next to its rejects folder."""
    import orjson

    rejects_dir.mkdir(parents=True, exist_ok=True)
    path = rejects_dir.with_name(f"{job_id}-report.json")
    atomic_write(path, lambda p: p.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2)))
    return str(path)


def write_jsonl(path: Path, records: list[bytes]) -> None:
    atomic_write(path, lambda p: p.write_bytes(b"".join(r + b"\n" for r in records)))
