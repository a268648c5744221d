"""V-SEAM head localization by mean replacement (HONES section 4.1).

theta_h replaces, at every position (generated tokens included), head h's slice of the
``o_proj`` input by the mean of the other H - 1 heads' slices of the same example and
position. The head's score is the expected utility drop on the discovery split,

    S_h = E_x[ P(x; theta) - P(x; theta_h) ]        (signed; sorted descending)

with P the task metric of greedy generation by default (``utility="metric"``), or a
teacher-forced fast utility (``logprob``, ``prob``: see ``hones_nn.runner.sweep``).
For captions the paper's per-example P_t is sentence BLEU-4; ``caption_corpus=True``
scores a head by the drop of corpus BLEU-4 instead, as the reference code does.

Cost: L * H + 1 evaluations of the split, batched as (example, head) rows, so one forward
covers many heads; shards of examples are checkpointed.
"""

from __future__ import annotations

import numpy as np

from hones_nn.methods.base import Method, MethodResult, RunContext, register_method
from hones_nn.runner.shards import ShardedRun
from hones_nn.runner.sweep import all_heads, sweep


def head_conditions(ctx: RunContext) -> list:
    sizes = ctx.sizes
    return [None] + all_heads(sizes.num_layers, sizes.num_heads)


def exact_head_utilities(ctx: RunContext, heads: list, utility: str = "metric", caption_corpus: bool = False,
                         desc: str | None = None) -> tuple[float, np.ndarray]:
    """(base utility, intervened utility per head in ``heads``): the exact V-SEAM sweep.

    ``heads`` is any list of (layer, head) pairs (all of them for V-SEAM, the screen's top N
    for ``atp-screen``); the clean run is always condition 0. Shards are checkpointed under
    a key that includes the head list, so a subset run never resumes from a full one."""
    if caption_corpus and (ctx.td.task.name != "caption" or utility != "metric"):
        raise ValueError("--caption-corpus applies to --task caption with --utility metric only")
    heads = [(int(layer), int(head)) for layer, head in heads]
    conditions = [None] + heads
    sizes = ctx.sizes
    config = {"method": "vseam", **ctx.run_config()}
    if heads != all_heads(sizes.num_layers, sizes.num_heads):
        config["heads"] = [list(h) for h in heads]
    run = ShardedRun(ctx.checkpoint_dir, config, ctx.td.n, int(ctx.options.get("shard_size", 16)))

    def compute(shard: range) -> dict[str, np.ndarray]:
        if caption_corpus:
            return {"bleu_stats": caption_stats(ctx, list(shard), conditions)}
        values = sweep(ctx.engine, ctx.td, list(shard), conditions, utility=utility,
                       batch_size=ctx.batch_size, mode="mean")
        return {"utilities": values}

    parts = run.run(compute, desc=desc or f"V-SEAM heads ({ctx.td.task.name})", progress=ctx.progress)
    if caption_corpus:
        from hones_nn.tasks.metrics import bleu4_from_stats

        stats = sum(p["bleu_stats"] for p in parts)  # [conditions, n_stats]
        per_condition = np.array([bleu4_from_stats(s) for s in stats])
        base, intervened = float(per_condition[0]), per_condition[1:]
    else:
        utilities = np.concatenate([p["utilities"] for p in parts], axis=0)  # [N, 1 + len(heads)]
        base = float(utilities[:, 0].mean())
        intervened = utilities[:, 1:].mean(axis=0)
    run.cleanup()
    return base, np.asarray(intervened, dtype=np.float64)


@register_method
class VSeamHeads(Method):
    name = "vseam"
    kind = "heads"
    site = "o_proj input, one head slice"
    summary = "V-SEAM: utility drop when a head is replaced by the mean of the other heads"
    cost = "(L*H + 1) generations per example, batched as (example, head) rows"

    def attribute(self, ctx: RunContext) -> MethodResult:
        utility = ctx.options.get("utility", "metric")
        caption_corpus = bool(ctx.options.get("caption_corpus", False))
        sizes = ctx.sizes
        heads = all_heads(sizes.num_layers, sizes.num_heads)
        base, intervened = exact_head_utilities(ctx, heads, utility, caption_corpus)
        scores = (base - intervened).reshape(sizes.num_layers, sizes.num_heads)
        return MethodResult(
            scores=scores,
            kind="heads",
            extra={"base_utility": float(base), "intervened": intervened.reshape(sizes.num_layers, sizes.num_heads)},
            meta={"utility": utility, "caption_corpus": caption_corpus, "screen": None},
        )


def caption_stats(ctx: RunContext, item_ids: list[int], conditions) -> np.ndarray:
    """Corpus-BLEU sufficient statistics per condition, summed over the shard's items."""
    from hones_nn.runner.sweep import generated_texts
    from hones_nn.tasks.metrics import bleu4_stats

    texts = generated_texts(ctx.engine, ctx.td, item_ids, conditions, batch_size=ctx.batch_size)
    items = [ctx.td.items[i] for i in item_ids]
    out = None
    for i, item in enumerate(items):
        for c in range(len(conditions)):
            s = np.asarray(bleu4_stats(texts[i][c], item.data["references"]), dtype=np.float64)
            if out is None:
                out = np.zeros((len(conditions), len(s)))
            out[c] += s
    return out
