"""Tables for benchmark output: Markdown pipe tables that read well in a terminal and paste into docs.

    print(format_table([Column("model", left=True), Column("rows/s")],
                       [["small", num(782159.3, ",.0f")], ["heavy", num(None, ",.0f")]]))

    | model |  rows/s |
    |-------|--------:|
    | small | 782,159 |
    | heavy |       - |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    title: str
    left: bool = False
    """Left-aligned (text); numbers are right-aligned."""


def num(value: float | None, fmt: str) -> str:
    """``value`` formatted with ``fmt``, or ``-`` for None and NaN (a figure not measured)."""
    return "-" if value is None or value != value else format(value, fmt)


def pct(value: float | None, digits: int = 0) -> str:
    """A share as a percentage (0.5 -> ``50%``), or ``-`` for None and NaN."""
    return "-" if value is None or value != value else f"{value * 100:.{digits}f}%"


def ratio(value: float | None, digits: int = 2) -> str:
    """A ratio against a baseline (``1.37x``), or ``-`` for None and NaN."""
    return "-" if value is None or value != value else f"{value:.{digits}f}x"


def format_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table: one header line, the alignment line, one line per row."""
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row has {len(row)} cells for {len(columns)} columns: {list(row)}")
    widths = [max([len(c.title), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) if c.left else v.rjust(w)
                                 for v, w, c in zip(cells, widths, columns, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) if c.left else "-" * (w + 1) + ":"
                          for w, c in zip(widths, columns, strict=True)) + "|"
    return "\n".join([line([c.title for c in columns]), rule, *(line(r) for r in rows)])
