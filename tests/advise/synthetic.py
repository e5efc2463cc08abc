"""Profiles written by hand, for the advisor's pure-logic tests (no model is loaded)."""

from __future__ import annotations

from inferlane.advise import Profile, ProfilePoint


def synthetic_profile(curve: dict[int, float], *, p99_factor: float = 1.0, device: str = "synthetic") -> Profile:
    """``{batch_size: p50 forward ms}``; p99 is ``p99_factor`` times p50; rows/s is batch / p50."""
    points = tuple(ProfilePoint(batch_size=b, repeats=100, p50_ms=ms, p99_ms=ms * p99_factor,
                                rows_per_s=b / (ms / 1e3), batch_bytes=b * 128, rss_growth_bytes=0)
                   for b, ms in sorted(curve.items()))
    return Profile("synthetic", "1", "onnx", device, 1, "synthetic", points)


# The seeds' dynamic-batching figures (seed 000_659741d47ff67d9d, "Dynamic Batching"): one request per
# forward pass -> 200 predictions/s; 64 per pass -> 6,400 predictions/s, in about the same wall time.
GPU_UNBATCHED = synthetic_profile({1: 5.0})
GPU_BATCHED = synthetic_profile({1: 5.0, 64: 10.0})

# A small CPU model (an MLP like the demo's fraud model, as a service would see it).
CPU_MLP = synthetic_profile({1: 0.5, 8: 0.6, 64: 1.2, 256: 3.0, 1024: 11.0}, p99_factor=1.5)

# A heavy ranking model: 8 ms for one item, 64 items in 40 ms.
RANKER = synthetic_profile({1: 8.0, 16: 15.0, 64: 40.0, 256: 150.0}, p99_factor=1.3)

# Document understanding: one document takes a minute and a half.
DOCUMENTS = synthetic_profile({1: 90_000.0, 4: 300_000.0})
