"""The head budget of HONES appendix D.2: head-set conditions, the budgets, the elbow rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hones_nn.engine.skipping import heads_by_layer, recorded_layers
from hones_nn.interventions.heads import HeadMeanReplacement, first_layer, head_pairs
from hones_nn.methods.head_budget import (
    BudgetCurve,
    check_budgets,
    default_budgets,
    elbow,
    head_sets,
    unified_budget,
)


def _apply(intervention, x_by_layer: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = {layer: x.clone() for layer, x in x_by_layer.items()}
    for edit in intervention.edits(next(iter(out.values())).shape[0]):
        assert edit.site == "o_proj_input"
        edit.fn(out[edit.layer])
    return out


def test_a_head_set_replaces_each_head_by_the_mean_of_the_clean_others():
    torch.manual_seed(0)
    heads, d = 4, 3
    x = {1: torch.randn(3, 5, heads * d), 2: torch.randn(3, 5, heads * d)}
    conditions = [None, ((1, 0), (1, 2), (2, 3)), (1, 1)]
    got = _apply(HeadMeanReplacement(conditions, heads), x)
    # by hand: every replaced slice from the clean slices of its row and layer
    want = {layer: v.clone() for layer, v in x.items()}
    for row, condition in enumerate(conditions):
        for layer, head in head_pairs(condition):
            view = x[layer][row].reshape(5, heads, d)
            others = [k for k in range(heads) if k != head]
            want[layer][row].reshape(5, heads, d)[:, head] = view[:, others].mean(dim=1)
    for layer in x:
        torch.testing.assert_close(got[layer], want[layer])
    assert torch.equal(got[1][0], x[1][0]) and torch.equal(got[2][0], x[2][0])  # the clean row
    assert not torch.equal(got[1][1], x[1][1]) and not torch.equal(got[2][1], x[2][1])  # the set acts in both
    assert torch.equal(got[2][2], x[2][2])  # a single head in layer 1 leaves layer 2 alone
    # the order of a set does not matter
    reordered = _apply(HeadMeanReplacement([None, ((2, 3), (1, 2), (1, 0)), (1, 1)], heads), x)
    for layer in x:
        torch.testing.assert_close(reordered[layer], got[layer])


def test_a_head_set_starts_at_its_lowest_layer():
    conditions = [None, (3, 1), ((2, 0), (5, 1)), ((4, 0),)]
    assert [head_pairs(c) for c in conditions] == [[], [(3, 1)], [(2, 0), (5, 1)], [(4, 0)]]
    assert [first_layer(c) for c in conditions[1:]] == [3, 2, 4]
    assert heads_by_layer(conditions) == {2: [2], 3: [1], 4: [3]}
    assert recorded_layers(conditions) == (1, 2, 3)
    with pytest.raises(ValueError, match="clean"):
        first_layer(None)


def test_default_budgets_stop_at_the_head_count_or_64():
    assert default_budgets(32) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    assert default_budgets(20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]
    assert default_budgets(1024) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert default_budgets(2) == [1, 2]


def test_budgets_are_checked_against_the_head_count():
    assert check_budgets([8, 2, 2, 4], 32) == [2, 4, 8]
    with pytest.raises(ValueError, match=r"--budgets: \[0, 40\] outside 1\.\.32"):
        check_budgets([0, 4, 40], 32)
    with pytest.raises(ValueError, match="--budgets is empty"):
        check_budgets([], 32)


def test_head_sets_are_the_top_k_of_the_ranking():
    ranked = [(3, 1), (0, 2), (1, 0), (0, 0)]
    assert head_sets(ranked, [1, 3]) == [((3, 1),), ((0, 2), (1, 0), (3, 1))]
    with pytest.raises(ValueError, match="twice"):
        head_sets([(0, 1), (0, 1)], [1])
    with pytest.raises(ValueError, match="larger than the 4 ranked heads"):
        head_sets(ranked, [5])


def test_the_elbow_is_where_the_scaled_drop_is_furthest_above_the_chord():
    budgets = [1, 2, 4, 8, 16]
    drops = [0.5, 0.8, 0.9, 0.95, 0.96]
    # by hand: scaled drop d / 0.96 minus K / 16 is 0.458, 0.708, 0.688, 0.490, 0 -> K = 2
    gaps = [d / 0.96 - k / 16 for k, d in zip(budgets, drops)]
    assert int(np.argmax(gaps)) == 1
    assert elbow(budgets, drops) == 2
    # a later saturation moves the elbow
    assert elbow(budgets, [0.1, 0.2, 0.4, 0.8, 0.82]) == 8


@pytest.mark.parametrize(
    "drops",
    [
        [0.01, 0.02, 0.04, 0.08, 0.16],  # linear in K: on the chord, no saturation
        [0.001, 0.004, 0.016, 0.064, 0.256],  # convex: below the chord
        [-0.01, -0.02, 0.0, -0.03, -0.01],  # never rises
        [0.1, float("nan"), 0.2, 0.3, 0.4],  # a NaN is not a curve
    ],
)
def test_a_curve_without_saturation_has_no_elbow(drops):
    assert elbow([1, 2, 4, 8, 16], drops) is None


def test_the_unified_budget_is_the_largest_elbow():
    assert unified_budget([4, None, 12, 8]) == 12
    assert unified_budget([None, None]) is None


def test_a_curve_with_a_base_of_zero_gives_no_relative_drop():
    curve = BudgetCurve("vqa", [1, 2], 0.0, [0.0, 0.0], [(0, 0), (0, 1)], "vqa_accuracy")
    with pytest.raises(ValueError, match="not positive"):
        _ = curve.relative_drops
    curve = BudgetCurve("vqa", [1, 2, 4], 0.8, [0.4, 0.2, 0.18], [(0, 0), (0, 1), (1, 0), (1, 1)], "vqa_accuracy")
    assert curve.relative_drops == pytest.approx([0.5, 0.75, 0.775])
    assert curve.as_dict()["elbow"] == 2
    assert curve.as_dict()["ranked_heads"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
