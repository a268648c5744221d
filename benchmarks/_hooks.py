"""Plain-PyTorch baselines: the reference code's way of intervening, with module hooks.

Written independently of ``hones_nn.interventions`` (only the adapter is used, to find
the modules), so comparing their results with the library's is a real cross-check.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch


def mean_replace_(x: torch.Tensor, rows: list[int] | None, heads: list[int], num_heads: int) -> torch.Tensor:
    """V-SEAM's theta_h on an ``o_proj`` input [B, S, H*d]: for each (row, head), that
    head's slice <- mean of the other H - 1 heads' slices (same row, same position).
    ``rows=None``: every row, one head (``heads[0]``). Returns a new tensor."""
    b, s, width = x.shape
    d = width // num_heads
    out = x.clone()
    view = out.view(b, s, num_heads, d)
    src = x.view(b, s, num_heads, d)
    if rows is None:
        h = heads[0]
        view[:, :, h] = (src.sum(dim=2) - src[:, :, h]) / (num_heads - 1)
        return out
    r = torch.as_tensor(rows, dtype=torch.long, device=x.device)
    h = torch.as_tensor(heads, dtype=torch.long, device=x.device)
    sub = src[r]  # [n, S, H, d]
    view[r, :, h] = (sub.sum(dim=2) - sub[torch.arange(len(r), device=x.device), :, h]) / (num_heads - 1)
    return out


@contextlib.contextmanager
def one_head_hook(model, adapter, layer: int, head: int, num_heads: int):
    """The reference loop's intervention: a forward-pre-hook on ``o_proj`` of ``layer``
    replacing ``head`` in every row (one example at a time), at every position and step."""
    module = adapter.o_proj(model, layer)

    def hook(_module, args):
        return (mean_replace_(args[0], None, [head], num_heads), *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def row_heads_hooks(model, adapter, assignments, num_heads: int):
    """One pre-hook per layer applying ``assignments[row] = (layer, head) | None``
    (the batched equivalent of ``HeadMeanReplacement``)."""
    groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row, target in enumerate(assignments):
        if target is not None:
            groups[int(target[0])].append((row, int(target[1])))
    handles = []
    for layer, pairs in groups.items():
        rows = [r for r, _ in pairs]
        heads = [h for _, h in pairs]

        def hook(_module, args, rows=rows, heads=heads):
            return (mean_replace_(args[0], rows, heads, num_heads), *args[1:])

        handles.append(adapter.o_proj(model, layer).register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def read_down_proj_inputs(model, adapter, num_layers: int, store: dict, fn=None):
    """Forward-pre-hooks on every ``down_proj`` storing ``fn(z)`` (default z[:, -1]) per layer."""
    fn = fn or (lambda layer, z: z[:, -1].detach().clone())
    handles = []
    for layer in range(num_layers):

        def hook(_module, args, layer=layer):
            store[layer] = fn(layer, args[0])

        handles.append(adapter.down_proj(model, layer).register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
