"""HONES: head-guided FFN neuron attribution by direct vocabulary projection (section 4.2).

For an example x with target y, neuron (l, i) contributes to the readout

    c_{l,i}(x) = z_{l,i}(T) * <W_down[:, i], u_y>          (no final norm)

with z the input of ``down_proj`` at the last prompt position T and u_y the target
direction: the normalised mean of the unembedding rows ``W_U[t]`` of the target's tokens
(VQA answer, OCR text, retrieval's decision " Yes" with the positive candidate in the
prompt), IDF-weighted over the references for captions (idf(t) = ln((n+1)/(df(t)+1)) + 1,
one document per discovery image: the set of tokens of its references).

A head h matters to a neuron when removing the head (V-SEAM's mean replacement) lowers
the neuron's contribution. Importance averages the per-example positive drops over the
top K_h heads, weighted by their V-SEAM scores S_h (heads with S_h <= 0 dropped before
any pass runs; "positive" means above ``POSITIVE_SCORE_RTOL``, which rounding noise
cannot pass):

    I_{l,i} = sum_h S_h E_x[(c_{l,i}(x) - c_{l,i}(x; theta_h))_+] / sum_h S_h

``reference_compat=True`` reproduces the official code instead: the positive part of the
difference of means, max(0, E_x c - E_x c_h); ties, token rules and IDF documents as the
reference (see docs/reference-code-behaviour.md); if no head has a positive
score, the signed mean contribution.

Neurons in layers below head h's layer cannot be affected by h: their difference is
exactly 0 (not computed from the intervened run, so batch-order noise cannot leak in).

Ablations of the paper, registered beside HONES:
``hones-nohead`` (rank by E_x c, no heads), ``hones-randhead`` (K_h random heads,
weights 1), ``hones-gaussian`` (theta_h = Gaussian noise of the head slice's std instead
of the mean of the other heads).

Cost: (1 + K_h) forwards per example, no generation, every neuron at once; heads with
S_h <= 0 (dropped by the combination) get no forwards.
"""

from __future__ import annotations

import functools
import random

import nnsight
import numpy as np
import torch

from hones_nn.engine.encoding import encode_prompts, encode_rows, expand_encoding
from hones_nn.engine.readout import contribution_read, direction_rows, projected_write_outs, target_token_rows
from hones_nn.engine.skipping import layer_rows, recorded_layers, skip_plan, skips_by_default
from hones_nn.engine.sweep import make_intervention
from hones_nn.engine.tables import ScoreTable
from hones_nn.interventions.base import SiteEdit, apply_edits
from hones_nn.methods.base import (
    Method,
    MethodResult,
    Passes,
    RunContext,
    ShardPlan,
    register_method,
    top_heads_option,
)
from hones_nn.tasks.base import target_option

# ---------------------------------------------------------------- target directions


def target_tokens(ctx: RunContext, items, context=None, mode: str = "idf") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The target of each item as (token ids, weights) tensors (``target_token_rows``):
    u_y is the weighted mean of their unembedding rows, computed inside each trace where
    the weights are (``direction_rows``). ``mode`` is the shared ``target`` option; the
    paper's u_y is ``idf``: the task's direction tokens, ``Task.direction_tokens``."""
    tokenizer, task = ctx.engine.tokenizer, ctx.td.task
    rows = []
    for item in items:
        ids, weights = task.target_tokens(tokenizer, item, mode, context)
        if not ids:
            raise ValueError(
                f"item {item.item_id!r}: the target {task.target_texts(item)!r} has no non-special tokens in this "
                "tokenizer, so u_y is undefined; fix the target or drop the item (--skip-bad does not apply here)"
            )
        rows.append(target_token_rows(ids, weights))
    return rows


def target_directions(ctx: RunContext, items, context=None, mode: str = "idf") -> torch.Tensor:
    """u_y per item, [n_items, hidden] float32 CPU, unit norm: :func:`target_tokens` read
    through the loaded unembedding (a model with weights only; remote runs read it inside
    their traces)."""
    if not ctx.loaded.has_weights:
        raise ValueError("target directions are read inside the trace on a remote run (the client has no weights)")
    W_U = ctx.loaded.adapter.lm_head(ctx.loaded.model).weight.detach()
    return direction_rows(W_U, target_tokens(ctx, items, context, mode)).float().cpu()


# ---------------------------------------------------------------- contributions


class _Row:
    """The condition of a batch row, as :func:`make_intervention` reads it."""

    def __init__(self, condition: int):
        self.condition = condition


@torch.no_grad()
def contributions(
    ctx: RunContext,
    item_ids: list[int],
    conditions: list,
    mode: str = "mean",
    targets: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """c [n_items, n_conditions, L, d_ff] at T, each item under each condition.

    Recipe: rows are (item, condition) pairs; one trace per batch computes, where the
    weights are, each row's u_y from its target tokens (``targets``, one per item) and
    W_down^T u_y for every layer, reads z(T) of every layer, and saves only the
    [rows, L, d_ff] contributions: nothing the size of a weight matrix travels.
    """
    engine, sizes = ctx.engine, ctx.sizes
    items = [ctx.td.items[i] for i in item_ids]
    if targets is None:
        raise ValueError("the items' target tokens are required")
    out = torch.zeros(len(items), len(conditions), sizes.num_layers, sizes.d_ff, dtype=torch.float64)
    if mode == "mean" and skips_by_default(engine):
        return _contributions_skipping(ctx, items, conditions, targets, out)
    rows = [(i, c) for i in range(len(items)) for c in range(len(conditions))]
    encodings: dict = {}  # the previous batch's encoding, reused when it holds the same prompts
    for start in range(0, len(rows), ctx.batch_size):
        chunk = rows[start : start + ctx.batch_size]
        prompts = [ctx.td.task.attribution_prompt(items[i]) for i, _ in chunk]
        enc = encode_rows(
            ctx.loaded, ctx.td.images, prompts, reference_compat=ctx.td.task.reference_compat, cache=encodings
        )
        intervention = make_intervention(
            conditions,
            [_Row(c) for _, c in chunk],
            sizes.num_heads,
            mode,
            seed=ctx.seed,
            row_keys=[items[i].item_id for i, _ in chunk],
            valid_lengths=enc.inputs["attention_mask"].sum(1).tolist(),
        )
        c, _ = _contributions_trace(ctx, enc, [targets[i] for i, _ in chunk], intervention)  # [rows, L, d_ff]
        for (i, cond), value in zip(chunk, c):
            out[i, cond] = value.double()
    return out


@torch.no_grad()
def _contributions_trace(
    ctx: RunContext, enc, row_targets, intervention=None, below: int = 0, skip_value=None, record=()
):
    """One batch's contributions at layers ``below`` and up, [rows, L - below, d_ff] float32
    CPU, and the outputs of the ``record`` layers (a clean run). One trace computes, where
    the weights are, each row's u_y from its target tokens and W_down^T u_y, and reads z(T);
    the layers under ``below`` are skipped with ``skip_value`` in their place."""
    engine, adapter = ctx.engine, ctx.loaded.adapter
    envoy, num_layers = engine.envoy, ctx.sizes.num_layers
    inputs = {k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()}
    edits = intervention.edits(len(row_targets)) if intervention is not None else []
    kept = [SiteEdit(layer, "layer_output", lambda value: value) for layer in record]
    with envoy.trace(**inputs):
        for layer in range(below):
            adapter.layer(envoy, layer).skip(skip_value)
        u = direction_rows(adapter.lm_head(envoy).weight, row_targets)
        proj = projected_write_outs(envoy, adapter, u, num_layers)
        reads = [
            SiteEdit(layer, "down_proj_input", functools.partial(contribution_read, proj=proj[layer]))
            for layer in range(below, num_layers)
        ]
        saved = nnsight.save(apply_edits(envoy, adapter, edits + reads + kept))
    n_reads = num_layers - below
    c = torch.stack(list(saved[len(edits) : len(edits) + n_reads]), dim=1)
    return c, dict(zip(record, saved[len(edits) + n_reads :]))


def _contributions_skipping(ctx: RunContext, items, conditions, targets, out: torch.Tensor) -> torch.Tensor:
    """:func:`contributions` with a head in layer l run from layer l up
    (:mod:`hones_nn.engine.skipping`): its contributions below l are the clean run's
    (the combination ignores them: a head cannot change what comes before it)."""
    num_heads = ctx.sizes.num_heads
    clean = [c for c, condition in enumerate(conditions) if condition is None]
    record = recorded_layers(conditions)
    for group, chunks in skip_plan(len(items), conditions, ctx.batch_size):
        prompts = [ctx.td.task.attribution_prompt(items[i]) for i in group]
        enc = encode_prompts(ctx.loaded, ctx.td.images, prompts, reference_compat=ctx.td.task.reference_compat)
        group_targets = [targets[i] for i in group]
        c_clean, outputs = _contributions_trace(ctx, enc, group_targets, record=record)
        for k, i in enumerate(group):
            for c in clean:
                out[i, c] = c_clean[k].double()
        for chunk in chunks:
            layer = chunk.layer
            intervention = make_intervention(conditions, [_Row(c) for c in chunk.conditions], num_heads, "mean")
            c_heads, _ = _contributions_trace(
                ctx,
                expand_encoding(enc, chunk.index),
                [group_targets[k] for k in chunk.index],
                intervention,
                below=layer,
                skip_value=layer_rows(outputs[layer - 1], chunk.index) if layer > 0 else None,
            )
            for k, c, value in zip(chunk.index, chunk.conditions, c_heads):
                i = group[k]
                out[i, c, :layer] = c_clean[k, :layer].double()
                out[i, c, layer:] = value.double()
    return out


def _accumulate(c: torch.Tensor, conditions: list) -> dict[str, np.ndarray]:
    """Shard sums: sum_x c under each condition, and sum_x (c - c_h)_+ per head."""
    n, k = c.shape[0], len(conditions) - 1
    clean = c[:, 0]
    positive = torch.zeros((max(k, 1),) + tuple(clean.shape[1:]), dtype=torch.float64)
    for h, cond in enumerate(conditions[1:]):
        diff = (clean - c[:, h + 1]).clamp_min(0)
        diff[:, : cond[0]] = 0.0  # layers below the head: unaffected by construction
        positive[h] = diff.sum(0)
    return {"c_sum": c.sum(0).numpy(), "positive_sum": positive.numpy(), "count": np.array([float(n)])}


# ---------------------------------------------------------------- the methods


# A head counts as "positive" only when its score exceeds this tolerance, relative to the
# largest head-score magnitude (at least 1, as metric utilities are bounded by 1): a score
# of rounding noise (2.2e-16, the difference of two equal floating-point means) is not a
# positive drop, so the rule "heads with S_h <= 0 are dropped" and its no-positive-head
# fallback can trigger. A real drop on n discovery items is of order 1/n >> 1e-9.
POSITIVE_SCORE_RTOL = 1e-9


def positive_tolerance(scores) -> float:
    """The tolerance at or below which a head score counts as not positive."""
    values = np.abs(np.asarray(scores, dtype=np.float64))
    scale = max(1.0, float(values.max())) if values.size else 1.0
    return POSITIVE_SCORE_RTOL * scale


def select_heads(ctx: RunContext, heads: ScoreTable | None, k: int, random_heads: bool):
    """(heads, weights) of the top K_h heads. Heads whose score is not positive (see
    :func:`positive_tolerance`) are dropped HERE, before any neuron pass runs, in both
    modes (the reference code skips them too; their weight would be excluded anyway)."""
    sizes = ctx.sizes
    if random_heads:
        rng = random.Random(f"randhead:{ctx.seed}")
        all_pairs = [(layer, h) for layer in range(sizes.num_layers) for h in range(sizes.num_heads)]
        chosen = sorted(rng.sample(all_pairs, min(k, len(all_pairs))))
        return chosen, [1.0] * len(chosen)
    if heads is None:
        raise ValueError("HONES needs a V-SEAM head table: pass --heads heads.parquet or let `rank` compute it")
    chosen, weights = positive_heads(heads, k)
    if not chosen and getattr(ctx.engine, "dry_run", False):
        # a dry run's head scores are stand-ins: size the run for its upper bound, K_h head passes
        chosen = heads.top(min(k, len(heads.rank)))
        weights = [1.0] * len(chosen)
    return chosen, weights


def positive_heads(heads: ScoreTable, k: int) -> tuple[list[tuple[int, int]], list[float]]:
    """The top ``k`` heads of a table by rank, keeping only those whose score is above the
    tolerance of :func:`positive_tolerance`, and their scores."""
    top = heads.top(min(k, len(heads.rank)))
    matrix = heads.matrix()
    tol = positive_tolerance(heads.score)
    kept = [(layer, h) for layer, h in top if float(matrix[layer, h]) > tol]
    return kept, [float(matrix[layer, h]) for layer, h in kept]


def passes_needed(weights) -> list[int]:
    """Indices into [clean, *heads] of the conditions that get forwards: the clean run and
    the heads whose weight is positive (by :func:`positive_tolerance`, the rule of
    :meth:`_HonesBase.combine`, which drops the others, so their passes could never change
    the result)."""
    tol = positive_tolerance(weights)
    return [0] + [h + 1 for h, w in enumerate(weights) if w > tol]


class _HonesBase(Method):
    head_mode = "mean"
    random_heads = False
    use_heads = True
    needs = "discovery split + a V-SEAM head table (computed first unless --heads is given)"
    cost = "(1 + K_h) forwards per example (prompt only, no generation)"
    needs_heads = True
    uses_top_heads = True
    default_target = "idf"
    needs_targets = "direction"  # u_y: the runner checks every item has target tokens first

    @classmethod
    def passes(cls, shape, options: dict) -> Passes:
        if not cls.use_heads:
            return Passes(1, "1 forward", "forward")
        k = top_heads_option(shape, options)
        return Passes(1 + k, f"at most {1 + k} forwards (1 + K_h, K_h = {k}; heads scoring <= 0 skipped)", "forward")

    def plan(self, ctx: RunContext) -> ShardPlan:
        k = int(ctx.options.get("top_heads", 30))
        if self.use_heads:
            heads, weights = select_heads(ctx, ctx.options.get("heads_table"), k, self.random_heads)
        else:
            heads, weights = [], []
        task, tokenizer = ctx.td.task, ctx.engine.tokenizer
        mode = target_option(ctx.options, self.default_target)
        context = task.direction_context(tokenizer, ctx.td.items) if mode == "idf" else None
        targets = target_tokens(ctx, ctx.td.items, context, mode)
        return ShardPlan(
            config={"heads": heads, "weights": weights, "target": mode},
            state={
                "k": k,
                "heads": heads,
                "weights": weights,
                "conditions": [None, *heads],
                "passes": passes_needed(weights),
                "targets": targets,
            },
        )

    def shard(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> dict[str, np.ndarray]:
        conditions, run = plan.state["conditions"], plan.state["passes"]
        c_run = contributions(
            ctx,
            item_ids,
            [conditions[k] for k in run],
            mode=self.head_mode,
            targets=[plan.state["targets"][i] for i in item_ids],
        )
        # a head without a pass (weight <= 0, dropped by combine) stands in as the clean run:
        # its drop is 0 and combine never reads it
        c = c_run[:, :1].repeat(1, len(conditions), 1, 1)
        c[:, run] = c_run
        return _accumulate(c, conditions)

    def reduce(self, ctx: RunContext, parts: list[dict[str, np.ndarray]], plan: ShardPlan) -> MethodResult:
        heads, weights = plan.state["heads"], plan.state["weights"]
        count = sum(p["count"][0] for p in parts)
        c_mean = sum(p["c_sum"] for p in parts) / count  # [1+K, L, d_ff]
        positive_mean = sum(p["positive_sum"] for p in parts) / count  # [K, L, d_ff]
        importance, rule = self.combine(c_mean, positive_mean, heads, weights, ctx.td.task.reference_compat)
        return MethodResult(
            scores=importance,
            meta={
                "heads": [list(h) for h in heads],
                "head_weights": weights,
                "combine": rule,
                "top_heads": plan.state["k"],
                "head_intervention": self.head_mode if self.use_heads else None,
                "target": plan.config["target"],
            },
        )

    def combine(self, c_mean, positive_mean, heads, weights, compat):
        if not self.use_heads:
            return c_mean[0], "signed mean contribution E_x c (no heads)"
        w = np.asarray(weights, dtype=np.float64)
        keep = w > positive_tolerance(w)
        if not keep.any():
            return c_mean[0], "no head with a positive score: signed mean contribution E_x c"
        if compat:
            diffs = np.stack([np.maximum(0.0, c_mean[0] - c_mean[h + 1]) for h in range(len(heads))])
            for h, (layer, _) in enumerate(heads):
                diffs[h, :layer] = 0.0
            rule = "reference: sum_h S_h max(0, E c - E c_h) / sum_h S_h"
        else:
            diffs = positive_mean
            rule = "paper: sum_h S_h E[(c - c_h)_+] / sum_h S_h"
        importance = (w[keep, None, None] * diffs[keep]).sum(0) / w[keep].sum()
        return importance, rule


@register_method
class Hones(_HonesBase):
    name = "hones"
    summary = "HONES: head-weighted positive drop of z(T) * <W_down[:, i], u_y> under V-SEAM head replacement"


@register_method
class HonesNoHead(_HonesBase):
    name = "hones-nohead"
    use_heads = False
    needs_heads = False
    summary = "Ablation NoHead: rank by the mean contribution E_x c, no heads"
    needs = "discovery split"
    cost = "1 forward per example"


@register_method
class HonesRandHead(_HonesBase):
    name = "hones-randhead"
    random_heads = True
    needs_heads = False
    summary = "Ablation RandHead: K_h random heads (seeded), weights 1"
    needs = "discovery split"


@register_method
class HonesGaussian(_HonesBase):
    name = "hones-gaussian"
    head_mode = "gaussian"
    summary = "Ablation Gaussian: top K_h heads replaced by Gaussian noise of the slice's std"
