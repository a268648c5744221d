"""MA: mean activation magnitude (Xu et al. 2025), a HONES baseline (section 5.1).

docs/methods.md, "Baselines": the mean of the gated activation
g = act_fn(gate_proj(x)) over the prompt positions of the prefill pass, per example,
then over the discovery examples,

    MA_{l,i} = E_x [ (1 / |P(x)|) sum_{p in P(x)} g_{l,i}(x, p) ],

ranked descending (HONES appendix D.3). Signed mean (SiLU outputs can be slightly
negative): the spec says "mean of g_i", not of |g_i|. Reads g, not z.

Each example weighs the same whatever its number of positions (mean of per-example means,
as AP; the spec's "over positions and examples" read as in appendix D.3, where positions
are aggregated first to one scalar per example).

Options (``ctx.options``): ``positions`` = ``"all"`` (default), ``"image"``, ``"text"``
(see :mod:`hones_nn.methods._activation_stats`), ``shard_size`` (64).

Task-agnostic: defined on every task.
Cost: 1 forward per example (prompt only, no generation, no backward).
"""

from __future__ import annotations

from hones_nn.methods._activation_stats import mean_activation_stats, positions_option
from hones_nn.methods.base import Method, MethodResult, RunContext, register_method


@register_method
class MeanActivation(Method):
    name = "ma"
    summary = "MA: mean of g = act_fn(gate_proj(x)) over prompt positions, then over examples"
    needs = "discovery split of the task"
    cost = "1 forward per example (prompt prefill only)"
    site = "g (act_fn output)"

    def attribute(self, ctx: RunContext) -> MethodResult:
        positions = positions_option(ctx.options)
        stats = mean_activation_stats(ctx, ctx.td, positions, self.name)
        return MethodResult(
            scores=stats["ma"],
            meta={
                "positions": positions,
                "statistic": "mean_x mean over positions of g",
                "n_examples_used": stats["n"],
                "n_without_positions": stats["n_without_positions"],
            },
        )
