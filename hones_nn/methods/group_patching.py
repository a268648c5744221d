"""Group patching: activation patching of blocks of FFN neurons at T, refined by halving.

Zhang and Nanda (2024) study activation patching of groups of components but define no
FFN-neuron ranking; the HONES paper compares against one (Tables 1-2, appendix D.6).
**This recipe is our construction** (docs/methods.md, "Baselines"), per example x:

1. **Clean run**: z_l(T) of every layer, the logits at T, and the input of the first
   decoder layer (the merged embeddings: text embeddings with the projected image
   features scattered into the image-token positions, the tensor the language model
   receives as ``inputs_embeds``).
2. **Corruption** (default ``corruption="noise"``): Gaussian noise added to that input at
   the image-token positions (``input_ids == image_token_id``), i.i.d. per element with
   std = ``noise_scale`` (default 3, ROME's causal tracing) x sigma, sigma the std of the
   clean image-position embeddings of this example (all elements; the spec says "3x the
   embedding std" without fixing the population: we take the example's own image
   features, so the noise matches the scale of what it corrupts). The noise is drawn
   once per example from a generator seeded by (seed, row of the split), so every
   patched row of the example sees the same corruption and reruns are identical.
   Implemented as an nnsight edit of decoder layer 0's input (``layers[0].input =
   h + noise``): ``embed_tokens``' output is text only in LLaVA, the image features are
   merged after it. Alternatively ``counterfactual``: a user-supplied image (a PIL
   image, a path, or a callable ``item -> image``) replaces the example's image; no noise.
3. **Metric**: m(run) = logit_y(T) - logit_{t*}(T), y the first gold answer token
   (retrieval " Yes" on the positive prompt; caption the first token of the task's gold
   reference; see ``hones_nn.methods.grad.gold_token_id``), t* the corrupted run's top
   token at T (its runner-up when the top token is y). Examples whose corruption moves
   the metric by less than ``min_gap`` (1e-6, logits) have no normalised recovery: they
   are skipped and counted (``n_skipped`` in the table metadata); none left is an error.
4. **Blocks**: layer l's d_ff neurons in consecutive blocks of G = ``block`` (default
   256; the last block of a layer may be smaller; G >= d_ff makes one block per layer).
   Patching block B of layer l puts the clean z_l(T)[B] into the corrupted run (every
   other value corrupted, later layers recomputed); its score is the normalised recovery
   (m_patched - m_corrupt) / (m_clean - m_corrupt). Blocks are rows of one forward
   (``batch_size`` rows per forward; the one-example encoding replicated).
5. **Refinement by halving**: the top ``refine`` blocks (default 4) of the example, over
   all layers (ties: lower layer, lower index), are halved (first half floor(n/2)); both
   halves are scored; the best ``beam`` (default 4) of the groups just scored in each
   refined block are halved again (a single neuron stops there), and so on down to
   single neurons: about log2 G rounds of at most 2 * beam rows per refined block, all
   refined blocks batched together.
6. **Neuron score of the example**: ``unrefined="share"`` (default): the recovery of the
   smallest scored group holding the neuron divided by that group's size (a single
   neuron: its own recovery; a never-refined block: its score / block size).
   ``unrefined="zero"``: only neurons scored alone keep a score, every other neuron 0.
7. **Table**: the mean over the non-skipped examples.

Everything runs under ``torch.no_grad``; shards checkpoint sums through the engine's shard loop.

Cost per example (no backward): 2 + ceil(L * ceil(d_ff / G) / batch_size) forwards
+ about log2(G) refinement rounds of up to 2 * beam * refine rows.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import nnsight
import numpy as np
import torch

from hones_nn.engine.encoding import encode_prompts, repeat_inputs, to_device
from hones_nn.engine.readout import attribution_inputs, image_positions
from hones_nn.interventions.base import SiteEdit, apply_edits
from hones_nn.methods.base import Method, MethodResult, Passes, RunContext, ShardPlan, register_method
from hones_nn.methods.grad import gold_token_id

UNREFINED = ("share", "zero")


# ---------------------------------------------------------------- runs


def _metric_rows(
    ctx: RunContext, inputs: dict, noise: torch.Tensor | None, groups: list, clean_z: torch.Tensor
) -> torch.Tensor:
    """Logits at T [len(groups), vocab] of the corrupted run, each row patching one group.

    ``groups``: (layer, LongTensor of neuron indices) or None (no patch). ``noise``:
    [S, H] added to decoder layer 0's input (None for a counterfactual input).
    """
    engine, adapter = ctx.engine, ctx.loaded.adapter
    d_ff = ctx.sizes.d_ff
    out = []
    for start in range(0, len(groups), ctx.batch_size):
        chunk = groups[start : start + ctx.batch_size]
        rows = repeat_inputs(inputs, len(chunk))
        masks: dict[int, torch.Tensor] = {}
        for r, group in enumerate(chunk):
            if group is None:
                continue
            layer, idx = group
            mask = masks.setdefault(layer, torch.zeros(len(chunk), d_ff, dtype=torch.bool))
            mask[r, idx] = True
        edits = []
        for layer, mask in masks.items():

            def patch(z, mask=mask.to(engine.device), value=clean_z[layer]):  # noqa: B008 (bound per layer)
                z[:, -1] = torch.where(mask.to(z.device), value.to(z.device, z.dtype), z[:, -1])

            edits.append(SiteEdit(layer, "down_proj_input", patch))
        with torch.no_grad(), engine.envoy.trace(**rows):
            if noise is not None:
                first = adapter.layer(engine.envoy, 0)
                h = first.input
                first.input = h + noise.to(h.device, h.dtype)
            apply_edits(engine.envoy, adapter, edits)
            logits = nnsight.save(adapter.lm_head(engine.envoy).output[:, -1].float().cpu())
        out.append(logits)
    return torch.cat(out)


def clean_run(ctx: RunContext, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z(T) [L, d_ff], logits at T [vocab], decoder layer 0 input [S, H]) of one example."""
    engine, adapter = ctx.engine, ctx.loaded.adapter
    num_layers = ctx.sizes.num_layers
    with torch.no_grad(), engine.envoy.trace(**inputs):
        h0 = nnsight.save(adapter.layer(engine.envoy, 0).input[0].detach().clone())
        z = nnsight.save(
            [adapter.down_proj(engine.envoy, layer).input[0, -1].detach().clone() for layer in range(num_layers)]
        )
        logits = nnsight.save(adapter.lm_head(engine.envoy).output[0, -1].float().cpu())
    return torch.stack(list(z)), logits, h0


def _counterfactual_image(ctx: RunContext, item):
    source = ctx.options.get("counterfactual")
    if callable(source):
        return source(item)
    if isinstance(source, (str, Path)):
        from PIL import Image

        return Image.open(source).convert("RGB")
    return source  # a PIL image


def corruption(ctx: RunContext, item, clean_h0: torch.Tensor, clean_inputs: dict) -> tuple[dict, torch.Tensor | None]:
    """(inputs of the corrupted run, noise [S, H] for layer 0's input or None)."""
    if ctx.options.get("counterfactual") is not None:
        prompt = ctx.td.task.attribution_prompt(item)
        enc = encode_prompts(
            ctx.loaded,
            [_counterfactual_image(ctx, item)],
            [replace(prompt, image_index=0)],
            reference_compat=ctx.td.task.reference_compat,
        )
        return to_device(enc.inputs, ctx.engine.device), None
    scale = float(ctx.options.get("noise_scale", 3.0))
    image = image_positions(clean_inputs["input_ids"], ctx.sizes.image_token_id)[0].cpu()
    sigma = float(clean_h0[image.to(clean_h0.device)].float().std())
    generator = torch.Generator().manual_seed(int(ctx.seed) * 1_000_003 + int(item.row))
    noise = torch.zeros(tuple(clean_h0.shape), dtype=torch.float32)
    noise[image] = torch.randn(int(image.sum()), clean_h0.shape[-1], generator=generator) * (scale * sigma)
    return clean_inputs, noise


def blocks_of(num_layers: int, d_ff: int, block: int) -> list[tuple[int, torch.Tensor]]:
    return [
        (layer, torch.arange(s, min(s + block, d_ff))) for layer in range(num_layers) for s in range(0, d_ff, block)
    ]


def example_scores(
    ctx: RunContext,
    item,
    block: int = 256,
    refine: int = 4,
    beam: int = 4,
    unrefined: str = "share",
    min_gap: float = 1e-6,
) -> dict | None:
    """One example: {"neurons": [L, d_ff], "blocks": [n_blocks] recoveries, ...}; None if skipped."""
    sizes = ctx.sizes
    inputs = attribution_inputs(ctx.engine, ctx.td, [item])
    clean_z, clean_logits, h0 = clean_run(ctx, inputs)
    corrupt_inputs, noise = corruption(ctx, item, h0, inputs)
    y = gold_token_id(ctx, item)
    corrupt_logits = _metric_rows(ctx, corrupt_inputs, noise, [None], clean_z)[0]
    ranked = torch.argsort(corrupt_logits, descending=True, stable=True)
    t_star = int(ranked[0]) if int(ranked[0]) != y else int(ranked[1])

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[..., y] - logits[..., t_star]).double()

    m_clean, m_corrupt = float(metric(clean_logits)), float(metric(corrupt_logits))
    gap = m_clean - m_corrupt
    if not abs(gap) > min_gap:
        return None

    def recovery(groups):
        return (metric(_metric_rows(ctx, corrupt_inputs, noise, groups, clean_z)) - m_corrupt) / gap

    blocks = blocks_of(sizes.num_layers, sizes.d_ff, block)
    block_scores = recovery(blocks)
    scored = [(g, float(s)) for g, s in zip(blocks, block_scores)]  # coarse to fine
    order = torch.argsort(-block_scores, stable=True)[: max(0, refine)].tolist()
    frontier = {b: [blocks[b]] for b in order}
    while True:
        children, owners = [], []
        for b, groups in frontier.items():
            for layer, idx in groups:
                if len(idx) > 1:
                    half = len(idx) // 2
                    children += [(layer, idx[:half]), (layer, idx[half:])]
                    owners += [b, b]
        if not children:
            break
        child_scores = recovery(children).tolist()
        scored += list(zip(children, child_scores))
        frontier = {}
        for b in order:
            mine = [(s, k) for k, (owner, s) in enumerate(zip(owners, child_scores)) if owner == b]
            mine.sort(key=lambda e: (-e[0], e[1]))
            frontier[b] = [children[k] for _, k in mine[:beam]]

    neurons = torch.zeros(sizes.num_layers, sizes.d_ff, dtype=torch.float64)
    for (layer, idx), s in sorted(scored, key=lambda e: -len(e[0][1])):  # stable: finer groups win
        if unrefined == "share" or len(idx) == 1:
            neurons[layer, idx] = s / len(idx)
    return {"neurons": neurons, "blocks": block_scores.double(), "m_clean": m_clean, "m_corrupt": m_corrupt}


@register_method
class GroupPatching(Method):
    name = "group-patching"
    summary = (
        "Group patching (our construction after Zhang & Nanda 2024): normalised recovery of clean z(T) "
        "blocks patched into an image-corrupted run, top blocks refined by halving"
    )
    needs = "discovery split of the task (gold answers); optional counterfactual image"
    cost = (
        "2 + ceil(L * ceil(d_ff / G) / batch_size) forwards + ~log2(G) refinement rounds of "
        "<= 2 * beam * refine rows per example (G = block, default 256; no backward)"
    )
    site = "z (down_proj input) at T; corruption on the image-token embeddings"

    @classmethod
    def passes(cls, shape, options: dict) -> Passes:
        block = int(options.get("block", 256))
        rows = 2 + shape.num_layers * math.ceil(shape.d_ff / block)
        return Passes(rows, f"{rows} forwards (2 + L * ceil(d_ff / G), G = {block}) + refinement", "forward")

    def plan(self, ctx: RunContext) -> ShardPlan:
        opts = ctx.options
        block = int(opts.get("block", 256))
        refine = int(opts.get("refine", 4))
        beam = int(opts.get("beam", 4))
        unrefined = str(opts.get("unrefined", "share"))
        min_gap = float(opts.get("min_gap", 1e-6))
        if block < 1 or beam < 1 or refine < 0:
            raise ValueError(f"group patching needs block >= 1, beam >= 1, refine >= 0 (got {block}, {beam}, {refine})")
        if unrefined not in UNREFINED:
            raise ValueError(f"unknown unrefined rule {unrefined!r}; choose one of {', '.join(UNREFINED)}")
        source = opts.get("counterfactual")
        corruption_name = (
            "noise"
            if source is None
            else f"counterfactual:{source}"
            if isinstance(source, (str, Path))
            else f"counterfactual:{type(source).__name__}"
        )
        return ShardPlan(
            config={
                "block": block,
                "refine": refine,
                "beam": beam,
                "unrefined": unrefined,
                "min_gap": min_gap,
                "noise_scale": float(opts.get("noise_scale", 3.0)),
                "corruption": corruption_name,
            }
        )

    def shard(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> dict[str, np.ndarray]:
        c = plan.config
        n_blocks = ctx.sizes.num_layers * math.ceil(ctx.sizes.d_ff / c["block"])
        total = torch.zeros(ctx.sizes.num_layers, ctx.sizes.d_ff, dtype=torch.float64)
        block_total = torch.zeros(n_blocks, dtype=torch.float64)
        count = skipped = 0
        for i in item_ids:
            result = example_scores(
                ctx, ctx.td.items[i], c["block"], c["refine"], c["beam"], c["unrefined"], c["min_gap"]
            )
            if result is None:
                skipped += 1
                continue
            total += result["neurons"]
            block_total += result["blocks"]
            count += 1
        return {
            "sum": total.numpy(),
            "block_sum": block_total.numpy(),
            "count": np.array([float(count)]),
            "skipped": np.array([float(skipped)]),
        }

    def reduce(self, ctx: RunContext, parts: list[dict[str, np.ndarray]], plan: ShardPlan) -> MethodResult:
        count = sum(p["count"][0] for p in parts)
        skipped = sum(p["skipped"][0] for p in parts)
        if count == 0:
            raise ValueError(
                f"group patching: the corruption did not move logit(gold) - logit(top corrupted token) on any of the "
                f"{int(skipped)} example(s), so no recovery can be normalised; raise noise_scale or pass a "
                "counterfactual image (options['counterfactual'])"
            )
        scores = sum(p["sum"] for p in parts) / count
        blocks_mean = (sum(p["block_sum"] for p in parts) / count).reshape(ctx.sizes.num_layers, -1)
        return MethodResult(
            scores=scores,
            meta={
                **plan.config,
                "n_used": int(count),
                "n_skipped_no_gap": int(skipped),
                "metric": "logit(y) - logit(t*) at T, t* = top token of the corrupted run (runner-up if = y)",
                "mean_block_recovery": blocks_mean.round(6).tolist(),
            },
        )
