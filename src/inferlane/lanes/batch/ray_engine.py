"""The Ray engine: the local engine's shard plan, manifest and output, scored by Ray Data.

A dataset of the shards still to do goes through ``map_batches`` on an actor pool of
``job.ray_actors`` model replicas (one shard per call). Actors only read and score; the driver
commits every shard through the same sink as the local engine, so a killed job resumes the same
way. ``ray.init`` runs only when Ray is not initialized yet (and ``ray.shutdown`` then at the end);
``RAY_ADDRESS`` picks a cluster, whose nodes must all see the model folder and local inputs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

import orjson
import pyarrow as pa

from inferlane.core.errors import ConfigError
from inferlane.core.urls import scheme
from inferlane.lanes.batch.config import BatchJob, ShardFailed
from inferlane.lanes.batch.shards import BatchRun, ShardResult, ShardScorer
from inferlane.lanes.batch.sources import Shard

try:
    import ray
    import ray.data
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("--engine ray needs Ray Data: pip install 'inferlane[ray]'", name="ray") from e

log = logging.getLogger(__name__)


class RayShardScorer:
    """One model replica (a Ray actor): loads the model once, reads and scores one shard per call."""

    def __init__(self, job: BatchJob) -> None:
        self.scorer = ShardScorer(job)

    def __call__(self, batch: pa.Table) -> pa.Table:
        shard = Shard.from_dict(orjson.loads(batch.column("shard")[0].as_py()))
        retries = [0]
        out: dict[str, Any] = {"shard": shard.id, "table": b"", "rejects": b"[]", "rows_read": 0,
                               "error": "", "config_error": ""}

        def retried() -> None:
            retries[0] += 1

        try:
            res = self.scorer.load_and_score(shard, retried)
            ipc = pa.BufferOutputStream()
            with pa.ipc.new_stream(ipc, res.table.schema) as writer:
                writer.write_table(res.table)
            out.update(table=ipc.getvalue().to_pybytes(), rejects=orjson.dumps(res.rejects), rows_read=res.rows_read)
        except ConfigError as e:  # bad usage: the driver stops the job, as the local engine does
            out["config_error"] = e.message
        except ShardFailed as e:  # reported by the driver; the job goes on
            out["error"] = str(e)
        return pa.table({k: [v] for k, v in {**out, "retries": retries[0]}.items()})


def _init_ray() -> bool:
    """Start Ray (or join RAY_ADDRESS's cluster) unless it runs already; True when done here."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    else:
        ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)), ignore_reinit_error=True, include_dashboard=False,
                 log_to_driver=False)
    return True


def _absolute(shard: Shard) -> dict[str, Any]:
    return replace(shard, file=replace(shard.file, path=os.path.abspath(shard.file.path))).to_dict()


def run_ray(run: BatchRun, todo: list[Shard]) -> None:
    if not todo:
        return
    job = run.job
    started_here = _init_ray()
    try:
        actors = max(1, min(job.ray_actors, len(todo)))
        cpus = float(ray.cluster_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
        kind = scheme(job.input)
        threads = job.threads or max(1, (os.cpu_count() or 1) // actors)  # actors × threads ≈ cores
        # Actors run in another working directory: relative local paths become absolute.
        actor_job = replace(job, model=os.path.abspath(job.model), threads=threads,
                            input=job.input if kind else os.path.abspath(job.input))
        local = kind in ("", "file")
        # JSON, not nested columns: Arrow would infer list<null> for a CSV shard's empty row groups.
        items = [{"shard": orjson.dumps(_absolute(s) if local else s.to_dict()).decode()} for s in todo]
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the job has its own
        ctx.print_on_execution_start = False
        results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(  # a block per shard
            RayShardScorer, fn_constructor_kwargs={"job": actor_job}, batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=min(1.0, cpus / (actors + 1)))
        by_id = {s.id: s for s in todo}
        rows = iter(results.iter_rows())
        try:
            for row in rows:
                for _ in range(int(row["retries"])):
                    run.retried()
                if row["config_error"]:
                    raise ConfigError(str(row["config_error"]))
                if row["error"]:
                    run.fail(ShardFailed(str(row["error"])))
                    continue
                table = pa.ipc.open_stream(row["table"]).read_all()
                run.commit(ShardResult(by_id[str(row["shard"])], table, orjson.loads(row["rejects"]),
                                       int(row["rows_read"])))
        finally:
            getattr(rows, "close", lambda: None)()  # stops the pipeline when the job stops early
    finally:
        if started_here:
            ray.shutdown()
