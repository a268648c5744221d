"""DLA: direct logit attribution of FFN neurons (Elhage et al. 2021), a HONES baseline.

docs/methods.md, "Baselines": neuron (l, i) writes z_{l,i}(T) W_down[:, i] into the
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
  must predict at T) by default; the shared ``target`` option (``TARGET_MODES`` of
  ``hones_nn.tasks.base``) takes ``all`` (the mean of W_U over all the gold tokens;
  ``mean`` is its old name) or ``idf`` (HONES's target: for captions the IDF-weighted
  tokens of all references);
* retrieval: the decision token " Yes" (same id as evaluation), the positive candidate's
  prompt (as HONES);
* caption: the first token of the teacher-forced gold reference (``item.prompts[0].answer``,
  one reference drawn per image with a fixed seed), i.e. again the token predicted at T;
  ``target="all"`` averages over that reference's tokens.

Contrast y' (``contrast`` option): None (default), a token id (int), a text (its first
non-special token; mind the leading space of BPE vocabularies), or ``"decision"``
(retrieval only: " No", the token the metric contrasts with " Yes"). With a contrast the
direction is W_U[y] - W_U[y'] (a logit difference).

Recipe: one nnsight trace per batch saves z(T) of every layer ([B, d_ff] each) and h(T);
outside the trace one matrix product per layer projects every neuron's write-out on the
batch's directions. Shards are checkpointed.

The gold tokens come from the task (``Task.gold_token_ids``), the reads at T from
``hones_nn.engine.readout``.

Cost: 1 forward per example (prompt prefill only), no backward.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from hones_nn.engine.readout import final_norm_eps, read_at_T, rms
from hones_nn.methods.base import MeanOverExamples, RunContext, ShardPlan, register_method
from hones_nn.tasks.base import target_option
from hones_nn.tasks.targets import target_token_ids

# ---------------------------------------------------------------- targets


def target_mode(options: dict, default: str = "first") -> str:
    """The shared ``target`` option (``hones_nn.tasks.base.TARGET_MODES``; "mean" = "all")."""
    return target_option(options, default)


def target_context(ctx: RunContext, mode: str):
    """What the ``idf`` target needs from the whole discovery split (caption: IDF weights)."""
    if mode != "idf":
        return None
    return ctx.td.task.direction_context(ctx.engine.tokenizer, ctx.td.items)


def contrast_id(tokenizer, task, contrast) -> int | None:
    """The contrast token y' of the ``contrast`` option (None: no contrast)."""
    if contrast is None or contrast == "":
        return None
    if isinstance(contrast, (int, np.integer)):
        return int(contrast)
    if contrast == "decision":
        if task.generative:
            raise ValueError("contrast='decision' (' No') is defined for retrieval only; give a token text or id")
        from hones_nn.tasks.retrieval import decision_token_ids

        return decision_token_ids(tokenizer)[1]
    ids = target_token_ids(tokenizer, str(contrast))
    if not ids:
        raise ValueError(f"contrast {contrast!r} has no non-special token in this tokenizer")
    return ids[0]


# ---------------------------------------------------------------- DLA


def target_token_weights(
    ctx: RunContext, items, mode: str, context=None
) -> list[tuple[list[int], torch.Tensor, float]]:
    """Per item, the target tokens of ``mode``, their weights (float64) and the weights'
    sum: what u_y is built from inside the trace (:func:`dla_scores`)."""
    tokenizer, task = ctx.engine.tokenizer, ctx.td.task
    out = []
    for item in items:
        ids, weights = task.target_tokens(tokenizer, item, mode, context)
        w = torch.tensor(weights, dtype=torch.float64)
        out.append((list(ids), w, float(w.sum())))
    return out


def dla_scores(values, envoy, adapter, targets, y_prime, eps: float) -> torch.Tensor:
    """Inside the read trace (``read_at_T(..., reduce=)``): DLA [B, L, d_ff] float64 from
    z(T) and h(T), with the weights read where they are: the target directions
    W_U[y] (weighted mean) - W_U[y'], scaled by the final norm's gamma, projected through
    each layer's W_down, over the clean run's final RMS."""
    W_U = adapter.lm_head(envoy).weight.detach()
    gamma = adapter.final_norm(envoy).weight.detach().float().cpu()

    def rows(ids):
        index = torch.tensor(list(ids), dtype=torch.long, device=W_U.device)
        return W_U.index_select(0, index).float().cpu()

    directions = []
    for ids, w, total in targets:
        U = rows(ids)
        row = (U * w.to(U.dtype)[:, None].to(U.device)).sum(0) / total
        if y_prime is not None:
            row = row - rows([y_prime])[0]
        directions.append(row)
    direction = gamma * torch.stack(directions)  # [B, hidden]
    z = values["z"]
    sigma = rms(values["h"], eps)  # [B], frozen from the clean run
    out = torch.zeros(z.shape[0], z.shape[1], z.shape[2], dtype=torch.float64)
    for layer in range(z.shape[1]):
        W = adapter.down_proj(envoy, layer).weight.detach()  # [hidden, d_ff]
        proj = (direction.to(W.device, torch.float32) @ W.float()).double().cpu()
        out[:, layer] = z[:, layer].double() * proj / sigma[:, None]
    return out


@torch.no_grad()
def dla_per_example(
    ctx: RunContext, item_ids: list[int], mode: str = "first", contrast=None, context=None
) -> torch.Tensor:
    """DLA_{l,i}(x) [n, L, d_ff] float64 for the given items (one trace per batch; the
    projection onto the vocabulary runs inside it, so the client needs no weights)."""
    items = ctx.items(item_ids)
    eps = final_norm_eps(ctx.loaded)
    y_prime = contrast_id(ctx.engine.tokenizer, ctx.td.task, contrast)
    L, F = ctx.sizes.num_layers, ctx.sizes.d_ff
    out = torch.zeros(len(items), L, F, dtype=torch.float64)
    for start in range(0, len(items), ctx.batch_size):
        chunk = items[start : start + ctx.batch_size]
        reduce = functools.partial(
            dla_scores, targets=target_token_weights(ctx, chunk, mode, context), y_prime=y_prime, eps=eps
        )
        out[start : start + len(chunk)] = read_at_T(ctx.engine, ctx.td, chunk, sites=("z",), final=True, reduce=reduce)
    return out


@register_method
class DirectLogitAttribution(MeanOverExamples):
    name = "dla"
    summary = "DLA: z_i(T) (gamma * W_down[:, i]) . W_U[y] / sigma_T with the clean run's final RMS frozen"
    needs = "discovery split of the task (gold targets)"
    site = "z (down_proj input)"

    default_target = "first"

    def plan(self, ctx: RunContext) -> ShardPlan:
        mode = target_mode(ctx.options, self.default_target)
        return ShardPlan(
            config={"target": mode, "contrast": ctx.options.get("contrast")}, state=target_context(ctx, mode)
        )

    def per_example(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> torch.Tensor:
        return dla_per_example(ctx, item_ids, plan.config["target"], plan.config["contrast"], plan.state)

    def result_meta(self, plan: ShardPlan) -> dict:
        return {**plan.config, "sigma": "RMS of the final residual at T, clean run, frozen", "centred": False}
