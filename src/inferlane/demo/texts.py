"""Synthetic sentences for text-model tests and benchmarks: reproducible, of mixed lengths.

    sentences(1000, seed=0)                      # mostly short, a few long
    sentences(1000, seed=0, long_share=0.5)      # half of them long

Words come from a fixed vocabulary so every run (and every machine) makes the same texts.
"""

from __future__ import annotations

import numpy as np

_WORDS = (
    "the", "a", "model", "server", "batch", "request", "token", "text", "vector", "queue", "latency",
    "river", "mountain", "city", "night", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "music",
    "coffee", "window", "garden", "paper", "signal", "network", "memory", "engine", "cloud", "market",
    "price", "student", "teacher", "bridge", "winter", "summer", "ocean", "forest", "light", "shadow",
    "machine", "learning", "inference", "embedding", "sentence", "similar", "different", "small", "large",
    "fast", "slow", "reads", "writes", "sends", "keeps", "finds", "builds", "opens", "closes", "runs",
    "walks", "sings", "carries", "holds", "makes", "under", "above", "near", "far", "before", "after",
    "with", "without", "because", "while", "although", "into", "onto",
)


def sentences(n: int, seed: int = 0, *, long_share: float = 0.05, short_words: tuple[int, int] = (3, 12),
              long_words: tuple[int, int] = (80, 180)) -> list[str]:
    """``n`` sentences: ``long_share`` of them long (``long_words`` words), the rest short."""
    rng = np.random.default_rng(seed)
    is_long = rng.random(n) < long_share
    lo_s, hi_s = short_words
    lo_l, hi_l = long_words
    counts = np.where(is_long, rng.integers(lo_l, hi_l + 1, n), rng.integers(lo_s, hi_s + 1, n))
    words = rng.integers(0, len(_WORDS), int(counts.sum()))
    out: list[str] = []
    at = 0
    for i, c in enumerate(counts.tolist()):
        text = " ".join(_WORDS[w] for w in words[at:at + c].tolist())
        out.append(f"{text.capitalize()} {i}.")
        at += c
    return out
