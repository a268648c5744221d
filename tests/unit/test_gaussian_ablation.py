"""The Gaussian head ablation (hones-gaussian): the noise written over a head's slice has
mean 0 and the variance of that slice (HONES ablation "Gaussian"), and nothing else moves."""

from __future__ import annotations

import torch

from hones_nn.interventions.heads import HeadGaussianNoise


def test_gaussian_noise_has_mean_zero_and_the_slice_variance():
    torch.manual_seed(0)
    rows, seq, heads, d = 2, 4096, 4, 16
    x = torch.randn(rows, seq, heads * d) * torch.tensor([0.5, 3.0, 1.0, 7.0]).repeat_interleave(d) + 2.0
    original = x.clone()
    # row 0: head 1 replaced; row 1: head 3 replaced, only its last 3000 positions valid (left padding)
    noise = HeadGaussianNoise([(0, 1), (0, 3)], heads, seed=5, valid_lengths=[seq, 3000])
    (edit,) = noise.edits(rows)
    edit.fn(x)
    for row, head, valid in ((0, 1, seq), (1, 3, 3000)):
        cols = slice(head * d, (head + 1) * d)
        before = original[row, seq - valid :, cols].double()
        after = x[row, seq - valid :, cols].double()
        n = after.numel()
        target_sd = before.std()  # the std of the head slice over its own positions
        # mean 0 (not the slice's mean of 2.0): within 5 standard errors
        assert abs(after.mean().item()) < 5 * target_sd.item() / n**0.5
        # variance = the slice's variance: the sample variance's relative SE is sqrt(2 / n)
        ratio = (after.var() / target_sd**2).item()
        assert abs(ratio - 1.0) < 5 * (2.0 / n) ** 0.5
        # the padded positions and every other head are untouched
        assert torch.equal(x[row, : seq - valid], original[row, : seq - valid])
        others = torch.ones(heads * d, dtype=torch.bool)
        others[cols] = False
        assert torch.equal(x[row][:, others], original[row][:, others])


def test_gaussian_noise_is_reproducible_per_row_key():
    x = torch.randn(1, 64, 32)
    a, b = x.clone(), x.clone()
    HeadGaussianNoise([(2, 0)], 2, seed=1, row_keys=["img7"]).edits(1)[0].fn(a)
    HeadGaussianNoise([(2, 0)], 2, seed=1, row_keys=["img7"]).edits(1)[0].fn(b)
    assert torch.equal(a, b)
    c = x.clone()
    HeadGaussianNoise([(2, 0)], 2, seed=1, row_keys=["img8"]).edits(1)[0].fn(c)
    assert not torch.equal(a, c)
