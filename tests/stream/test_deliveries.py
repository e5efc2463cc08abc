"""The Kafka delivery log (lanes/stream/deliveries.py) on real files: one log per simulated run."""

from __future__ import annotations

from pathlib import Path

from inferlane.lanes.stream.deliveries import DeliveryLog

P = "events/0"


def crashed_run(folder: Path, first: int, last: int) -> DeliveryLog:
    """A run that handed out ``first..last`` of partition 0 and died without committing."""
    log = DeliveryLog(folder)
    log.count(P, first)
    log.handing_out({P: (first, last)})
    return log


def test_uncommitted_offsets_count_one_delivery_per_run_that_handed_them_out(tmp_path: Path) -> None:
    crashed_run(tmp_path, 0, 9)
    crashed_run(tmp_path, 0, 4)  # the next run got as far as offset 4
    log = DeliveryLog(tmp_path)
    assert [log.count(P, o) for o in (0, 4, 5, 9, 10)] == [3, 3, 2, 2, 1]


def test_committed_offsets_are_forgotten(tmp_path: Path) -> None:
    run = crashed_run(tmp_path, 0, 9)
    run.committed({P: 6})
    run.handing_out({P: (10, 12)})  # the next batch's write drops what the commit covers
    assert (tmp_path / "events-0.json").read_bytes() == b'{"committed":6,"ranges":[[6,12]]}'
    log = DeliveryLog(tmp_path)
    assert [log.count(P, o) for o in (6, 12, 13)] == [2, 2, 1]


def test_offsets_moved_back_on_purpose_start_counting_afresh(tmp_path: Path) -> None:
    run = crashed_run(tmp_path, 100, 109)
    run.committed({P: 105})
    run.handing_out({P: (110, 110)})
    replay = DeliveryLog(tmp_path)
    assert replay.count(P, 0) == 1 and replay.count(P, 107) == 1  # a replay from 0 is no crash loop
