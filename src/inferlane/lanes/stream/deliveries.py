"""How often a Kafka source handed each uncommitted event to the model, kept on local disk.

Kafka keeps no delivery count: an event that crashes the process (a native crash in the model, an
OOM) is read again from the committed offset by the next run, forever. This log remembers, per
partition, the offset ranges that earlier runs handed to the model without committing them; an
event's delivery count is one more than the number of those ranges that hold its offset.

    log = DeliveryLog(Path(".inferlane/stream/fraud-scorer/deliveries"))
    log.count("transactions/3", 1042)        # 1 the first time; 2 after one crash while it was scored
    log.handing_out({"transactions/3": (1040, 1100)})   # before scoring: one small file per partition
    log.committed({"transactions/3": 1101})              # ranges below the commit are done

Each partition has one JSON file ``<topic>-<partition>.json``: ``{"committed": <next offset>,
"ranges": [[first, last], ...]}``, the last range being the current run's. Files are replaced
atomically but not fsynced: a crashed process loses nothing (the page cache survives it); a lost
host may forget a delivery. The log is local to the host (or volume) the lane runs on: a
partition taken over by an instance elsewhere starts counting from 1 there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson

log = logging.getLogger("inferlane.stream")

MAX_RANGES = 100
"""Ranges kept per partition: beyond, the oldest are forgotten (the lane stopped that often
without committing anything: their events were dead-lettered long ago)."""


@dataclass
class _Partition:
    path: Path
    ranges: list[list[int]] = field(default_factory=list)
    """Earlier runs' ``[first, last]`` offsets handed out and not known to be committed."""
    current: list[int] | None = None
    """This run's ``[first, last]`` handed out so far."""
    committed: int = -1


class DeliveryLog:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: dict[str, _Partition] = {}
        self._failing = False

    def count(self, partition: str, offset: int) -> int:
        """Deliveries of the event at ``offset`` of ``partition`` (``topic/partition``), this one
        included. The first event of a partition after an assignment opens its file."""
        part = self._open.get(partition)
        if part is None:
            part = self._open[partition] = self._load(partition, offset)
        if not part.ranges:
            return 1
        return 1 + sum(1 for first, last in part.ranges if first <= offset <= last)

    def _load(self, partition: str, first_offset: int) -> _Partition:
        topic, number = partition.rsplit("/", 1)
        part = _Partition(self.folder / f"{topic}-{number}.json")
        try:
            saved = orjson.loads(part.path.read_bytes())
            ranges = [[int(a), int(b)] for a, b in saved["ranges"]]
            committed = int(saved["committed"])
        except FileNotFoundError:
            return part
        except (OSError, ValueError, KeyError, TypeError) as e:  # a torn or foreign file: count afresh
            log.warning("delivery counts in %s unreadable (%s); counting from 1", part.path, e)
            return part
        if first_offset < committed:
            # The group's offsets were moved back (a replay on purpose): these are not crash loops.
            return part
        # What the new run starts after was committed: only ranges reaching it can be delivered again.
        part.ranges = [r for r in ranges if r[1] >= first_offset]
        part.committed = committed
        return part

    def handing_out(self, spans: dict[str, tuple[int, int]]) -> None:
        """Note, before the model sees them, the first and last offsets of a batch per partition;
        one small file write per partition."""
        for partition, (first, last) in spans.items():
            part = self._open.get(partition)
            if part is None:
                part = self._open[partition] = self._load(partition, first)
            if part.current is None:
                part.current = [first, last]
            else:
                part.current[1] = max(part.current[1], last)
            self._save(part)

    def committed(self, positions: dict[str, int]) -> None:
        """Offsets committed (the next offset per partition): nothing below them is delivered again."""
        for partition, offset in positions.items():
            part = self._open.get(partition)
            if part is not None:
                part.committed = max(part.committed, offset)

    def forget(self) -> None:
        """Partitions revoked or lost: the next assignment reads their files again."""
        self._open.clear()

    def _save(self, part: _Partition) -> None:
        done = part.committed
        ranges = [r for r in part.ranges if r[1] >= done][-MAX_RANGES:]
        part.ranges = ranges
        if part.current is not None and part.current[0] < done:
            part.current[0] = done
        kept = ranges + ([part.current] if part.current is not None and part.current[1] >= done else [])
        tmp = part.path.with_name(part.path.name + ".tmp")
        try:
            part.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(orjson.dumps({"committed": done, "ranges": kept}))
            os.replace(tmp, part.path)
        except OSError as e:  # a counter must never stop the stream; a crash loop is then not caught
            if not self._failing:
                log.warning("cannot write delivery counts to %s (%s): an event that crashes the lane "
                            "will not be dead-lettered after --max-deliveries", part.path, e)
            self._failing = True
            return
        self._failing = False
