"""AP: activation probability (MINER, Huang et al. 2024), a HONES baseline (section 5.1).

docs/methods.md, "Baselines": for each discovery example x, the fraction of the
prompt positions of the prefill pass where the gated activation fires,

    AP_{l,i}(x) = |{p in P(x) : g_{l,i}(x, p) > 0}| / |P(x)|,    g = act_fn(gate_proj(x)),

then AP_{l,i} = E_x AP_{l,i}(x); neurons are ranked by AP descending (HONES appendix D.3,
threshold 0). Note that AP reads g, not the neuron z = g * up_proj(x) of HONES.

Options (``ctx.options``):

* ``positions``: ``"all"`` (default: image + text prompt positions), ``"image"`` (image
  tokens only) or ``"text"`` (every other prompt position), padding excluded through the
  attention mask. See :mod:`hones_nn.methods._activation_stats` for the choices the spec
  leaves open (retrieval's prompt, examples without selected positions).
* ``shard_size``: examples per checkpointed shard (64).

Task-agnostic: defined on every task (only the prompt's prefill is read, no target).
Cost: 1 forward per example (prompt only, no generation, no backward).
"""

from __future__ import annotations

from hones_nn.methods._activation_stats import mean_activation_stats, positions_option
from hones_nn.methods.base import Method, MethodResult, RunContext, register_method


@register_method
class ActivationProbability(Method):
    name = "ap"
    summary = "AP (MINER): fraction of prompt positions where g = act_fn(gate_proj(x)) > 0, mean over examples"
    needs = "discovery split of the task"
    cost = "1 forward per example (prompt prefill only)"
    site = "g (act_fn output)"

    def attribute(self, ctx: RunContext) -> MethodResult:
        positions = positions_option(ctx.options)
        stats = mean_activation_stats(ctx, ctx.td, positions, self.name)
        return MethodResult(
            scores=stats["ap"],
            meta={
                "positions": positions,
                "statistic": "mean_x fraction of positions with g > 0",
                "n_examples_used": stats["n"],
                "n_without_positions": stats["n_without_positions"],
            },
        )
