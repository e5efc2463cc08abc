"""A gate a test model's forward pass waits at, so that a test can hold requests in flight.

    GATE = Gate()                      # module level in the test file; the model calls GATE.hold()
    GATE.close(); ...send requests...; GATE.entered.wait(5); ...act while they are held...; GATE.open()
"""

from __future__ import annotations

import threading


class Gate:
    """Open by default; ``hold()`` (called by the model, in its forward thread) waits while it is
    closed, at most 30 s."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.opened.set()

    def hold(self) -> None:
        self.entered.set()
        if not self.opened.wait(30):
            raise TimeoutError("the test never opened the gate")

    def close(self) -> None:
        self.entered.clear()
        self.opened.clear()

    def open(self) -> None:
        self.opened.set()
