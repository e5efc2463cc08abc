"""Pooling and L2 normalisation: token vectors → one vector per text (embedding models).

    pooled = pool(hidden, mask, "mean")     # [rows, tokens, D] and [rows, tokens] → [rows, D]
    unit = l2_normalize(pooled)

The same arithmetic as sentence-transformers' Pooling and Normalize modules (mean over the
attention mask with the count clamped at 1e-9; norms clamped at 1e-12), in float32.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def pool(hidden: np.ndarray, mask: np.ndarray, mode: Literal["mean", "cls"]) -> np.ndarray:
    """One vector per row: the mean of the token vectors where ``mask`` is 1, or the first token's."""
    if hidden.ndim != 3 or hidden.shape[:2] != mask.shape:
        raise ValueError(f"pooling needs token vectors [rows, tokens, D] matching the mask {list(mask.shape)}, "
                         f"got {list(hidden.shape)}")
    hidden = hidden.astype(np.float32, copy=False)
    if mode == "cls":
        return np.ascontiguousarray(hidden[:, 0, :])
    m = mask.astype(np.float32)
    summed = np.einsum("rtd,rt->rd", hidden, m)
    counts = np.maximum(m.sum(axis=1, keepdims=True), np.float32(1e-9))
    return np.asarray(summed / counts, dtype=np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (a zero row stays zero)."""
    norms = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    return np.asarray(x / norms, dtype=np.float32)
