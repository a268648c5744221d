"""Rank statistics with numpy only (scipy is not a dependency).

Spearman's rho is Pearson's correlation of the ranks, ties taking the average of the
ranks they span (scipy.stats.rankdata's "average"), so the results equal
``scipy.stats.spearmanr``'s.
"""

from __future__ import annotations

import numpy as np


def average_ranks(values) -> np.ndarray:
    """1-based ranks of a 1-d array, tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"average_ranks needs a 1-d array, got shape {values.shape}")
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each tie group
    return (last - (counts - 1) / 2.0)[inverse]


def spearman(a, b) -> float:
    """Spearman's rho of two equally long 1-d arrays (nan when either is constant)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs arrays of one length, got {a.shape} and {b.shape}")
    return float(spearman_matrix(np.stack([a, b]))[0, 1])


def spearman_matrix(rows) -> np.ndarray:
    """Spearman's rho between every pair of rows of a 2-d array ([n, n]; nan for a constant row)."""
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2:
        raise ValueError(f"spearman_matrix needs a 2-d array, got shape {rows.shape}")
    ranks = np.stack([average_ranks(r) for r in rows])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(ranks)
