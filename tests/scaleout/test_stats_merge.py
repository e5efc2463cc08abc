"""The statistics extension across processes: each process's counters add up (pure logic)."""

from __future__ import annotations

from inferlane.core.metrics import ModelStats, merge_stats_docs


def _stats(requests: int, rows: int, forward_s: float, at_ms: int) -> ModelStats:
    s = ModelStats()
    for _ in range(requests):
        s.on_request(True, 0.002, rows)
        s.on_batch(rows, 1, forward_s, [0.001])
    s.on_request(False, 0.5, 0)
    s.last_inference_ms = at_ms
    return s


def test_counts_and_times_add_up_and_the_latest_inference_wins() -> None:
    a, b = _stats(3, 2, 0.010, at_ms=1_000), _stats(5, 4, 0.020, at_ms=2_000)
    merged = merge_stats_docs([a.doc(), b.doc()])
    assert merged["last_inference"] == 2_000
    assert merged["inference_count"] == 3 * 2 + 5 * 4
    assert merged["execution_count"] == 8
    stats = merged["inference_stats"]
    assert isinstance(stats, dict)
    assert stats["success"] == {"count": 8, "ns": a.success.ns + b.success.ns}
    assert stats["fail"] == {"count": 2, "ns": 1_000_000_000}
    assert stats["queue"]["count"] == 8
    assert stats["compute_infer"] == {"count": 8, "ns": a.compute_infer.ns + b.compute_infer.ns}
    assert [(e["batch_size"], e["compute_infer"]["count"]) for e in merged["batch_stats"]] == [(2, 3), (4, 5)]


def test_no_process_and_one_process() -> None:
    assert merge_stats_docs([]) == ModelStats().doc()
    one = _stats(2, 1, 0.001, at_ms=5).doc()
    assert merge_stats_docs([one]) == one


def test_a_malformed_entry_counts_nothing_it_does_not_say() -> None:
    merged = merge_stats_docs([{"inference_count": 4, "inference_stats": {"unknown": {"count": 9}}}])
    assert merged["inference_count"] == 4
    assert merged["inference_stats"] == ModelStats().doc()["inference_stats"]
