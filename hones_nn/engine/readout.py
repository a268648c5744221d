"""Reading the model at the last prompt position T, and its readout weights.

The baselines that project onto the vocabulary (DLA, LLM-Knowledge, Pan et al., the
logit lens, editing) and the gradient methods (Grad, QRNCA, group patching, AtP, steering)
share these reads: one nnsight trace per batch of a task's attribution prompts
(``Task.attribution_prompt``: retrieval's positive candidate, else the one prompt),
values at T = position -1 (inputs are left-padded), and the weights they are projected
through (unembedding rows, the final norm, ``W_down`` write-out vectors), read inside the
traces (below), so a remote client needs none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import nnsight
import torch

from hones_nn.engine.encoding import encode_prompts, to_device
from hones_nn.interventions.base import site_value
from hones_nn.models.adapters import Encoded
from hones_nn.tasks.base import Item

READ_SITES = ("r", "g", "z")


def rms(h: torch.Tensor, eps: float) -> torch.Tensor:
    """sqrt(mean(h^2) + eps) over the last axis (the RMSNorm denominator), float64."""
    return torch.sqrt(h.double().pow(2).mean(-1) + eps)


# ---------------------------------------------------------------- weight reads inside a trace
#
# A remote client holds no weights (``LoadedModel.has_weights`` False): the readout
# weights are read where the model is, inside the trace body, and only the reduced values
# come back. These helpers run inside ``with engine.envoy.trace(...)``: locally on the
# loaded weights, on NDIF on the server's (shipped by value with the request), and in a
# dry run on the meta weights under fake tensors. Local and remote runs therefore compute
# the same numbers the same way.


def target_token_rows(ids: Sequence[int], weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One target as tensors that travel with a request: (ids long [n], weights float32 [n])."""
    return torch.tensor(list(ids), dtype=torch.long), torch.tensor(list(weights), dtype=torch.float32)


def direction_rows(W_U, targets: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Inside a trace: u per target, [n, hidden] float32 on W_U's device, unit norm (eps
    1e-12): the weighted mean of the unembedding rows W_U[ids] (``target_token_rows``)."""
    rows = []
    for ids, w in targets:
        w = w.to(W_U.device)
        u = (W_U.index_select(0, ids.to(W_U.device)).float() * w[:, None]).sum(0) / w.sum()
        rows.append(u / u.norm().clamp_min(1e-12))
    return torch.stack(rows)


def contribution_read(z, proj):
    """A ``down_proj_input`` read: z(T) * <W_down[:, i], u> per neuron, [rows, d_ff] float32 CPU."""
    return (z[:, -1].float() * proj.to(z.device)).cpu()


def projected_write_outs(envoy, adapter, u: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
    """Inside a trace: W_down^T u for every layer, each [rows, d_ff] float32 (on the
    weights' device): the neuron-wise readout of direction u, never sent over the wire."""
    out = []
    for layer in range(num_layers):
        W = adapter.down_proj(envoy, layer).weight  # [hidden, d_ff]
        out.append(u.to(W.device) @ W.float())
    return out


def encode_attribution_prompts(engine, td, items: Sequence[Item]) -> Encoded:
    """The items' attribution prompts (no answers), one left-padded batch."""
    prompts = [td.task.attribution_prompt(item) for item in items]
    return encode_prompts(engine.loaded, td.images, prompts, reference_compat=td.task.reference_compat)


def attribution_inputs(engine, td, items: Sequence[Item]) -> dict:
    """:func:`encode_attribution_prompts`' model inputs, on the engine's device."""
    return to_device(encode_attribution_prompts(engine, td, items).inputs, engine.device)


@torch.no_grad()
def read_at_T(engine, td, items: Sequence[Item], sites: Sequence[str] = ("z",), final: bool = False, reduce=None):
    """One trace: values at T (position -1, inputs left-padded), float32 CPU.

    ``sites`` among "r" (the residual entering the MLP: the input of the decoder layer's
    ``post_attention_layernorm``), "g" (act_fn output), "z" (down_proj input); each comes
    back as [B, L, width]; ``final`` adds "h" [B, hidden], the input of the final norm.

    ``reduce(values, envoy, adapter)``, when given, runs inside the trace on those values
    (where the weights are: it may read them through ``envoy``) and only its result comes
    back: a method that projects onto weights needs no weights on the client, and sends
    back scores instead of activations. It must be a module-level function (or a
    ``functools.partial`` of one) of the package, so a remote request ships it by value.
    """
    unknown = sorted(set(sites) - set(READ_SITES))
    if unknown:
        raise ValueError(f"unknown read sites {unknown}; choose among {', '.join(READ_SITES)}")
    adapter = engine.adapter
    L = adapter.sizes(engine.model).num_layers
    inputs = attribution_inputs(engine, td, items)
    keep = reduce is None
    saved: dict[str, list] = {s: [] for s in sites}
    with engine.envoy.trace(**inputs):
        for layer in range(L):  # execution order: r, then g, then z, layer by layer
            if "r" in sites:
                block = adapter.layer(engine.envoy, layer)
                value = block.post_attention_layernorm.input[:, -1].float().cpu()
                saved["r"].append(nnsight.save(value) if keep else value)
            if "g" in sites:
                value = site_value(engine.envoy, adapter, layer, "act_output")[:, -1].float().cpu()
                saved["g"].append(nnsight.save(value) if keep else value)
            if "z" in sites:
                value = site_value(engine.envoy, adapter, layer, "down_proj_input")[:, -1].float().cpu()
                saved["z"].append(nnsight.save(value) if keep else value)
        if final:
            h = adapter.final_norm(engine.envoy).input[:, -1].float().cpu()
            if keep:
                h = nnsight.save(h)
        if not keep:
            values = {s: torch.stack(list(v), dim=1) for s, v in saved.items()}
            if final:
                values["h"] = h
            result = nnsight.save(reduce(values, engine.envoy, adapter))
    if not keep:
        return result
    out = {s: torch.stack(list(v), dim=1) for s, v in saved.items()}
    if final:
        out["h"] = h
    return out


def final_norm_eps(loaded) -> float:
    """The final RMSNorm's epsilon (a module attribute: readable on a meta-device model)."""
    norm = loaded.adapter.final_norm(loaded.model)
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = getattr(norm, "eps", 1e-6)
    return float(eps if eps is not None else 1e-6)


@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """requires_grad False on every parameter inside the block; the flags are restored after.

    Gradients are then taken only with respect to the activations the method marks, the
    backward walks only the graph from them onwards, and no parameter ``.grad`` is written.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def image_positions(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """bool [B, S]: positions holding image features; an error if a row has none."""
    mask = input_ids == image_token_id
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"rows {empty} have no image token (id {image_token_id}) in the prompt: the method needs "
            "image positions; check the processor builds image placeholders"
        )
    return mask
