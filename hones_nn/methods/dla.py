"""DLA: direct logit attribution of FFN neurons (Elhage et al. 2021), a HONES baseline.

shared/spec/methods.md, "Baselines": neuron (l, i) writes z_{l,i}(T) W_down[:, i] into the
residual stream; through the final RMSNorm with its scale frozen at the clean run's value
and the unembedding, its direct effect on the logit of the target token y at the last
prompt position T is

    DLA_{l,i}(x) = z_{l,i}(T) * (gamma * W_down[:, i]) . W_U[y] / sigma_T,
    sigma_T = sqrt(mean_k h_k(T)^2 + eps),

h(T) the final residual (the input of the final norm) of the clean run, gamma the final
norm's weight, eps its epsilon (so the DLA of every residual component sums exactly to
the logit: logit_y = sum_{l,i} DLA_{l,i} + (gamma * (h - sum_l mlp_out_l)) . W_U[y] /
sigma_T, the second term being the embeddings' and attention blocks' direct effects).
No centring (the logit is not made relative to the mean logit). Score = E_x DLA_{l,i}(x),
ranked descending.

Target y (documented choices where the spec says "y the gold target"):

* VQA, OCR: the first non-special token of the gold answer / text (the token the model
  must predict at T); ``target="mean"`` uses the mean of W_U over all its target tokens;
* retrieval: the decision token " Yes" (same id as evaluation), the positive candidate's
  prompt (as HONES);
* caption: the first token of the teacher-forced gold reference (``item.prompts[0].answer``,
  one reference drawn per image with a fixed seed), i.e. again the token predicted at T;
  ``target="mean"`` averages over that reference's tokens.

Contrast y' (``contrast`` option): None (default), a token id (int), a text (its first
non-special token; mind the leading space of BPE vocabularies), or ``"decision"``
(retrieval only: " No", the token the metric contrasts with " Yes"). With a contrast the
direction is W_U[y] - W_U[y'] (a logit difference).

Recipe: one nnsight trace per batch saves z(T) of every layer ([B, d_ff] each) and h(T);
outside the trace one matrix product per layer projects every neuron's write-out on the
batch's directions. Shards are checkpointed.

This module also holds the readout helpers of the baselines that read the model at T
(LLM-Knowledge, Pan et al.): target tokens, one-trace reads of r / g / z / h at T, the
final norm's parameters and write-out projections.

Cost: 1 forward per example (prompt prefill only), no backward.
"""

from __future__ import annotations

import nnsight
import numpy as np
import torch

from hones_nn.evaluation.engine import encode_prompts
from hones_nn.interventions.base import site_value
from hones_nn.methods.base import Method, MethodResult, RunContext, register_method
from hones_nn.methods.hones import hones_prompt, target_token_ids
from hones_nn.runner.shards import ShardedRun
from hones_nn.tasks.retrieval import decision_token_ids

TARGET_MODES = ("first", "mean")

# ---------------------------------------------------------------- targets


def target_ids(tokenizer, task, item) -> list[int]:
    """The gold continuation's tokens at T (see the module docstring), specials removed."""
    if task.name == "retrieval":
        return [decision_token_ids(tokenizer)[0]]
    text = item.prompts[0].answer if task.name == "caption" else task.target_texts(item)[0]
    ids = target_token_ids(tokenizer, text or "")
    if not ids:
        raise ValueError(
            f"item {item.item_id!r}: the target {text!r} has no non-special token in this tokenizer, so the "
            "target logit is undefined; fix or drop the item, or use an activation baseline ('ap', 'ma')"
        )
    return ids


def target_mode(options: dict) -> str:
    mode = options.get("target", "first") or "first"
    if mode not in TARGET_MODES:
        raise ValueError(f"target={mode!r}; choose one of {', '.join(TARGET_MODES)}")
    return mode


def contrast_id(tokenizer, task, contrast) -> int | None:
    """The contrast token y' of the ``contrast`` option (None: no contrast)."""
    if contrast is None or contrast == "":
        return None
    if isinstance(contrast, (int, np.integer)):
        return int(contrast)
    if contrast == "decision":
        if task.name != "retrieval":
            raise ValueError("contrast='decision' (' No') is defined for retrieval only; give a token text or id")
        return decision_token_ids(tokenizer)[1]
    ids = target_token_ids(tokenizer, str(contrast))
    if not ids:
        raise ValueError(f"contrast {contrast!r} has no non-special token in this tokenizer")
    return ids[0]


def unembedding_rows(ctx: RunContext, ids: list[int]) -> torch.Tensor:
    """W_U[ids], float32 on the CPU."""
    W_U = ctx.loaded.adapter.lm_head(ctx.loaded.model).weight
    index = torch.tensor(ids, dtype=torch.long, device=W_U.device)
    return W_U.detach().index_select(0, index).float().cpu()


def target_directions(ctx: RunContext, items, mode: str, contrast=None) -> torch.Tensor:
    """Per item, W_U[y] (or the mean over the target tokens) minus W_U[y']: [n, hidden]."""
    tokenizer, task = ctx.engine.tokenizer, ctx.td.task
    y_prime = contrast_id(tokenizer, task, contrast)
    rows = []
    for item in items:
        ids = target_ids(tokenizer, task, item)
        ids = ids[:1] if mode == "first" else ids
        row = unembedding_rows(ctx, ids).mean(0)
        if y_prime is not None:
            row = row - unembedding_rows(ctx, [y_prime])[0]
        rows.append(row)
    return torch.stack(rows)


# ---------------------------------------------------------------- reading the model at T


def final_norm_params(ctx: RunContext) -> tuple[torch.Tensor, float]:
    """(gamma float32 CPU [hidden], eps) of the final RMSNorm."""
    norm = ctx.loaded.adapter.final_norm(ctx.loaded.model)
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = getattr(norm, "eps", 1e-6)
    return norm.weight.detach().float().cpu(), float(eps)


def rms(h: torch.Tensor, eps: float) -> torch.Tensor:
    """sqrt(mean(h^2) + eps) over the last axis (the RMSNorm denominator)."""
    return torch.sqrt(h.double().pow(2).mean(-1) + eps)


def encode_items(ctx: RunContext, items):
    """The batch's HONES prompts (retrieval: the positive candidate), left-padded, no answers."""
    prompts = [hones_prompt(ctx.td.task, item) for item in items]
    return encode_prompts(ctx.loaded, ctx.td.images, prompts, reference_compat=ctx.td.task.reference_compat)


@torch.no_grad()
def read_at_T(ctx: RunContext, items, sites=("z",), final: bool = False) -> dict[str, torch.Tensor]:
    """One trace per call: values at T (position -1, inputs left-padded), float32 CPU.

    ``sites`` among "r" (the residual entering the MLP: the input of the decoder layer's
    ``post_attention_layernorm``), "g" (act_fn output), "z" (down_proj input); each comes
    back as [B, L, width]; ``final`` adds "h" [B, hidden], the input of the final norm.
    """
    engine, adapter = ctx.engine, ctx.loaded.adapter
    L = ctx.sizes.num_layers
    enc = encode_items(ctx, items)
    inputs = {k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()}
    saved: dict[str, list] = {s: [] for s in sites}
    with engine.envoy.trace(**inputs):
        for layer in range(L):  # execution order: r, then g, then z, layer by layer
            if "r" in sites:
                block = adapter.layer(engine.envoy, layer)
                saved["r"].append(nnsight.save(block.post_attention_layernorm.input[:, -1].float().cpu()))
            if "g" in sites:
                saved["g"].append(nnsight.save(site_value(engine.envoy, adapter, layer, "act_output")[:, -1]
                                               .float().cpu()))
            if "z" in sites:
                saved["z"].append(nnsight.save(site_value(engine.envoy, adapter, layer, "down_proj_input")[:, -1]
                                               .float().cpu()))
        if final:
            h = nnsight.save(adapter.final_norm(engine.envoy).input[:, -1].float().cpu())
    out = {s: torch.stack(list(v), dim=1) for s, v in saved.items()}
    if final:
        out["h"] = h
    return out


def write_out_projection(ctx: RunContext, layer: int, vectors: torch.Tensor) -> torch.Tensor:
    """vectors [B, hidden] . W_down[:, i] for every neuron i of ``layer``: [B, d_ff] float64 CPU."""
    W = ctx.loaded.adapter.down_proj(ctx.loaded.model, layer).weight.detach()  # [hidden, d_ff]
    return (vectors.to(W.device, torch.float32) @ W.float()).double().cpu()


def mean_over_shards(ctx: RunContext, config: dict, per_example) -> np.ndarray:
    """E_x of ``per_example(item_ids) -> [n, L, d_ff]`` over checkpointed shards."""
    run = ShardedRun(ctx.checkpoint_dir, config, ctx.td.n, int(ctx.options.get("shard_size", 64)))

    def compute(shard: range) -> dict[str, np.ndarray]:
        values = per_example(list(shard))
        return {"sum": values.sum(0).numpy(), "count": np.array([float(values.shape[0])])}

    parts = run.run(compute, desc=f"{config['method']} ({ctx.td.task.name})", progress=ctx.progress)
    mean = sum(p["sum"] for p in parts) / sum(p["count"][0] for p in parts)
    run.cleanup()
    return mean


# ---------------------------------------------------------------- DLA


@torch.no_grad()
def dla_per_example(ctx: RunContext, item_ids: list[int], mode: str = "first", contrast=None) -> torch.Tensor:
    """DLA_{l,i}(x) [n, L, d_ff] float64 for the given items."""
    items = [ctx.td.items[i] for i in item_ids]
    gamma, eps = final_norm_params(ctx)
    L, F = ctx.sizes.num_layers, ctx.sizes.d_ff
    out = torch.zeros(len(items), L, F, dtype=torch.float64)
    for start in range(0, len(items), ctx.batch_size):
        chunk = items[start : start + ctx.batch_size]
        direction = gamma * target_directions(ctx, chunk, mode, contrast)  # [B, hidden]
        read = read_at_T(ctx, chunk, sites=("z",), final=True)
        sigma = rms(read["h"], eps)  # [B], frozen from the clean run
        for layer in range(L):
            proj = write_out_projection(ctx, layer, direction)
            out[start : start + len(chunk), layer] = read["z"][:, layer].double() * proj / sigma[:, None]
    return out


@register_method
class DirectLogitAttribution(Method):
    name = "dla"
    summary = "DLA: z_i(T) (gamma * W_down[:, i]) . W_U[y] / sigma_T with the clean run's final RMS frozen"
    needs = "discovery split of the task (gold targets)"
    cost = "1 forward per example (prompt prefill only)"
    site = "z (down_proj input)"

    def attribute(self, ctx: RunContext) -> MethodResult:
        mode = target_mode(ctx.options)
        contrast = ctx.options.get("contrast")
        config = {**ctx.run_config(), "method": self.name, "target": mode, "contrast": contrast}
        scores = mean_over_shards(ctx, config, lambda ids: dla_per_example(ctx, ids, mode, contrast))
        return MethodResult(
            scores=scores,
            meta={"target": mode, "contrast": contrast, "sigma": "RMS of the final residual at T, clean run, frozen",
                  "centred": False},
        )
