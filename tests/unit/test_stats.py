"""Rank statistics without scipy: hand-computed cases, and scipy's own answer when it is there."""

from __future__ import annotations

import numpy as np
import pytest

from hones_nn.utils.stats import average_ranks, spearman, spearman_matrix


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_spearman_hand_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3) vs (1, 3, 2): Pearson of the ranks = 0.5
    assert spearman([0.1, 0.5, 0.9], [1, 9, 4]) == pytest.approx(0.5)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant series has no rank order


def test_spearman_matrix_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rows = np.random.default_rng(0).integers(0, 5, size=(4, 30)).astype(float)  # many ties
    assert np.allclose(spearman_matrix(rows), scipy_stats.spearmanr(rows, axis=1).statistic)
