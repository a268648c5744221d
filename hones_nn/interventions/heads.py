"""Head interventions on the ``o_proj`` input, viewed as [B, S, H, d_head].

``HeadMeanReplacement`` is V-SEAM's theta_h (HONES 4.1): at every position, head h's
slice is replaced by the mean of the other H - 1 heads' slices of the same example and
position. Each batch row carries its own (layer, head), so one forward evaluates many
(example, head) pairs; rows with ``None`` run clean.

``HeadGaussianNoise`` is the paper's Gaussian ablation: the head's slice is replaced by
Gaussian noise with the slice's own standard deviation (per row, over positions and
dims), from a seeded generator.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from hones_nn.interventions.base import Intervention, SiteEdit


def _rows_by_layer(assignments) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row, target in enumerate(assignments):
        if target is None:
            continue
        layer, head = target
        groups[int(layer)].append((row, int(head)))
    return {
        layer: (torch.tensor([r for r, _ in pairs], dtype=torch.long), torch.tensor([h for _, h in pairs], dtype=torch.long))
        for layer, pairs in sorted(groups.items())
    }


def mean_of_other_heads(x: torch.Tensor, rows: torch.Tensor, heads: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[n, S, d]: for each (row, head) pair, the mean of the other heads' slices."""
    batch, seq, width = x.shape
    d = width // num_heads
    sub = x[rows].reshape(len(rows), seq, num_heads, d)
    own = sub[torch.arange(len(rows)), :, heads]  # [n, S, d]
    return (sub.sum(dim=2) - own) / (num_heads - 1)


def write_head_slices(x, rows: torch.Tensor, heads: torch.Tensor, values, num_heads: int) -> None:
    """x[row, :, head slice] <- values[k] for each pair k, in place."""
    seq = x.shape[1]
    d = x.shape[2] // num_heads
    cols = heads[:, None] * d + torch.arange(d)[None, :]  # [n, d]
    device = x.device
    x[rows.to(device)[:, None, None], torch.arange(seq, device=device)[None, :, None], cols.to(device)[:, None, :]] = values


class HeadMeanReplacement(Intervention):
    def __init__(self, assignments, num_heads: int):
        """``assignments[row]`` = (layer, head) to replace in that batch row, or None."""
        if num_heads < 2:
            raise ValueError("mean replacement needs at least 2 heads per layer")
        self.assignments = list(assignments)
        self.num_heads = num_heads
        self.groups = _rows_by_layer(self.assignments)

    def edits(self, batch_size: int) -> list[SiteEdit]:
        if batch_size != len(self.assignments):
            raise ValueError(f"head assignments cover {len(self.assignments)} rows, the batch has {batch_size}")
        out = []
        for layer, (rows, heads) in self.groups.items():
            def replace(x, rows=rows, heads=heads):
                dev_rows, dev_heads = rows.to(x.device), heads.to(x.device)
                values = mean_of_other_heads(x, dev_rows, dev_heads, self.num_heads)
                write_head_slices(x, dev_rows, dev_heads, values, self.num_heads)
            out.append(SiteEdit(layer, "o_proj_input", replace))
        return out

    def describe(self) -> dict:
        return {"kind": "HeadMeanReplacement", "pairs": sum(a is not None for a in self.assignments)}


class HeadGaussianNoise(Intervention):
    def __init__(self, assignments, num_heads: int, seed: int = 0):
        self.assignments = list(assignments)
        self.num_heads = num_heads
        self.seed = seed
        self.groups = _rows_by_layer(self.assignments)

    def edits(self, batch_size: int) -> list[SiteEdit]:
        out = []
        for layer, (rows, heads) in self.groups.items():
            def noise(x, rows=rows, heads=heads, layer=layer):
                n, seq = len(rows), x.shape[1]
                d = x.shape[2] // self.num_heads
                dev_rows, dev_heads = rows.to(x.device), heads.to(x.device)
                sub = x[dev_rows].reshape(n, seq, self.num_heads, d)
                own = sub[torch.arange(n, device=x.device), :, dev_heads]  # [n, S, d]
                std = own.float().reshape(n, -1).std(dim=1).to(x.dtype)
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + layer)
                eps = torch.randn((n, seq, d), generator=generator).to(device=x.device, dtype=x.dtype)
                write_head_slices(x, dev_rows, dev_heads, eps * std[:, None, None], self.num_heads)
            out.append(SiteEdit(layer, "o_proj_input", noise))
        return out

    def describe(self) -> dict:
        return {"kind": "HeadGaussianNoise", "seed": self.seed}
