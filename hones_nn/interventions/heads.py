"""Head interventions on the ``o_proj`` input, viewed as [B, S, H, d_head].

``HeadMeanReplacement`` is V-SEAM's theta_h (HONES 4.1): at every position, head h's
slice is replaced by the mean of the other H - 1 heads' slices of the same example and
position. Each batch row carries its own (layer, head), so one forward evaluates many
(example, head) pairs; rows with ``None`` run clean. A row's condition may also be a head
*set*, a tuple of (layer, head) pairs replaced together (the head-budget curve of HONES
appendix D.2): every replaced slice is the mean of the other heads' *clean* slices of its
layer, so the result does not depend on the order of the set.

``HeadGaussianNoise`` is the paper's Gaussian ablation: the head's slice is replaced by
Gaussian noise with the slice's own standard deviation (per row, over positions and
dims), from a seeded generator.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import torch

from hones_nn.interventions.base import Intervention, SiteEdit


def is_head_set(condition) -> bool:
    """Whether a condition is a head set ((layer, head) pairs) rather than one (layer, head)."""
    return condition is not None and len(condition) > 0 and isinstance(condition[0], (tuple, list))


def head_pairs(condition) -> list[tuple[int, int]]:
    """The (layer, head) pairs a condition replaces (none for the clean run)."""
    if condition is None:
        return []
    if is_head_set(condition):
        return [(int(layer), int(head)) for layer, head in condition]
    layer, head = condition
    return [(int(layer), int(head))]


def first_layer(condition) -> int:
    """The lowest decoder layer a (non-clean) condition touches: layers below it run clean."""
    pairs = head_pairs(condition)
    if not pairs:
        raise ValueError("the clean condition replaces no head")
    return min(layer for layer, _ in pairs)


def _rows_by_layer(assignments) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row, target in enumerate(assignments):
        for layer, head in head_pairs(target):
            groups[layer].append((row, head))
    return {
        layer: (
            torch.tensor([r for r, _ in pairs], dtype=torch.long),
            torch.tensor([h for _, h in pairs], dtype=torch.long),
        )
        for layer, pairs in sorted(groups.items())
    }


def mean_of_other_heads(x: torch.Tensor, rows: torch.Tensor, heads: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[n, S, d]: for each (row, head) pair, the mean of the other heads' slices."""
    _, seq, width = x.shape
    d = width // num_heads
    sub = x[rows].reshape(len(rows), seq, num_heads, d)
    own = sub[torch.arange(len(rows)), :, heads]  # [n, S, d]
    return (sub.sum(dim=2) - own) / (num_heads - 1)


def write_head_slices(x, rows: torch.Tensor, heads: torch.Tensor, values, num_heads: int) -> None:
    """x[row, :, head slice] <- values[k] for each pair k, in place."""
    seq = x.shape[1]
    d = x.shape[2] // num_heads
    cols = heads[:, None] * d + torch.arange(d, device=heads.device)[None, :]  # [n, d]
    device = x.device
    x[rows.to(device)[:, None, None], torch.arange(seq, device=device)[None, :, None], cols.to(device)[:, None, :]] = (
        values
    )


class HeadMeanReplacement(Intervention):
    def __init__(self, assignments, num_heads: int):
        """``assignments[row]`` = (layer, head) to replace in that batch row, a tuple of such
        pairs (a head set), or None."""
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
    """The paper's Gaussian ablation, reproducible whatever the batch: each (row, head)
    pair draws its noise from a generator seeded by (seed, layer, head, row key) over the
    row's own unpadded positions (the last ``valid_lengths[row]`` of a left-padded row),
    with the std of that row's head slice over the same positions."""

    def __init__(self, assignments, num_heads: int, seed: int = 0, row_keys=None, valid_lengths=None):
        self.assignments = list(assignments)
        self.num_heads = num_heads
        self.seed = seed
        self.row_keys = list(row_keys) if row_keys is not None else [str(i) for i in range(len(self.assignments))]
        self.valid_lengths = list(valid_lengths) if valid_lengths is not None else None
        self.groups = _rows_by_layer(self.assignments)

    def _generator(self, layer: int, head: int, row: int) -> torch.Generator:
        key = f"gaussian:{self.seed}:{layer}:{head}:{self.row_keys[row]}".encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)

    def edits(self, batch_size: int) -> list[SiteEdit]:
        out = []
        for layer, (rows, heads) in self.groups.items():

            def noise(x, rows=rows, heads=heads, layer=layer):
                seq = x.shape[1]
                d = x.shape[2] // self.num_heads
                for row, head in zip(rows.tolist(), heads.tolist()):
                    valid = seq if self.valid_lengths is None else min(seq, int(self.valid_lengths[row]))
                    cols = slice(head * d, (head + 1) * d)
                    own = x[row, seq - valid :, cols]
                    std = own.float().std()
                    eps = torch.randn((valid, d), generator=self._generator(layer, head, row))
                    x[row, seq - valid :, cols] = (eps.to(device=x.device) * std).to(dtype=x.dtype)

            out.append(SiteEdit(layer, "o_proj_input", noise))
        return out

    def describe(self) -> dict:
        return {"kind": "HeadGaussianNoise", "seed": self.seed}
