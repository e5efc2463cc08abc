"""Wait for an observable condition, never for a fixed time.

    wait_until(lambda: store.count() == 40, "every job stored", timeout_s=30)
    wait_until(lane_started, "the lane holds its partitions", abort_if=[exited(proc, log)])

``check`` is called every ``interval_s`` until it returns True. Each ``abort_if`` callable returns
None while waiting still makes sense, or the reason it does not (a process that should produce the
condition has exited): the wait fails at once with that reason instead of running into the timeout.
Failures raise :class:`WaitFailed`, an AssertionError, so a test shows them as failed assertions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

AbortIf = Callable[[], str | None]


class WaitFailed(AssertionError):
    """A condition did not come true: timed out, or an abort condition gave its reason."""


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60.0, *, interval_s: float = 0.05,
               abort_if: Iterable[AbortIf] = ()) -> None:
    """Return once ``check()`` is true; raise WaitFailed after ``timeout_s`` or when an ``abort_if``
    callable gives a reason. ``what`` names the condition in the error ("until <what>")."""
    aborts = list(abort_if)
    deadline = time.monotonic() + timeout_s
    while not check():
        for abort in aborts:
            reason = abort()
            if reason is not None:
                raise WaitFailed(f"gave up waiting until {what}: {reason}")
        if time.monotonic() >= deadline:
            raise WaitFailed(f"timed out after {timeout_s:g} s waiting until {what}")
        time.sleep(interval_s)


async def wait_until_async(check: Callable[[], bool], what: str, timeout_s: float = 20.0, *,
                           interval_s: float = 0.005) -> None:
    """:func:`wait_until` inside an event loop: sleeps with ``asyncio.sleep``, so the loop (an app
    under test in the same process) runs meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            raise WaitFailed(f"timed out after {timeout_s:g} s waiting until {what}")
        await asyncio.sleep(interval_s)
