"""The one way to write a length of time, in flags and in model.yaml: ``500ms``, ``60s``, ``15m``,
``1h``, ``7d``, or plain seconds (``90``, ``0.5``).

    parse_duration("15m")    # 900.0
    parse_duration(" 2h ")   # 7200.0
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``text``; ValueError unless it is a positive duration such as 60s, 500ms, 2m, 1h or 7d.
    A number is taken as seconds."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration such as 60s, 500ms or 2m")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = _DURATION.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"{text[:40]!r} is not a duration such as 60s, 500ms or 2m")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds
