"""Random: the uniform baseline over all FFN neurons (HONES appendix D.3, "Random Selection").

docs/methods.md, "Baselines": "Random: uniform over all neurons, seeded." The
score table is a seeded random permutation of 0 .. L * d_ff - 1 (scores are distinct, so
the top k of the table is a uniform random k-subset of all neurons, for every k at once;
no per-layer quota). Seeded by ``ctx.seed`` through ``numpy.random.default_rng``; the
same seed gives the same table on every machine (numpy's PCG64 stream is stable).

Note: the masking evaluation's own random control
(:func:`hones_nn.evaluation.evaluate.random_neurons`) draws a set of exactly k neurons
per seed; this method writes a full table instead, so any k can be read from it. Average
over >= 5 seeds (``--seed``) as the spec asks for random controls.

Cost: 0 forwards (no model run; only the model's sizes are read).
"""

from __future__ import annotations

import numpy as np

from hones_nn.methods.base import Method, MethodResult, Passes, RunContext, register_method


def random_scores(num_layers: int, d_ff: int, seed: int) -> np.ndarray:
    """[num_layers, d_ff] float64: a seeded random permutation of 0 .. num_layers * d_ff - 1."""
    if num_layers <= 0 or d_ff <= 0:
        raise ValueError(f"no neurons to rank (num_layers={num_layers}, d_ff={d_ff})")
    rng = np.random.default_rng(int(seed))
    return rng.permutation(num_layers * d_ff).astype(np.float64).reshape(num_layers, d_ff)


@register_method
class RandomNeurons(Method):
    name = "random"
    summary = "Random: a seeded uniform random permutation of all neurons (no model run)"
    needs = "nothing (the model's sizes and --seed)"
    cost = "0 forwards (no model run)"
    site = "none"

    @classmethod
    def passes(cls, shape, options: dict) -> Passes:
        return Passes(0, "no model run", "none")

    def attribute(self, ctx: RunContext) -> MethodResult:
        sizes = ctx.sizes
        return MethodResult(
            scores=random_scores(sizes.num_layers, sizes.d_ff, ctx.seed),
            meta={"seed": int(ctx.seed), "rng": "numpy default_rng (PCG64) permutation"},
        )
