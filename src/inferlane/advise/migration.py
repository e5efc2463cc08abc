"""The steps from the pattern a team runs today to the one the advisor recommends, as inferlane commands.

Every lane runs the same ``ModelVersion.forward``, so the same model version gives the same
answers in the new lane as in the old one: a migration runs both side by side, compares, moves the
consumers, then retires the old lane. The commands use placeholders (``data/``, ``kafka://broker``)
for what only the team knows.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from inferlane.advise.costs import BATCH_MIN_PERIOD_S, PatternCost
from inferlane.advise.profile import Profile
from inferlane.advise.workload import Pattern, Workload


def cron_for(freshness_s: float) -> str:
    """A schedule that keeps answers within ``freshness_s`` (each run must finish within it too)."""
    if freshness_s >= 86_400:
        return "0 2 * * *"
    if freshness_s >= 3600:
        hours = int(freshness_s // 3600)
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    minutes = max(int(BATCH_MIN_PERIOD_S // 60), int(freshness_s // 60))
    return f"*/{minutes} * * * *"


def _setup(target: Pattern, w: Workload, profile: Profile, folder: str, costs: dict[Pattern, PatternCost]) -> list[str]:
    path = PurePosixPath(folder)
    name, repo = path.name, str(path.parent)
    price = w.price_per_hour * (1 - w.spot_discount)
    schedule = (f"inferlane batch schedule --model {folder} --input 'data/{name}/{{date}}/' --key id "
                f"--cron '{cron_for(w.freshness_s)}' --cost-per-hour {price:g} --job-id '{{name}}-{{date}}-{{time}}'")
    if target == Pattern.BATCH:
        return [f"score on a schedule, on spot machines: {schedule} --output 'out/{name}/{{date}}.parquet'",
                "point the readers at the output table; no server is needed"]
    if target == Pattern.HYBRID:
        return [f"precompute into the key-value store: {schedule} --output store://{name} "
                f"(or --output 'redis://cache:6379/0?prefix={name}' for several servers)",
                f"add to {folder}/model.yaml: hybrid: {{max_age: {_dur(max(w.freshness_s, BATCH_MIN_PERIOD_S))}}}",
                f"serve it: inferlane serve {repo} (callers send parameters.key, and the inputs when a "
                "key may be missing or stale: docs/hybrid.md)"]
    if target == Pattern.STREAM:
        n = costs[Pattern.STREAM].replicas
        return [f"score the events as they arrive: inferlane stream run --model {folder} "
                f"--source kafka://broker:9092/{name}-events --group {name}-scorer "
                f"--sink kafka://broker:9092/{name}-scores --dlq kafka://broker:9092/{name}-dlq --key id "
                f"({n} consumer{'s' if n != 1 else ''} in one group for the peak)"]
    if target == Pattern.ASYNC:
        n = costs[Pattern.ASYNC].replicas
        return [f"serve the job API and run workers on one Redis store: inferlane serve {repo}; "
                f"inferlane jobs worker {repo} --store redis://redis:6379/0 ({n} worker{'s' if n != 1 else ''})",
                f"callers submit and poll (or pass --callback-url): inferlane jobs submit {name} request.json"]
    n = costs[Pattern.ONLINE].replicas
    lines = []
    if w.p99_ms is not None:
        b = profile.batching_for(w.p99_ms)
        lines.append(f"set in {folder}/model.yaml: batching: {{max_batch_size: {b.max_batch_size}, "
                     f"max_queue_delay_ms: {b.max_queue_delay_ms:g}}} (from the profile, for p99 {w.p99_ms:g} ms)")
    lines.append(f"serve it: inferlane serve {repo} --replicas {max(1, n // 2)}..{max(n, 2)} on one machine, or "
                 f"{n} replica{'s' if n != 1 else ''} behind a Service (inferlane deploy; docs/scaling.md)")
    return lines


_RETIRE = {
    Pattern.BATCH: "stop the batch schedule once nothing reads its table",
    Pattern.HYBRID: "remove the hybrid: section and the precompute schedule once callers send their inputs",
    Pattern.STREAM: "stop the stream consumers once the topic has no readers (their offsets stay committed)",
    Pattern.ASYNC: "stop submitting jobs; let the workers drain the queue, then stop them",
    Pattern.ONLINE: "scale the endpoint down as callers move; keep one replica until the last one has",
}


def _retire(current: Pattern, target: Pattern, costs: dict[Pattern, PatternCost]) -> str:
    if current == Pattern.ONLINE and target == Pattern.HYBRID:
        n = costs[Pattern.HYBRID].replicas
        return (f"the same server now answers most requests from the store: scale it down to the live layer's "
                f"{n} replica{'s' if n != 1 else ''}")
    if current == Pattern.BATCH and target == Pattern.HYBRID:
        return "keep the schedule (it now fills the store); drop the old output table once nothing reads it"
    return _RETIRE[current]


def migration(current: Pattern | None, target: Pattern, w: Workload, profile: Profile, folder: str,
              costs: dict[Pattern, PatternCost]) -> list[str]:
    """Numbered steps from ``current`` (None: nothing yet) to ``target``."""
    setup = _setup(target, w, profile, folder, costs)
    if current is None:
        steps = setup
    elif current == target:
        steps = [*setup, f"you already run {target}: keep its settings and size as above (from the profile)"]
    else:
        steps = [*setup,
                 f"run {target} beside {current} on the same model version: every lane runs the same forward pass, "
                 "so the answers match; compare counts, latency and cost for a few days",
                 f"move the consumers to {target}",
                 _retire(current, target, costs)]
    return [f"{i}. {s}" for i, s in enumerate(steps, 1)]


def _dur(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
