"""A folder of parts (Parquet, CSV or JSONL): each part written to a temp file, fsynced and renamed.

- :class:`PartsFolder` writes rows as new parts (:class:`~inferlane.store.tables.base.RowWriter`).
- :class:`FileShardSink` adds a batch job's identity, manifest and report in ``_inferlane/`` and
  rejects in ``_rejects/``. A shard's part has a deterministic name, ``part-<shard>.<ext>``, and
  enters the manifest only after it is durable: a crash between the rename and the manifest
  leaves a part that the re-run overwrites, never a duplicate.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from inferlane.core.errors import ConfigError
from inferlane.store.tables.arrow import flatten_lists
from inferlane.store.tables.base import atomic_write, fsync_dir, write_jsonl

META_DIR = "_inferlane"
REJECTS_DIR = "_rejects"
FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}


def _is_job_entry(path: Path) -> bool:
    """A file or folder an inferlane job writes into its output folder (never a link)."""
    if path.is_symlink():
        return False
    name = path.name
    if name in (META_DIR, REJECTS_DIR):
        return path.is_dir()
    return path.is_file() and (name.startswith(".tmp-part-")
                               or (name.startswith("part-") and name.rsplit(".", 1)[-1] in FORMATS))


def inspect_folder(folder: Path, job_id: str, fingerprint: str, *, overwrite: bool) -> dict[str, Any] | None:
    """Check, reading only, that a batch job may write into ``folder``: returns the job record found
    there (None for a missing or empty folder, or one ``overwrite`` will clear); raises ConfigError
    when the job may not. ``overwrite`` clears only a folder that holds nothing but one inferlane
    job's files (``_inferlane/job.json``, its manifest and report, ``_rejects/``, ``part-*``)."""
    job_file = folder / META_DIR / "job.json"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output {folder} is a file, not a folder")
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    if overwrite and entries:
        foreign = [p.name for p in entries if not _is_job_entry(p)]
        if foreign or not job_file.is_file():
            what = f"holds {foreign[0]!r}, which" if foreign else "holds no inferlane job's manifest, so it"
            raise ConfigError(f"--overwrite: {folder} {what} is not an inferlane job's output; refusing to "
                              "delete it (choose another --output, or empty it yourself)")
        return None
    if job_file.exists():
        job = orjson.loads(job_file.read_bytes())
        if job["job_id"] != job_id:
            raise ConfigError(f"{folder} holds the output of job {job['job_id']!r}; use another "
                              f"--output, the same --job-id to resume it, or --overwrite")
        if job["fingerprint"] != fingerprint:
            raise ConfigError(f"job {job_id!r}: the input files, --shard-rows or --limit changed since the "
                              f"job started (plan {job['fingerprint']} != {fingerprint}); use a new --job-id "
                              "or --overwrite")
        return dict(job)
    if any(p.name.startswith("part-") for p in entries):
        raise ConfigError(f"{folder} already holds parts from another tool or job; use an empty folder")
    return None


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Shard id → manifest record of the job in ``folder`` (reading only)."""
    done: dict[str, dict[str, Any]] = {}
    path = folder / META_DIR / "manifest.jsonl"
    if path.exists():
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):  # a torn last line is not a record
                rec = orjson.loads(line)
                done[rec["shard"]] = rec
    return done


def clear_job_folder(folder: Path) -> None:
    """Delete an inferlane job's files from ``folder`` (checked by :func:`inspect_folder` first)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


class PartsFolder:
    """Rows as part files in ``folder``; every write is durable when it returns."""

    def __init__(self, folder: Path, fmt: str = "parquet") -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
        self.folder = folder
        self.fmt = fmt
        self.ext = FORMATS[fmt]
        self.description = f"{fmt} folder {folder}"
        self._seq = 0
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".tmp-*"):  # a crash mid-write leaves these; they were never parts
            stale.unlink()

    def _write_table(self, table: pa.Table, path: Path) -> None:
        if self.fmt == "parquet":
            # snappy (pyarrow's default): several times faster to write than zstd; scoring
            # outputs are small next to their inputs.
            pq.write_table(table, path, compression="snappy")
        elif self.fmt == "csv":
            pacsv.write_csv(flatten_lists(table), path)
        else:
            path.write_bytes(b"".join(orjson.dumps(r, default=str) + b"\n" for r in table.to_pylist()))

    def write_part(self, name: str, table: pa.Table) -> Path:
        """Write ``part-<name>.<ext>`` atomically (replacing one of the same name)."""
        part = self.folder / f"part-{name}.{self.ext}"
        atomic_write(part, lambda p: self._write_table(table, p))
        fsync_dir(self.folder)
        return part

    def write(self, table: pa.Table) -> None:
        """One more part with a name of its own (the stream lane's micro-batches)."""
        self._seq += 1
        self.write_part(f"stream-{time.time_ns()}-{os.getpid()}-{self._seq}", table)

    def close(self) -> None:
        pass


class FileShardSink:
    """A batch job's output folder: parts, ``_inferlane/`` (job identity, manifest, report), ``_rejects/``."""

    def __init__(self, folder: Path, fmt: str, job_id: str, fingerprint: str, overwrite: bool = False) -> None:
        meta = folder / META_DIR
        job_file = meta / "job.json"
        inspect_folder(folder, job_id, fingerprint, overwrite=overwrite)
        if overwrite:
            clear_job_folder(folder)
        self.parts = PartsFolder(folder, fmt)
        self.folder = folder
        self.description = self.parts.description
        (folder / REJECTS_DIR).mkdir(parents=True, exist_ok=True)
        meta.mkdir(parents=True, exist_ok=True)
        if not job_file.exists():
            atomic_write(job_file, lambda p: p.write_bytes(orjson.dumps(
                {"job_id": job_id, "fingerprint": fingerprint, "format": fmt})))
            fsync_dir(meta)
        self._manifest_path = meta / "manifest.jsonl"
        self._manifest = open(self._manifest_path, "ab")  # noqa: SIM115 - kept open for appends

    def finished_shards(self) -> dict[str, dict[str, Any]]:
        return read_manifest(self.folder)

    def commit(self, shard_id: str, table: pa.Table, rejects: list[dict[str, Any]]) -> None:
        part = self.parts.write_part(shard_id, table)
        if rejects:
            write_jsonl(self.folder / REJECTS_DIR / f"part-{shard_id}.jsonl", [orjson.dumps(r) for r in rejects])
            fsync_dir(self.folder / REJECTS_DIR)
        rec = {"shard": shard_id, "rows": table.num_rows, "rejected": len(rejects),
               "file": part.name, "committed_at": time.time()}
        self._manifest.write(orjson.dumps(rec) + b"\n")
        self._manifest.flush()
        os.fsync(self._manifest.fileno())

    def write_report(self, report: dict[str, Any]) -> str:
        path = self.folder / META_DIR / "report.json"
        atomic_write(path, lambda p: p.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2)))
        return str(path)

    def close(self) -> None:
        self._manifest.close()
