"""QRNCA (Chen, Dejl and Toni 2025, "Identifying query-relevant neurons in large language
models for long-form texts"): integrated gradients on z(T), neuron clusters per example,
inverse cluster attribution across examples, common neurons dropped.

Spec (docs/methods.md, "Baselines"): integrated gradients on z at T with a zero
baseline, m steps (default 20) scaling the whole layer's z together, gradient of p(y);
per example keep neurons above 0.2 * max; aggregate over examples with the
inverse-cluster-frequency weighting; drop neurons common to more than 30% of examples.
Batch the m steps.

1. **Integrated gradients** (per example x, per layer l, as the authors' code, which
   follows Dai et al.'s knowledge neurons): the whole layer's z(T) is scaled by alpha
   while every other layer runs clean,

       IG_{l,i}(x) = z_{l,i}(T) * (1/m) sum_{k=1..m} d p(y | alpha_k z_l(T)) / d z_{l,i}(T)

   ``rule="right"`` (default): alpha_k = k/m, the right Riemann sum, alpha in (0, 1]
   (Dai et al.; the authors' code uses ``linspace(0, 1, m)``, which also evaluates
   alpha = 0 and so is a slightly biased sum: we do not reproduce it).
   ``rule="midpoint"``: alpha_k = (k - 1/2)/m, second-order accurate. Completeness:
   sum_i IG_{l,i} -> p(y | z_l(T)) - p(y | z_l(T) = 0) as m grows.
   p(y) is the softmax probability (not log) of y at T, float32. y: the first gold answer
   token; retrieval " Yes" on the positive prompt; caption the first token of the task's
   gold reference (see ``hones_nn.methods.grad.gold_token_id``).
   **Batching**: the m steps of one layer are m rows of one forward/backward (the example
   replicated, row k's z_l(T) set to alpha_k z_l(T)); ``batch_size // m`` layers share a
   forward when the batch allows (rows (layer, k)). Gradients: one nnsight trace per
   forward, ``with loss.backward():`` reading ``.grad`` of each layer's scaled z(T) (a
   leaf of the graph; parameters frozen meanwhile, so the backward starts there).
2. **Cluster** of x: C_x = {n : IG_n(x) > 0.2 * max_n IG_n(x)}, the max over all L * d_ff
   neurons (``threshold``, default 0.2). If max_n IG_n(x) <= 0 no neuron raises p(y) and
   the cluster is empty (the authors' code would then keep neurons above a negative
   threshold; we do not).
3. **Neuron attribution** within the cluster: NA_x(n) = IG_n(x) / sum_{n' in C_x} IG_{n'}(x)
   for n in C_x, else 0 (authors' code).
4. **Inverse cluster attribution**: occ(n) = #{x : n in C_x} over the N examples,
   ICA(n) = ln(N / (occ(n) + 1)) (authors' code).
5. **Score** (our aggregation: the authors keep the top-v neurons per query; a ranking
   over a task needs one score per neuron):

       QRNCA_n = ICA(n) * (1/N) sum_x NA_x(n)

6. **Common neurons**: occ(n) > 0.3 * N (``common``, default 0.3; "more than 30% of the
   examples", the spec; the authors' code compares with int(0.3 N)) get score 0, as do
   neurons in no cluster. With N <= 3 every cluster neuron is common and the table is all
   zeros (a warning says so): use at least 4 examples, in practice hundreds.

The per-example quantities reduce to sums (sum_x NA_x, occ, N), so shards checkpoint them
and ICA is applied once at the end.

Cost: L * m forward rows + their backward per example, i.e.
ceil(L / max(1, batch_size // m)) forward/backward passes of up to max(m, batch_size) rows.
"""

from __future__ import annotations

import warnings

import nnsight
import numpy as np
import torch

from hones_nn.engine.encoding import repeat_inputs
from hones_nn.engine.readout import attribution_inputs, frozen_parameters
from hones_nn.methods.base import Method, MethodResult, Passes, RunContext, ShardPlan, register_method
from hones_nn.methods.grad import gold_token_id

RULES = ("right", "midpoint")


def ig_alphas(steps: int, rule: str = "right") -> torch.Tensor:
    """The m scales of the Riemann sum, all in (0, 1]."""
    if steps < 1:
        raise ValueError(f"QRNCA needs at least 1 integration step, got {steps}")
    k = torch.arange(1, steps + 1, dtype=torch.float32)
    if rule == "right":
        return k / steps
    if rule == "midpoint":
        return (k - 0.5) / steps
    raise ValueError(f"unknown Riemann rule {rule!r}; choose one of {', '.join(RULES)}")


def integrated_gradients(
    ctx: RunContext, item, steps: int = 20, rule: str = "right", layers: list[int] | None = None
) -> torch.Tensor:
    """IG [L, d_ff] of one example (rows of layers not asked are 0).

    Row (l, k) of a forward scales layer l's z(T) by alpha_k; at every other layer its
    z(T) is left as computed (clean up to l), its graph attached. Each touched layer's
    z(T) rows become a detached, scaled copy marked requires_grad (a leaf), whose
    ``.grad`` is read in the backward.
    """
    engine, adapter = ctx.engine, ctx.loaded.adapter
    sizes = ctx.sizes
    layers = list(range(sizes.num_layers)) if layers is None else sorted(set(layers))
    alphas = ig_alphas(steps, rule)
    y = gold_token_id(ctx, item)
    base = attribution_inputs(ctx.engine, ctx.td, [item])
    per_forward = max(1, ctx.batch_size // steps)
    grad_sum = torch.zeros(sizes.num_layers, sizes.d_ff, dtype=torch.float64)
    z_clean = torch.zeros(sizes.num_layers, sizes.d_ff, dtype=torch.float64)
    for start in range(0, len(layers), per_forward):
        group = layers[start : start + per_forward]
        n_rows = len(group) * steps
        inputs = repeat_inputs(base, n_rows)
        # per touched layer: the scale of each row (alpha_k on the layer's own rows) and
        # which rows are the layer's own (the other rows keep their z(T), graph attached)
        cols, own = {}, {}
        for j, layer in enumerate(group):
            col = torch.ones(n_rows)
            col[j * steps : (j + 1) * steps] = alphas
            cols[layer] = col.to(engine.device)[:, None]
            mine = torch.zeros(n_rows, dtype=torch.bool)
            mine[j * steps : (j + 1) * steps] = True
            own[layer] = (mine.to(engine.device)[:, None], j * steps)
        with frozen_parameters(ctx.loaded.model), torch.enable_grad(), engine.envoy.trace(**inputs):
            leaves, clean = {}, {}
            for layer in sorted(group):
                z = adapter.down_proj(engine.envoy, layer).input
                z_t = z[:, -1].clone()  # a copy: z is edited in place below
                mine, first_row = own[layer]
                # the layer's own rows are clean up to this layer
                clean[layer] = z_t[first_row].detach().double().cpu()
                leaf = (z_t.detach().float() * cols[layer]).to(z.dtype).requires_grad_(True)
                z[:, -1] = torch.where(mine, leaf, z_t)
                leaves[layer] = leaf
            logits = adapter.lm_head(engine.envoy).output[:, -1].float()
            probs = torch.softmax(logits, -1)[:, y]
            loss = probs.sum()  # rows are independent: each row's gradient is its own
            with loss.backward():
                grads = {}
                for j in reversed(range(len(group))):
                    layer = group[j]
                    g = leaves[layer].grad
                    grads[layer] = g[j * steps : (j + 1) * steps].double().sum(0).cpu()
                grads = nnsight.save(grads)
            clean = nnsight.save(clean)
        for layer in group:
            grad_sum[layer] = grads[layer]
            z_clean[layer] = clean[layer]
    return z_clean * grad_sum / steps


def cluster_stats(ig: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(NA_x, membership) of one example: [L, d_ff] each (NA 0 outside the cluster)."""
    ig = ig.double()
    top = float(ig.max())
    if not top > 0:
        zero = np.zeros(tuple(ig.shape))
        return zero, zero
    member = ig > threshold * top
    na = torch.where(member, ig, torch.zeros_like(ig))
    na = na / na.sum()
    return na.numpy(), member.double().numpy()


def combine(na_sum: np.ndarray, occ: np.ndarray, n: float, common: float) -> tuple[np.ndarray, np.ndarray]:
    """QRNCA_n = ln(N / (occ + 1)) * sum_x NA_x / N, 0 for common (occ > common * N) neurons."""
    ica = np.log(n / (occ + 1.0))
    scores = ica * na_sum / n
    is_common = occ > common * n
    scores = np.where(is_common | (occ == 0), 0.0, scores)
    return scores, is_common


@register_method
class QRNCA(Method):
    name = "qrnca"
    summary = (
        "QRNCA (Chen et al. 2025): integrated gradients of p(y) on z(T), clusters above 0.2 max, "
        "inverse cluster attribution, common neurons dropped"
    )
    needs = "discovery split of the task (gold answers); at least 4 examples"
    cost = (
        "L * m forward rows + backward per example (m = steps, default 20): "
        "ceil(L / max(1, batch_size // m)) forward/backward passes"
    )
    needs_gradients = True
    remote_refusal = (
        "it takes gradients through the model (a backward pass inside the trace with the parameters "
        "frozen on this machine), which the remote backend does not ship yet: run it where the "
        "weights are"
    )

    @classmethod
    def passes(cls, shape, options: dict) -> Passes:
        steps = int(options.get("steps", 20))
        rows = shape.num_layers * steps
        return Passes(rows, f"{rows} forward+backward rows (L * m, m = {steps})", "backward")

    def plan(self, ctx: RunContext) -> ShardPlan:
        steps = int(ctx.options.get("steps", 20))
        rule = str(ctx.options.get("rule", "right"))
        threshold = float(ctx.options.get("threshold", 0.2))
        common = float(ctx.options.get("common", 0.3))
        ig_alphas(steps, rule)  # validate before any forward
        return ShardPlan(config={"steps": steps, "rule": rule, "threshold": threshold}, state=common)

    def shard(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> dict[str, np.ndarray]:
        steps, rule, threshold = plan.config["steps"], plan.config["rule"], plan.config["threshold"]
        na_sum = occ = ig_sum = 0.0
        for i in item_ids:
            ig = integrated_gradients(ctx, ctx.td.items[i], steps=steps, rule=rule)
            na, member = cluster_stats(ig, threshold)
            na_sum, occ, ig_sum = na_sum + na, occ + member, ig_sum + ig.numpy()
        return {"na_sum": na_sum, "occ": occ, "ig_sum": ig_sum, "count": np.array([float(len(item_ids))])}

    def reduce(self, ctx: RunContext, parts: list[dict[str, np.ndarray]], plan: ShardPlan) -> MethodResult:
        steps, rule, threshold = plan.config["steps"], plan.config["rule"], plan.config["threshold"]
        common = plan.state
        n = sum(p["count"][0] for p in parts)
        na_sum = sum(p["na_sum"] for p in parts)
        occ = sum(p["occ"] for p in parts)
        scores, is_common = combine(na_sum, occ, n, common)
        kept = int(((occ > 0) & ~is_common).sum())
        if kept == 0:
            warnings.warn(
                f"QRNCA kept no neuron: with {int(n)} example(s), every cluster neuron is common to more than "
                f"{common:.0%} of them (or no neuron raised p(y)); the table is all zeros. Use more examples "
                "(--limit), at least 4.",
                stacklevel=2,
            )
        return MethodResult(
            scores=scores,
            meta={
                "steps": steps,
                "rule": rule,
                "threshold": threshold,
                "common": common,
                "n_attributed": int(n),
                "n_cluster_neurons": int((occ > 0).sum()),
                "n_common": int(is_common.sum()),
                "n_kept": kept,
                "mean_ig_abs_max": float(np.abs(sum(p["ig_sum"] for p in parts) / n).max()),
                "score": "ln(N/(occ+1)) * mean_x NA_x, 0 for common (occ > common*N) and unclustered neurons",
                "objective": "p(y) at T, y = first gold answer token",
            },
        )
