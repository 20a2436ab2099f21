"""Seeded subsets shared by the stages that cap what they hold or fit."""

from __future__ import annotations

import numpy as np


def seeded_subset(rows: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """``rows`` as they are when at most ``limit`` (or no limit), else a seeded draw of ``limit``
    of them without replacement, sorted (so stored order, and contiguous reads, are kept)."""
    rows = np.asarray(rows)
    if limit is None or len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
