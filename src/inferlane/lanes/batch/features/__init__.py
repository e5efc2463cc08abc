"""Online features, materialized: a table's rows stored by key in a key-value store, one value per key
holding each numeric column as a scalar, for models with a ``features:`` section to read at request
time (lanes/online/hybrid.py; docs/hybrid.md, "Online features").

    report = materialize(Materialization(source="data/users.parquet", key=["user_id"],
                                         store="store://fraud-features", ttl_s=7 * 86400))
    report.keys_written, report.skipped_columns, report.rejects

job.py (what to do, what was done) · sources.py (the source's rows in blocks) · columns.py (keys,
numeric columns, values) · run.py (one run: checks and writes).

Sources: Parquet, CSV or JSONL files (a file, folder or glob, local or ``s3://``, read by the batch
lane's readers in lanes/batch/sources.py), or a SQL table, ``sqlite:///file.db?table=t`` or
``postgresql://user@host/db?table=t``, read in chunks (a server-side cursor on PostgreSQL).

The rules:

- **Key**: the key column's value as text, several key columns joined with ``|`` (the batch lane's
  rule, so a user's features and precomputed answers share a key): text or an integer (CSV keys that
  are all integers are integers, as in the batch lane). A row whose key is null, of another type or
  not a valid store key (over 1024 UTF-8 bytes, a NUL) is rejected: counted, the first few reported.
- **Value**: ``encode_rows("features", <the source>, computed_at, ...)`` with each numeric column
  (bool, integer, float, decimal; CSV cells and SQL values that are numbers) as a scalar of its
  dtype. computed_at is when the run started: a later run wins, and an earlier one never overwrites
  it (the stores' newest-wins rule). Within one run, the last row of a key wins.
- **Nulls** (and NaN) are not stored: the field is left out of that key's value, so serving applies
  the field's default. A row whose every field is null is stored with an empty array per field (no
  scalar: serving reads each as missing), so it still replaces what an older run stored.
- **Non-numeric columns** are skipped, and the report says which and why; naming one in ``columns``
  is a ConfigError. Where the source has no types (CSV, JSONL, SQL values), a column's kind is set by
  the first chunk that holds a value of it; a later cell that is not a number rejects its row.
"""


from inferlane.lanes.batch.features.job import MODEL, Materialization, MaterializeReport
from inferlane.lanes.batch.features.run import materialize

__all__ = ["MODEL", "Materialization", "MaterializeReport", "materialize"]
