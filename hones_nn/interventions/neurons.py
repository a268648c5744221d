"""Neuron interventions on z (the input of ``down_proj``): masking and scaling.

Masking zeroes z_i of the selected neurons at every position, generation steps included
(HONES masking evaluation); scaling multiplies them by s_i (steering, HONES 4.3).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from hones_nn.interventions.base import Intervention, SiteEdit


def group_by_layer(neurons) -> dict[int, torch.Tensor]:
    """{layer: sorted LongTensor of neuron indices} from (layer, neuron) pairs."""
    by_layer: dict[int, set[int]] = defaultdict(set)
    for layer, neuron in neurons:
        by_layer[int(layer)].add(int(neuron))
    return {layer: torch.tensor(sorted(idx), dtype=torch.long) for layer, idx in sorted(by_layer.items())}


class NeuronMask(Intervention):
    """z_i <- 0 for the given (layer, neuron) pairs, at every position."""

    shares_prefix = True

    def __init__(self, neurons):
        self.neurons = [(int(layer), int(i)) for layer, i in neurons]
        self.by_layer = group_by_layer(self.neurons)

    def edits(self, batch_size: int) -> list[SiteEdit]:
        out = []
        for layer, idx in self.by_layer.items():

            def zero(z, idx=idx):
                z[..., idx.to(z.device)] = 0

            out.append(SiteEdit(layer, "down_proj_input", zero))
        return out

    def describe(self) -> dict:
        return {"kind": "NeuronMask", "n_neurons": len(self.neurons), "layers": sorted(self.by_layer)}


class NeuronScale(Intervention):
    """z_i <- s_i * z_i for the given neurons (``scales`` aligned with ``neurons``)."""

    shares_prefix = True

    def __init__(self, neurons, scales: torch.Tensor):
        self.neurons = [(int(layer), int(i)) for layer, i in neurons]
        if len(self.neurons) != len(scales):
            raise ValueError(f"{len(self.neurons)} neurons but {len(scales)} scales")
        self.scales = scales
        groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for k, (layer, i) in enumerate(self.neurons):
            groups[layer].append((i, k))
        self.by_layer = {
            layer: (torch.tensor([i for i, _ in pairs]), torch.tensor([k for _, k in pairs]))
            for layer, pairs in sorted(groups.items())
        }

    def edits(self, batch_size: int) -> list[SiteEdit]:
        out = []
        for layer, (idx, pos) in self.by_layer.items():

            def scale(z, idx=idx, pos=pos):
                s = self.scales[pos].to(device=z.device, dtype=z.dtype)
                z[..., idx.to(z.device)] = z[..., idx.to(z.device)] * s

            out.append(SiteEdit(layer, "down_proj_input", scale))
        return out

    def describe(self) -> dict:
        return {"kind": "NeuronScale", "n_neurons": len(self.neurons)}
