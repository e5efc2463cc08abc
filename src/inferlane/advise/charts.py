"""Pictures of a profile and an advice: a table and text bars for the terminal, a PNG for people.

    print(profile_table(prof)); print(throughput_bars(prof, advice))
    write_png(prof, Path("fraud.png"), advice)      # needs matplotlib: pip install 'inferlane[profile]'

The PNG is drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global state).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from inferlane.core.errors import ConfigError

if TYPE_CHECKING:
    from inferlane.advise.advisor import Advice
    from inferlane.advise.profile import BatchingAdvice, Profile

BAR_WIDTH = 40


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n //= 1024
    return f"{n} B"


def profile_table(prof: Profile) -> str:
    """One line per batch size: latency, throughput, memory; the knee and the peak marked."""
    knee, peak = prof.knee.batch_size, prof.peak.batch_size
    head = f"{'batch':>6} {'p50 ms':>10} {'p99 ms':>10} {'rows/s':>12} {'batch mem':>10} {'rss +':>10}  note"
    lines = [head, "-" * len(head)]
    for p in prof.points:
        note = " ".join(n for n, on in (("knee", p.batch_size == knee), ("peak", p.batch_size == peak)) if on)
        lines.append(f"{p.batch_size:>6} {p.p50_ms:>10.3f} {p.p99_ms:>10.3f} {p.rows_per_s:>12,.0f} "
                     f"{_size(p.batch_bytes):>10} {_size(p.rss_growth_bytes):>10}  {note}".rstrip())
    return "\n".join(lines)


def throughput_bars(prof: Profile, batching: BatchingAdvice | None = None, width: int = BAR_WIDTH) -> str:
    """rows/s as bars scaled to the peak; ``K`` marks the knee, ``*`` the recommended batch size."""
    top = prof.peak.rows_per_s
    lines = [f"rows/s by batch size (bar = share of the peak, {top:,.0f} rows/s)"]
    for p in prof.points:
        n = max(1, round(width * p.rows_per_s / top))
        marks = ("K" if p.batch_size == prof.knee.batch_size else " ") + (
            "*" if batching is not None and p.batch_size == batching.max_batch_size else " ")
        lines.append(f"{p.batch_size:>6} {marks} {'#' * n:<{width}} {p.rows_per_s / top:>4.0%}")
    lines.append("K knee" + ("   * recommended max_batch_size" if batching is not None else ""))
    return "\n".join(lines)


def cost_bars(advice: Advice, width: int = BAR_WIDTH) -> str:
    """Cost per million predictions of every pattern, as bars scaled to the dearest."""
    from inferlane.advise.costs import money

    top = max(c.cost_per_million for c in advice.costs) or 1.0
    lines = []
    for c in advice.costs:
        n = max(1, round(width * c.cost_per_million / top))
        mark = "<-" if c.pattern == advice.pattern else ""
        lines.append(f"{c.pattern!s:>7} {'#' * n:<{width}} ${money(c.cost_per_million)}/M {mark}".rstrip())
    return "\n".join(lines)


def write_png(prof: Profile, path: Path, batching: BatchingAdvice | None = None) -> None:
    """Latency (p50, p99) and rows/s against batch size, log-scaled, knee and recommendation marked."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ConfigError(f"--png needs matplotlib ({e}): pip install 'inferlane[profile]'") from e
    sizes = [p.batch_size for p in prof.points]
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(sizes, [p.rows_per_s for p in prof.points], "o-", color="tab:blue", label="rows/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("rows/s", color="tab:blue")
    ax.axvline(prof.knee.batch_size, color="gray", linestyle="--", label=f"knee ({prof.knee.batch_size})")
    if batching is not None:
        ax.axvline(batching.max_batch_size, color="tab:green", linestyle=":",
                   label=f"max_batch_size for p99 {batching.p99_budget_ms:g} ms ({batching.max_batch_size})")
    lat = ax.twinx()
    lat.plot(sizes, [p.p50_ms for p in prof.points], "s-", color="tab:orange", label="p50 ms")
    lat.plot(sizes, [p.p99_ms for p in prof.points], "^--", color="tab:red", label="p99 ms")
    lat.set_yscale("log")
    lat.set_ylabel("forward ms")
    handles = ax.get_legend_handles_labels()[0] + lat.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_title(f"{prof.model} v{prof.version} on {prof.device}, {prof.threads} thread(s)")
    fig.tight_layout()
    try:
        fig.savefig(str(path), format="png")
    except OSError as e:
        raise ConfigError(f"--png {path}: cannot write it ({e.strerror})") from e
