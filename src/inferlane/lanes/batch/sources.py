"""Batch inputs: resolve files (local or object store), plan shards, read a shard.

A shard is a row range of one file. Parquet shards follow row-group boundaries so a shard is
read without touching the rest of the file; CSV and JSONL shards are row ranges found by one
counting pass. The plan is deterministic for the same input files, so a re-run of a job
finds the same shards.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from inferlane.core.errors import ConfigError

Format = Literal["parquet", "csv", "jsonl"]
_SUFFIXES: dict[str, Format] = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
                                ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True, slots=True)
class InputFile:
    path: str
    """Path inside its filesystem (no scheme)."""
    size: int
    mtime_ns: int
    format: Format


@dataclass(frozen=True, slots=True)
class Shard:
    """Rows [start, stop) of one file."""

    id: str
    file: InputFile
    start: int
    stop: int
    row_groups: tuple[int, ...] = ()
    """Parquet row groups covering the range (first group starts at ``start``)."""
    byte_start: int = 0
    """CSV/JSONL: offset of the shard's first line."""
    byte_stop: int = 0
    """CSV/JSONL: offset just past the shard's last line."""

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["row_groups"] = list(self.row_groups)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shard:
        return cls(d["id"], InputFile(**d["file"]), d["start"], d["stop"], tuple(d["row_groups"]),
                   d["byte_start"], d["byte_stop"])


def _format_of(path: str, forced: Format | None) -> Format | None:
    if forced:
        return forced
    return _SUFFIXES.get(posixpath.splitext(path)[1].lower())


def list_inputs(uri: str, fs: pafs.FileSystem, path: str, forced: Format | None = None) -> list[InputFile]:
    """One file, every data file in a folder (recursively), or a glob (``*`` ``?`` ``[]``)."""
    if any(c in path for c in "*?["):
        base = path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        infos = [i for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ConfigError(f"{uri}: input not found")
        if info.type == pafs.FileType.Directory:
            infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                     if i.type == pafs.FileType.File]
        else:
            infos = [info]
    files = []
    for i in sorted(infos, key=lambda i: i.path):
        name = posixpath.basename(i.path)
        if name.startswith((".", "_")):
            continue
        fmt = _format_of(i.path, forced)
        if fmt is None:
            continue
        files.append(InputFile(i.path, int(i.size or 0), int(i.mtime_ns or 0), fmt))
    if not files:
        raise ConfigError(f"{uri}: no Parquet, CSV or JSONL files found")
    return files


def _line_offsets(fs: pafs.FileSystem, f: InputFile, every: int, skip_header: bool) -> tuple[list[int], int]:
    """(byte offsets where data lines 0, every, 2*every, ... begin, then the file's size;
    the number of data lines)."""
    starts = [np.zeros(1, dtype=np.int64)]
    pos = 0
    with fs.open_input_stream(f.path) as s:
        while chunk := s.read(16 << 20):
            nl = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            starts.append(nl.astype(np.int64) + (pos + 1))
            pos += len(chunk)
    lines = np.concatenate(starts)
    lines = lines[lines < pos]  # a final newline starts no line
    data = lines[1:] if skip_header else lines
    return [int(x) for x in data[::every]] + [pos], len(data)


def plan_shards(fs: pafs.FileSystem, files: list[InputFile], shard_rows: int) -> list[Shard]:
    shards: list[Shard] = []
    for fi, f in enumerate(files):
        if f.format == "parquet":
            try:
                with fs.open_input_file(f.path) as fh:
                    md = pq.ParquetFile(fh).metadata
            except pa.ArrowInvalid as e:
                raise ConfigError(f"{f.path}: not a readable Parquet file: {e}") from e
            start = 0
            group: list[int] = []
            rows = 0
            for g in range(md.num_row_groups):
                group.append(g)
                rows += md.row_group(g).num_rows
                if rows >= shard_rows or g == md.num_row_groups - 1:
                    shards.append(Shard(f"{fi:05d}-{start:012d}", f, start, start + rows, tuple(group)))
                    start += rows
                    group, rows = [], 0
        else:
            offsets, lines = _line_offsets(fs, f, shard_rows, skip_header=f.format == "csv")
            for k in range(len(offsets) - 1):
                start = k * shard_rows
                shards.append(Shard(f"{fi:05d}-{start:012d}", f, start, min(start + shard_rows, lines), (),
                                    offsets[k], offsets[k + 1]))
    return shards


def limit_shards(shards: list[Shard], limit: int | None) -> list[Shard]:
    """The first ``limit`` rows of the plan: the shards that hold them, the last one cut short."""
    if limit is None:
        return shards
    out: list[Shard] = []
    left = limit
    for s in shards:
        if left <= 0:
            break
        out.append(s if s.rows <= left else replace(s, stop=s.start + left))
        left -= s.rows
    return out


def plan_fingerprint(files: list[InputFile], shard_rows: int, limit: int | None = None) -> str:
    h = hashlib.sha256(str(shard_rows).encode() + (b"" if limit is None else f"\0limit={limit}".encode()))
    for f in files:
        h.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\0{f.format}\n".encode())
    return h.hexdigest()[:16]


def _csv_header(fs: pafs.FileSystem, f: InputFile) -> list[str]:
    import csv
    import io

    with fs.open_input_stream(f.path) as s:
        head = s.read(1 << 20)
    first = head.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    return next(csv.reader(io.StringIO(first)))


@dataclass(frozen=True, slots=True)
class Chunk:
    """Up to ``batch_rows`` rows of a shard, as read: a record batch (Parquet; CSV with every
    column as text) or JSONL lines (each one a JSON record, as a stream event is)."""

    first_row: int
    """Row number in the file of the chunk's first row."""
    batch: pa.RecordBatch | None = None
    text: bool = False
    """The batch comes from CSV: every cell is text, read as a JSON scalar would be."""
    lines: list[bytes] | None = None
    line_rows: list[int] | None = None
    """The row number in the file of each row, when they are not consecutive (JSONL: blank lines
    are not rows; CSV: a malformed line was skipped)."""

    def row(self, position: int) -> int:
        """Row number in the file of the chunk's row at ``position``."""
        return self.line_rows[position] if self.line_rows is not None else self.first_row + position


@dataclass(slots=True)
class ShardData:
    """What reading a shard gives: chunks, plus CSV rows that could not even be parsed."""

    chunks: list[Chunk]
    unparsable: list[tuple[int, str]]
    """(row number in the file, reason) for malformed CSV lines."""


def read_shard(fs: pafs.FileSystem, shard: Shard, batch_rows: int) -> ShardData:
    """Read the shard's rows, in chunks of at most ``batch_rows`` rows (none past ``shard.stop``,
    which --limit may set inside a row group or line range)."""
    f = shard.file
    if f.format == "parquet":
        with fs.open_input_file(f.path) as fh:
            pf = pq.ParquetFile(fh)
            batches = list(pf.iter_batches(batch_size=batch_rows, row_groups=list(shard.row_groups),
                                           use_threads=False))
        return _cut(ShardData(_numbered(batches, shard.start, text=False), []), shard.stop)
    with fs.open_input_file(f.path) as fh:
        raw = fh.read_at(shard.byte_stop - shard.byte_start, shard.byte_start)
    if f.format == "csv":
        return _cut(_parse_csv(raw, _csv_header(fs, f), shard.start, batch_rows), shard.stop)
    return _cut(_split_jsonl(raw, shard.start, batch_rows), shard.stop)


def _cut(data: ShardData, stop: int) -> ShardData:
    """Only the rows numbered below ``stop``."""
    chunks = []
    for c in data.chunks:
        n = c.batch.num_rows if c.batch is not None else len(c.lines or [])
        if n == 0 or c.row(n - 1) < stop:  # row numbers grow within a chunk: the usual case is one look
            chunks.append(c)
            continue
        keep = sum(1 for pos in range(n) if c.row(pos) < stop)
        if keep == n:
            chunks.append(c)
        elif keep:
            chunks.append(Chunk(c.first_row, batch=c.batch.slice(0, keep) if c.batch is not None else None,
                                text=c.text, lines=c.lines[:keep] if c.lines is not None else None,
                                line_rows=c.line_rows[:keep] if c.line_rows is not None else None))
    return ShardData(chunks, [(row, why) for row, why in data.unparsable if row < stop])


def _numbered(batches: list[pa.RecordBatch], first_row: int, *, text: bool) -> list[Chunk]:
    chunks = []
    for b in batches:
        chunks.append(Chunk(first_row, batch=b, text=text))
        first_row += b.num_rows
    return chunks


def _parse_csv(raw: bytes, names: list[str], first_row: int, batch_rows: int) -> ShardData:
    bad: list[tuple[int, str]] = []
    cursor = [0]

    def on_invalid(row: Any) -> str:
        # pyarrow gives the line number only in some versions; otherwise the line is found in the
        # shard's bytes (malformed lines come in order, so the search resumes where the last ended).
        if row.number:
            number = first_row + row.number - 1
        else:
            at = raw.find(row.text.encode(), cursor[0])
            number = first_row + raw.count(b"\n", 0, at) if at >= 0 else -1
            cursor[0] = at + 1 if at >= 0 else cursor[0]
        bad.append((number, f"malformed CSV line: {row.text[:200]!r}"))
        return "skip"

    table = pacsv.read_csv(
        pa.BufferReader(raw),
        read_options=pacsv.ReadOptions(column_names=names, block_size=16 << 20),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        # Every column is read as text; the input contract reads each cell as a JSON scalar.
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                             strings_can_be_null=True))
    batches = table.to_batches(max_chunksize=batch_rows)
    if not bad:
        return ShardData(_numbered(batches, first_row, text=True), bad)
    # Rows after a skipped line keep their own row numbers in the file.
    skipped = {row for row, _ in bad}
    good = (r for r in range(first_row, first_row + table.num_rows + len(bad)) if r not in skipped)
    chunks = []
    for b in batches:
        rows = [next(good) for _ in range(b.num_rows)]
        chunks.append(Chunk(rows[0] if rows else first_row, batch=b, text=True, line_rows=rows))
    return ShardData(chunks, bad)


def _split_jsonl(raw: bytes, first_row: int, batch_rows: int) -> ShardData:
    chunks: list[Chunk] = []
    lines: list[bytes] = []
    rows: list[int] = []
    for i, line in enumerate(raw.split(b"\n")):
        if not line.strip():
            continue
        lines.append(line)
        rows.append(first_row + i)
        if len(lines) == batch_rows:
            chunks.append(Chunk(rows[0], lines=lines, line_rows=rows))
            lines, rows = [], []
    if lines:
        chunks.append(Chunk(rows[0], lines=lines, line_rows=rows))
    return ShardData(chunks, [])
