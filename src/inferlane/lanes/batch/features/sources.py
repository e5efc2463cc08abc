"""A materialization's source, read in blocks: files through the batch lane's readers
(lanes/batch/sources.py), SQL tables through a cursor, a chunk at a time.

NOTE: the batch lane's readers, so that a file reads the same in both lanes. tests/test_layers.py
flags this import of another lane: the readers belong below the lanes (store/tables), where both
would import them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import orjson
import pyarrow as pa

from inferlane.core.errors import ConfigError
from inferlane.core.uri import filesystem_for
from inferlane.core.urls import postgres_url, redact, scheme, sqlite_url
from inferlane.lanes.batch.features.job import SHARD_ROWS, Materialization
from inferlane.lanes.batch.sources import Format, list_inputs, plan_shards, read_shard

Values: TypeAlias = "pa.Array | list[Any]"
"""A column of one block: Arrow (Parquet typed, CSV text) or Python values (JSONL, SQL)."""


@dataclass(frozen=True, slots=True)
class Block:
    """Up to ``batch_rows`` rows of the source, each column as read."""

    where: str
    """The file or table, for messages."""
    rows: Sequence[int]
    """Each row's number in its file or table (0-based)."""
    columns: dict[str, Values]
    text: bool = False
    """CSV: Arrow columns of text, each cell read as a JSON scalar."""
    every_column: bool = True
    """``columns`` names every column of the source (JSONL: only the fields these lines have)."""
    rejects: list[tuple[int, str]] = field(default_factory=list)
    """(row, reason) for lines that could not even be parsed."""


def _file_blocks(job: Materialization) -> tuple[int, Generator[Block, None, None]]:
    if job.input_format not in (None, "parquet", "csv", "jsonl"):
        raise ConfigError(f"--input-format {job.input_format}: parquet, csv or jsonl")
    fs, path = filesystem_for(job.source, job.endpoint_url)
    files = list_inputs(job.source, fs, path, cast(Format | None, job.input_format))
    shards = plan_shards(fs, files, max(job.batch_rows, SHARD_ROWS))

    def blocks() -> Generator[Block, None, None]:
        for shard in shards:
            try:
                data = read_shard(fs, shard, job.batch_rows)
            except (pa.ArrowInvalid, OSError) as e:
                raise ConfigError(f"{shard.file.path}: cannot be read: {e}") from e
            bad = list(data.unparsable)
            for chunk in data.chunks:
                if chunk.batch is not None:
                    rows = [chunk.row(i) for i in range(chunk.batch.num_rows)]
                    yield Block(shard.file.path, rows, dict(zip(chunk.batch.schema.names, chunk.batch.columns,
                                                                strict=True)), chunk.text, rejects=bad)
                else:
                    assert chunk.lines is not None
                    yield _jsonl_block(shard.file.path, [chunk.row(i) for i in range(len(chunk.lines))],
                                       chunk.lines, bad)
                bad = []
            if bad:
                yield Block(shard.file.path, [], {}, rejects=bad)

    return sum(s.rows for s in shards), blocks()


def _jsonl_block(where: str, rows: list[int], lines: list[bytes], bad: list[tuple[int, str]]) -> Block:
    records: list[dict[str, Any]] = []
    kept: list[int] = []
    for row, line in zip(rows, lines, strict=True):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            bad.append((row, f"not JSON: {e}"))
            continue
        if not isinstance(rec, dict):
            bad.append((row, f"a line is a JSON object, not {type(rec).__name__}"))
            continue
        records.append(rec)
        kept.append(row)
    names = list(dict.fromkeys(k for rec in records for k in rec))
    return Block(where, kept, {n: [rec.get(n) for rec in records] for n in names}, every_column=False,
                 rejects=bad)


def _sql_blocks(job: Materialization) -> Generator[Block, None, None]:
    """A SQL table's rows in chunks of ``batch_rows`` (read as Python values)."""
    flag = "SOURCE"
    is_sqlite = scheme(job.source) == "sqlite"
    params = sqlite_url(job.source, flag).params if is_sqlite else postgres_url(job.source, flag).params
    table = params.get("table")
    if not table:
        raise ConfigError(f"{redact(job.source)}: name the table, e.g. {job.source.split('?')[0]}?table=user_features")
    where = f"table {table}"
    if is_sqlite:
        path = sqlite_url(job.source, flag).path
        if not path.is_file():
            raise ConfigError(f"{redact(job.source)}: no such file {path}")
        conn: Any = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            cur = conn.execute('SELECT * FROM "{}"'.format(table.replace('"', '""')))
        except sqlite3.Error as e:
            conn.close()
            raise ConfigError(f"{redact(job.source)}: cannot read {where}: {e}") from e
    else:
        import psycopg
        from psycopg import sql

        try:
            conn = psycopg.connect(postgres_url(job.source, flag).dsn)
        except psycopg.Error as e:
            raise ConfigError(f"{redact(job.source)}: cannot connect: {e}") from e
        # A named cursor is a server-side one: the rows come over a chunk at a time.
        cur = conn.cursor(name="inferlane_materialize")
        try:
            cur.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(*table.split("."))))
        except psycopg.Error as e:
            cur.close()
            conn.close()
            raise ConfigError(f"{redact(job.source)}: cannot read {where}: {e}") from e
    try:
        names = [d[0] for d in cur.description]
        start = 0
        while rows := cur.fetchmany(job.batch_rows):
            yield Block(where, range(start, start + len(rows)),
                        {n: list(col) for n, col in zip(names, zip(*rows, strict=True), strict=True)})
            start += len(rows)
        if not start:  # no rows: the column names still check the key and --columns
            yield Block(where, [], {n: [] for n in names})
    finally:
        cur.close()
        conn.close()


def source_blocks(job: Materialization) -> tuple[int | None, Generator[Block, None, None]]:
    """(rows, when known beforehand; the blocks)."""
    if scheme(job.source) in ("sqlite", "postgres", "postgresql"):
        return None, _sql_blocks(job)
    return _file_blocks(job)
