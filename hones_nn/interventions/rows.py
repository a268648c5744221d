"""Per-example neuron factors on z (the input of ``down_proj``): z[b, :, i] <- f[b, l, i] * z[b, :, i].

Used by the fuzzy-set VQA modulation (Wang et al.: every example gets its own factors
1 + lambda_x mu_x + lambda_q mu_q, from the concepts of its image and the interrogative
word of its question) and by the per-example suppression check (factor 0). The factor
applies at every position, generation steps included (the KV-cached steps have S = 1).

Scaling z or scaling g = act_fn(gate_proj(x)) by the same factor is the same thing,
since z = g * up_proj(x); the site is z like every other neuron intervention here.
"""

from __future__ import annotations

import torch

from hones_nn.interventions.base import Intervention, SiteEdit


class RowNeuronFactor(Intervention):
    """``factors``: [B, L, d_ff] float tensor, one row per example of the batch (in batch
    order). Layers whose factors are all exactly 1 are left untouched."""

    def __init__(self, factors: torch.Tensor):
        if factors.dim() != 3:
            raise ValueError(f"factors must be [batch, layers, d_ff], got shape {tuple(factors.shape)}")
        self.factors = factors.float()
        self.layers = [layer for layer in range(factors.shape[1]) if not torch.all(self.factors[:, layer] == 1)]

    def edits(self, batch_size: int) -> list[SiteEdit]:
        if batch_size != self.factors.shape[0]:
            raise ValueError(f"factors for {self.factors.shape[0]} examples but the batch has {batch_size}")
        out = []
        for layer in self.layers:
            f = self.factors[:, layer]

            def scale(z, f=f):
                z[...] = z * f.to(device=z.device, dtype=z.dtype).unsqueeze(1)

            out.append(SiteEdit(layer, "down_proj_input", scale))
        return out

    def describe(self) -> dict:
        return {"kind": "RowNeuronFactor", "batch": int(self.factors.shape[0]), "layers": self.layers}
