"""The rollout benchmark's output: one table (figure, measured, target, PASS/MISS) and the raw
figures behind it. A missed target is reported here and never changes the exit status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.online.wrk import WrkResult
from benchmarks.rollout.promote import PromoteResult
from benchmarks.rollout.rollback import RollbackResult
from benchmarks.rollout.shadow import ShadowResult
from inferlane.testing import Column, format_table

CLIENT_BEYOND_DETECTION_S = 1.0
"""The client sees only stable answers within this long after the controller rolled back."""
DETECTION_S = 1.0
"""The issue's "within one second" of the breach, for the controller's own reaction."""
SHADOW_P99_RATIO = 1.1


@dataclass(frozen=True)
class Row:
    figure: str
    measured: str
    target: str
    met: bool | None
    """None: a figure without a target."""


def rows(promote: PromoteResult, rollback: RollbackResult, shadow: ShadowResult) -> list[Row]:
    detect, client = rollback.detection_s, rollback.all_stable_s
    took = f"{promote.seconds:.2f} s" if promote.outcome == "promoted" else \
        f"- ({promote.outcome} after {promote.seconds:.2f} s)"
    return [
        Row("promote: outcome", promote.outcome, "promoted", promote.outcome == "promoted"),
        Row("promote: failed requests during the rollout", f"{promote.failed} of {promote.requests:,}", "0",
            promote.failed == 0),
        Row("promote: start → promoted", took, "-", None),
        Row("rollback: outcome", rollback.outcome, "rolled_back", rollback.outcome == "rolled_back"),
        Row("rollback: breach → rolled_back event (controller)", f"{detect:.2f} s", f"≤ {DETECTION_S:g} s",
            detect <= DETECTION_S),
        Row("rollback: breach → last version-3 answer (client)", f"{client:.2f} s",
            f"≤ detection + {CLIENT_BEYOND_DETECTION_S:g} s = {detect + CLIENT_BEYOND_DETECTION_S:.2f} s",
            client <= detect + CLIENT_BEYOND_DETECTION_S),
        Row("rollback: failed requests not from version 3", f"{rollback.other_failed} of {rollback.requests:,}", "0",
            rollback.other_failed == 0),
        Row(f"shadow {shadow.percent:g}%: live p99 on / off (median of {len(shadow.phases) // 2} phases each)",
            f"{shadow.p99_ms['on']:.2f} / {shadow.p99_ms['off']:.2f} ms = {shadow.ratio:.2f}x",
            f"≤ {SHADOW_P99_RATIO:g}x", shadow.ratio <= SHADOW_P99_RATIO),
        Row("shadow: failed live requests", f"{shadow.failed}", "0", shadow.failed == 0),
    ]


def table(items: list[Row]) -> str:
    cols = [Column("figure", left=True), Column("measured"), Column("target", left=True), Column("", left=True)]
    return format_table(cols, [[r.figure, r.measured, r.target, _verdict(r.met)] for r in items])


def raw_figures(capacity: WrkResult, rate: float, promote: PromoteResult, rollback: RollbackResult,
                shadow: ShadowResult) -> str:
    checks = _reason(rollback.reason)
    phases = ", ".join(f"{mode} {p99:.2f} ms ({cpu:.0%})" for mode, p99, cpu in shadow.phase_p99_ms)
    agreement = shadow.agreed / shadow.compared if shadow.compared else float("nan")
    return "\n".join([
        f"capacity (closed loop, wrk, 32 connections, version 1): {capacity.rps:,.0f} requests/s, p50 "
        f"{capacity.p50_ms:.2f} ms, p99 {capacity.p99_ms:.2f} ms",
        f"open-loop load: {rate:,.0f} requests/s offered (half the capacity); achieved: promote {promote.rate:,.0f}, "
        f"rollback {rollback.rate:,.0f}, shadow {shadow.rate:,.0f}",
        f"promote: events {', '.join(promote.events)}; answers per version {promote.versions}"
        + ("" if promote.outcome == "promoted" else f"; reason: {_reason(promote.ending)}"),
        f"promote: live p99 {promote.p99_before_ms:.2f} ms in the second before the start, {promote.p99_during_ms:.2f} "
        f"ms during the rollout; server CPU {promote.cpu_before:.0%} before, {promote.cpu_during:.0%} during",
        f"rollback: started → rolled_back {rollback.start_to_rollback_s:.2f} s; version 3 answered "
        f"{rollback.bad_answers} requests, {rollback.bad_failed} failed; reason: {checks}",
        f"shadow: {shadow.requests.get('off', 0):,} requests measured off, {shadow.requests.get('on', 0):,} on; p50 "
        f"off {shadow.p50_ms['off']:.2f} ms, on {shadow.p50_ms['on']:.2f} ms; pooled p99 off "
        f"{shadow.pooled_p99_ms['off']:.2f} ms, on {shadow.pooled_p99_ms['on']:.2f} ms; per phase in order, p99 "
        f"(server CPU): {phases}; "
        f"copies compared {shadow.compared:,} (agreement {agreement:.4f}), dropped {shadow.dropped:.0f}",
    ])


def _verdict(met: bool | None) -> str:
    return "-" if met is None else "PASS" if met else "MISS"


def _reason(detail: dict[str, Any]) -> str:
    """A rolled_back event's why: the check, both values, the limit, the samples, where in the window."""
    keys = ("check", "canary", "stable", "ratio", "limit", "samples", "percent", "elapsed_s")
    return ", ".join(f"{k}={detail[k]}" for k in keys if k in detail)
