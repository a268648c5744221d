"""V-SEAM head localization by mean replacement (HONES section 4.1).

theta_h replaces, at every position (generated tokens included), head h's slice of the
``o_proj`` input by the mean of the other H - 1 heads' slices of the same example and
position. The head's score is the expected utility drop on the discovery split,

    S_h = E_x[ P(x; theta) - P(x; theta_h) ]        (signed; sorted descending)

with P the task metric of greedy generation by default (``utility="metric"``), or a
teacher-forced fast utility (``logprob``, ``prob``: see ``hones_nn.engine.sweep``).
For captions the paper's per-example P_t is sentence BLEU-4; ``caption_corpus=True``
scores a head by the drop of corpus BLEU-4 instead, as the reference code does.

Cost: L * H + 1 evaluations of the split, batched as (example, head) rows, so one forward
covers many heads; shards of examples are checkpointed.
"""

from __future__ import annotations

import numpy as np

from hones_nn.engine.shards import run_shards
from hones_nn.engine.sweep import all_heads, generated_texts, sweep
from hones_nn.interventions.heads import head_pairs, is_head_set
from hones_nn.methods.base import Method, MethodResult, Passes, RunContext, head_utility, register_method


def head_conditions(ctx: RunContext) -> list:
    sizes = ctx.sizes
    return [None] + all_heads(sizes.num_layers, sizes.num_heads)


def utility_passes(utility: str) -> tuple[str, str]:
    """(what one head-sweep row is, its pass kind) for a head utility."""
    if utility == "metric":
        return "generations", "generation"
    return "teacher-forced forwards", "forward-logprob"


def exact_head_utilities(
    ctx: RunContext, heads: list, utility: str = "metric", caption_corpus: bool = False, desc: str | None = None
) -> tuple[float, np.ndarray]:
    """(base utility, intervened utility per head in ``heads``): the exact V-SEAM sweep.

    ``heads`` is any list of (layer, head) pairs (all of them for V-SEAM, the screen's top N
    for ``atp-screen``) or of head sets, tuples of such pairs replaced together (the head
    budget, :mod:`hones_nn.methods.head_budget`); the clean run is always condition 0.
    Shards are checkpointed under a key that includes the head list, so a subset run never
    resumes from a full one."""
    task = ctx.td.task
    if caption_corpus and (not task.corpus_level_metric or utility != "metric"):
        raise ValueError(
            "--caption-corpus applies to a task with a corpus-level metric (caption) with --utility metric only"
        )
    heads = [tuple(sorted(head_pairs(h))) if is_head_set(h) else head_pairs(h)[0] for h in heads]
    conditions = [None] + heads
    sizes = ctx.sizes
    config = {"method": "vseam", **ctx.run_config()}
    if heads != all_heads(sizes.num_layers, sizes.num_heads):
        config["heads"] = [[list(p) for p in h] if is_head_set(h) else list(h) for h in heads]

    def compute(ids: list[int]) -> dict[str, np.ndarray]:
        if caption_corpus:
            return {"bleu_stats": corpus_stats(ctx, ids, conditions)}
        values = sweep(ctx.engine, ctx.td, ids, conditions, utility=utility, batch_size=ctx.batch_size, mode="mean")
        return {"utilities": values}

    def reduce(parts: list[dict[str, np.ndarray]]) -> tuple[float, np.ndarray]:
        if caption_corpus:
            stats = sum(p["bleu_stats"] for p in parts)  # [conditions, n_stats]
            per_condition = np.array([task.metric_from_stats(s) for s in stats])
            return float(per_condition[0]), per_condition[1:]
        utilities = np.concatenate([p["utilities"] for p in parts], axis=0)  # [N, 1 + len(heads)]
        return float(utilities[:, 0].mean()), utilities[:, 1:].mean(axis=0)

    base, intervened = run_shards(
        ctx.checkpoint_dir,
        config,
        ctx.td.n,
        int(ctx.options.get("shard_size", 16)),
        compute,
        reduce,
        desc=desc or f"V-SEAM heads ({task.name})",
        progress=ctx.progress,
    )
    return base, np.asarray(intervened, dtype=np.float64)


@register_method
class VSeamHeads(Method):
    name = "vseam"
    kind = "heads"
    site = "o_proj input, one head slice"
    summary = "V-SEAM: utility drop when a head is replaced by the mean of the other heads"
    cost = "(L*H + 1) generations per example, batched as (example, head) rows"
    shard_size = 16

    @classmethod
    def passes(cls, shape, options: dict) -> Passes:
        rows = shape.num_layers * shape.num_heads + 1
        what, kind = utility_passes(head_utility(options))
        return Passes(rows, f"{rows} {what} (L*H + 1)", kind)

    def attribute(self, ctx: RunContext) -> MethodResult:
        utility = head_utility(ctx.options)
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


def corpus_stats(ctx: RunContext, item_ids: list[int], conditions) -> np.ndarray:
    """The corpus metric's sufficient statistics (caption: BLEU-4) per condition, summed
    over the shard's items."""
    task = ctx.td.task
    texts = generated_texts(ctx.engine, ctx.td, item_ids, conditions, batch_size=ctx.batch_size)
    out = None
    for i, item in enumerate(ctx.items(item_ids)):
        for c in range(len(conditions)):
            s = np.asarray(task.metric_stats(item, [texts[i][c]]), dtype=np.float64)
            if out is None:
                out = np.zeros((len(conditions), len(s)))
            out[c] += s
    return out
