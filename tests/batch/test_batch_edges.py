"""Batch rough edges: what --overwrite may delete, the report of a resumed run, where a database
output's report goes, --limit and --dry-run, and a usage error that closes the model it loaded."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inferlane.core.errors import ConfigError
from inferlane.lanes.batch import dry_run, run_batch
from tests.batch.test_batch_lane import dataset, job, run_cli
from tests.conftest import write_python_model


@pytest.fixture
def inp(tmp_path: Path) -> Path:
    """A folder with one Parquet file of 1500 rows in 3 row groups (3 shards of 500)."""
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(dataset(1500), d / "x.parquet", row_group_size=500)
    return d


# --overwrite ------------------------------------------------------------------------------------

def test_overwrite_refuses_a_folder_that_holds_anything_but_an_inferlane_job(model_repo: Path, inp: Path,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"--overwrite: .* holds 'notes.txt', which is not an inferlane job's output"):
        run_batch(job(model_repo, inp, out, overwrite=True))
    assert (out / "notes.txt").read_text() == "mine"

    # A folder with parts but no inferlane manifest is not ours either.
    other = tmp_path / "other"
    other.mkdir()
    (other / "part-0.parquet").write_bytes(b"someone else's")
    with pytest.raises(ConfigError, match="holds no inferlane job's manifest"):
        run_batch(job(model_repo, inp, other, overwrite=True))
    assert (other / "part-0.parquet").exists()

    # An inferlane job's folder is cleared and rewritten.
    first = run_batch(job(model_repo, inp, tmp_path / "ours", job_id="a"))
    (tmp_path / "ours" / "part-00000-000000000000.parquet").write_bytes(b"stale")
    second = run_batch(job(model_repo, inp, tmp_path / "ours", job_id="b", overwrite=True))
    assert first["rows_written"] == second["rows_written"] == 1500
    assert second["shards_skipped_already_done"] == 0
    assert pq.read_table(tmp_path / "ours").num_rows == 1500


@pytest.mark.parametrize("where", ["input", "parent", "inside"])
def test_output_never_equals_holds_or_sits_inside_the_input(model_repo: Path, inp: Path, where: str) -> None:
    out = {"input": inp, "parent": inp.parent, "inside": inp / "scores"}[where]
    before = sorted(p.name for p in inp.parent.rglob("*"))
    with pytest.raises(ConfigError, match=r"--output .* (is the input|holds the input|is inside --input)"):
        run_batch(job(model_repo, inp, out, overwrite=True))
    assert sorted(p.name for p in inp.parent.rglob("*")) == before  # nothing deleted, nothing written


@pytest.mark.e2e
def test_overwrite_of_the_input_is_a_usage_error_on_one_line(model_repo: Path, inp: Path) -> None:
    r = run_cli("run", "--model", str(model_repo / "fraud"), "--input", str(inp / "x.parquet"), "--output",
                str(inp), "--key", "id", "--job-id", "j", "--overwrite", "--quiet")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "holds the input" in r.stderr
    assert (inp / "x.parquet").exists()


# Reports of resumed runs ------------------------------------------------------------------------

def test_a_resumed_run_reports_this_run_and_earlier_runs_apart(model_repo: Path, inp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_batch(job(model_repo, inp, out, shard_rows=500, limit=1000))
    assert (first["rows_read_this_run"], first["shards_committed"], first["shards_total"]) == (1000, 2, 2)
    # Resuming with the same plan: everything was done by the earlier run.
    again = run_batch(job(model_repo, inp, out, shard_rows=500, limit=1000))
    assert again["status"] == "succeeded"
    assert again["rows_read"] == again["rows_written"] == 1000  # the whole job
    assert again["rows_read_this_run"] == again["rows_written_this_run"] == again["shards_committed"] == 0
    assert again["shards_skipped_already_done"] == again["shards_done"] == 2
    assert again["rows_read_earlier_runs"] == 1000
    report = json.loads((out / "_inferlane" / "report.json").read_text())
    assert report["rows_read_earlier_runs"] == 1000 and report["rows_read_this_run"] == 0


def test_limit_is_part_of_the_plan(model_repo: Path, tmp_path: Path) -> None:
    d = tmp_path / "jsonl"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dataset(1200).to_pylist()))
    report = run_batch(job(model_repo, d, tmp_path / "out", shard_rows=500, limit=700))
    assert (report["rows_read"], report["shards_total"]) == (700, 2)  # 500 + the first 200 of the next shard
    assert sorted(pq.read_table(tmp_path / "out").column("id").to_pylist()) == list(range(1000, 1700))
    with pytest.raises(ConfigError, match="--shard-rows or --limit changed"):
        run_batch(job(model_repo, d, tmp_path / "out", shard_rows=500, limit=800))
    with pytest.raises(ConfigError, match="--limit must be at least 1"):
        run_batch(job(model_repo, d, tmp_path / "out2", limit=0))


# Where a PostgreSQL output's report goes --------------------------------------------------------

def test_postgres_report_goes_under_the_state_dir_not_the_current_folder(
        model_repo: Path, inp: Path, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("INFERLANE_STATE_DIR", raising=False)
    # The state folder of every lane: .inferlane under the current directory (like jobs.db) ...
    report = run_batch(job(model_repo, inp, postgres_dsn, job_id="pg-state", table="scores_state", limit=10))
    assert Path(report["report_path"]).resolve() == cwd / ".inferlane" / "batch" / "pg-state-report.json"
    assert Path(report["report_path"]).exists()
    assert [p.name for p in cwd.iterdir()] == [".inferlane"]  # nothing else in the current folder
    # ... or $INFERLANE_STATE_DIR ...
    monkeypatch.setenv("INFERLANE_STATE_DIR", str(tmp_path / "env-state"))
    from_env = run_batch(job(model_repo, inp, postgres_dsn, job_id="pg-state1", table="scores_state", limit=10))
    assert from_env["report_path"] == str(tmp_path / "env-state" / "batch" / "pg-state1-report.json")
    # ... or --state-dir.
    explicit = run_batch(job(model_repo, inp, postgres_dsn, job_id="pg-state2", table="scores_state", limit=10,
                             state_dir=str(tmp_path / "state")))
    assert explicit["report_path"] == str(tmp_path / "state" / "batch" / "pg-state2-report.json")


def test_job_ids_cannot_name_other_folders(model_repo: Path, inp: Path, postgres_dsn: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--job-id"):
        run_batch(job(model_repo, inp, postgres_dsn, job_id="../../escape", state_dir=str(tmp_path / "s")))


# --dry-run --------------------------------------------------------------------------------------

def test_dry_run_plans_and_checks_without_writing(model_repo: Path, inp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = dry_run(job(model_repo, inp, out, shard_rows=500, job_id="d"))
    assert (plan["shards_total"], plan["rows_planned"], plan["shards_to_run"]) == (3, 1500, 3)
    assert plan["sample_rows"] == 500 and plan["sample_rejected"] == 0
    assert not out.exists()
    db = tmp_path / "s.db"
    assert dry_run(job(model_repo, inp, f"sqlite:///{db}", job_id="d"))["shards_already_done"] == 0
    assert not db.exists()

    # After a partial run, the dry run says what is left; a bad signature or another job's
    # output is the same usage error as a real run gives.
    run_batch(job(model_repo, inp, out, shard_rows=500, job_id="d", limit=500))
    run_batch(job(model_repo, inp, f"sqlite:///{db}", shard_rows=500, job_id="d", limit=500))
    files = sorted(p.name for p in out.rglob("*"))
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT count(*) FROM inferlane_batch_manifest").fetchone()
    assert dry_run(job(model_repo, inp, out, shard_rows=500, job_id="d", limit=500))["shards_already_done"] == 1
    assert dry_run(job(model_repo, inp, f"sqlite:///{db}", shard_rows=500, job_id="d",
                       limit=500))["shards_already_done"] == 1
    with pytest.raises(ConfigError, match="holds the output of job 'd'"):
        dry_run(job(model_repo, inp, out, job_id="e"))
    with pytest.raises(ConfigError, match="the model has no input 'nope'"):
        dry_run(job(model_repo, inp, tmp_path / "o2", columns={"nope": ["f1"]}))
    assert sorted(p.name for p in out.rglob("*")) == files
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM inferlane_batch_manifest").fetchone() == before
    assert not (tmp_path / "o2").exists()


@pytest.mark.e2e
def test_dry_run_cli_prints_the_plan(model_repo: Path, inp: Path, tmp_path: Path) -> None:
    r = run_cli("run", "--model", str(model_repo / "fraud"), "--input", str(inp), "--output", str(tmp_path / "o"),
                "--key", "id", "--job-id", "j", "--shard-rows", "500", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert "nothing written" in r.stderr
    plan = json.loads(r.stdout.splitlines()[-1])
    assert plan["dry_run"] is True and plan["shards_to_run"] == 3
    assert not (tmp_path / "o").exists()


# A usage error closes the model it loaded --------------------------------------------------------

CLOSING = textwrap.dedent('''
    from pathlib import Path

    class Model:
        def load(self, version_dir):
            self.marker = Path(version_dir) / "closed"

        def predict(self, batch):
            return {"score": batch["features"].sum(axis=1)}

        def close(self):
            self.marker.write_text("closed")
''')


def test_a_usage_error_after_the_model_loaded_closes_it(inp: Path, tmp_path: Path) -> None:
    """A model left open at a usage error is torn down by interpreter exit, where a native thread
    pool's teardown could abort the process ('terminate called without an active exception')."""
    d = write_python_model(tmp_path, "closing", CLOSING, {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}]})
    marker = d / "1" / "closed"
    kw = {"model": str(d), "input": str(inp), "key": ["id"], "progress": False}
    from inferlane.lanes.batch import BatchJob

    with pytest.raises(ConfigError, match="no input 'nope'"):  # in the decoders, after the model loaded
        run_batch(BatchJob(output=str(tmp_path / "o1"), job_id="a", columns={"nope": ["f1"]}, **kw))  # type: ignore[arg-type]
    assert marker.exists()
    marker.unlink()
    run_batch(BatchJob(output=str(tmp_path / "o2"), job_id="a", **kw))  # type: ignore[arg-type]
    marker.unlink()
    with pytest.raises(ConfigError, match="holds the output of job 'a'"):  # at the output, after the model loaded
        run_batch(BatchJob(output=str(tmp_path / "o2"), job_id="b", **kw))  # type: ignore[arg-type]
    assert marker.exists()
