"""The head sweep: one utility per (item, condition), many conditions per forward.

A *condition* is a clean run (``None``) or one head intervention ``(layer, head)``. V-SEAM
needs every item under L * H + 1 conditions; HONES needs K_h + 1. Instead of one forward
per head per item (the reference code), rows of a batch are (prompt, condition) pairs:
a batch of 64 rows evaluates e.g. 2 prompts under 32 heads at once, each row carrying its
own head replacement (:class:`HeadMeanReplacement` assigns a head per row).

Utilities (``utility=``), never substituted silently:

* ``metric`` (default, faithful to the paper): the task metric of greedy generation
  (retrieval: NDCG@5 from the Yes/No logits of all 50 candidates);
* ``logprob``: teacher-forced log-probability of the gold answer tokens (sum over the
  answer's tokens, EOS excluded); for retrieval the margin logit-diff(positive) - mean
  logit-diff(negatives), logit-diff = logit(" Yes") - logit(" No") at T;
* ``prob``: softmax probability of the first gold answer token at T (V-SEAM's original
  fast utility); for retrieval P(" Yes") on the positive candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nnsight
import numpy as np
import torch

from hones_nn.engine.core import Engine
from hones_nn.engine.encoding import encode_prompts, encode_rows
from hones_nn.engine.prefix import SharedPrefix, prefix_decision_scores
from hones_nn.interventions.base import apply_edits
from hones_nn.interventions.heads import HeadGaussianNoise, HeadMeanReplacement

UTILITIES = ("metric", "logprob", "prob")


@dataclass(frozen=True)
class Row:
    item: int  # index into the shard's item list
    prompt: int  # index into the item's prompts
    condition: int  # index into the condition list


def _rows_for(task, items, n_conditions: int, utility: str) -> list[Row]:
    return [
        Row(i, p, c)
        for i, item in enumerate(items)
        for p in task.utility_prompts(item, utility)
        for c in range(n_conditions)
    ]


def make_intervention(
    conditions, rows: Sequence[Row], num_heads: int, mode: str, seed: int = 0, row_keys=None, valid_lengths=None
):
    """The head intervention of a batch whose row k runs under ``conditions[rows[k].condition]``.

    ``row_keys`` (an item id per row) and ``valid_lengths`` (unpadded length per row) make
    the Gaussian ablation's noise independent of batch composition."""
    assignments = [conditions[r.condition] for r in rows]
    if all(a is None for a in assignments):
        return None
    if mode == "mean":
        return HeadMeanReplacement(assignments, num_heads)
    if mode == "gaussian":
        return HeadGaussianNoise(assignments, num_heads, seed=seed, row_keys=row_keys, valid_lengths=valid_lengths)
    raise ValueError(f"unknown head intervention {mode!r}; use 'mean' or 'gaussian'")


@torch.no_grad()
def teacher_forced_scores(engine: Engine, enc, intervention, utility: str) -> torch.Tensor:
    """Per row: sum log p(answer tokens) ('logprob') or p(first answer token) ('prob')."""
    inputs = {k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()}
    mask = enc.answer_mask.to(engine.device)
    batch = mask.shape[0]
    ids = inputs["input_ids"]
    with engine.envoy.trace(**inputs):
        if intervention is not None:
            apply_edits(engine.envoy, engine.adapter, intervention.edits(batch))
        logits = engine.adapter.lm_head(engine.envoy).output
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        # the ids and the mask travel with the request: on the logits' device (a server's GPU)
        token_lp = logprobs.gather(-1, ids[:, 1:, None].to(logprobs.device))[..., 0]  # predicts token t+1 from t
        answer = mask[:, 1:].to(logprobs.device).clone()
        # drop EOS: the last answer position of each row
        last = answer.shape[1] - 1 - answer.flip(1).float().argmax(1)
        answer[torch.arange(batch, device=answer.device), last] = False
        if utility == "logprob":
            score = nnsight.save((token_lp * answer).sum(1).cpu())
        else:
            first = answer.float().argmax(1)
            score = nnsight.save(token_lp[torch.arange(batch, device=answer.device), first].exp().cpu())
    return score


def _shared_prefix_scores(engine: Engine, td, items, conditions, utility: str, batch_size: int) -> dict:
    """Decision scores of the items whose prompts share an image-and-instruction prefix,
    computed once per (item, condition) with the suffixes on its key/value cache
    (:mod:`hones_nn.engine.prefix`); items it cannot split are left to the plain path."""
    task = td.task
    image_token = engine.adapter.sizes(engine.model).image_token_id
    scores: dict[tuple[int, int, int], float] = {}
    for i, item in enumerate(items):
        prompt_ids = task.utility_prompts(item, utility)
        prompts = [item.prompts[p] for p in prompt_ids]
        if len(prompts) < 2 or len({p.image_index for p in prompts}) != 1:
            continue
        enc = encode_prompts(engine.loaded, td.images, prompts, reference_compat=task.reference_compat)
        split = SharedPrefix(engine.loaded, enc)
        if not split.usable(image_token):
            continue
        decision = prefix_decision_scores(engine, split, conditions, batch_size)
        if utility == "prob":
            decision = torch.sigmoid(decision)
        for k, p in enumerate(prompt_ids):
            for c in range(len(conditions)):
                scores[(i, p, c)] = float(decision[k, c])
    return scores


def _run_rows(
    engine: Engine,
    td,
    items,
    conditions,
    utility: str,
    batch_size: int,
    mode: str,
    seed: int,
    share_prefix: bool = True,
):
    task = td.task
    num_heads = engine.adapter.sizes(engine.model).num_heads
    rows = _rows_for(task, items, len(conditions), utility)
    texts: dict[tuple[int, int], str] = {}
    scores: dict[tuple[int, int, int], float] = {}
    with_answers = utility in ("logprob", "prob") and task.generative
    # position-wise interventions (mean replacement) on a local engine share the prefix
    if share_prefix and not task.generative and mode == "mean" and engine.remote is None:
        scores = _shared_prefix_scores(engine, td, items, conditions, utility, batch_size)
        rows = [r for r in rows if (r.item, r.prompt, r.condition) not in scores]
    cache: dict = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [items[r.item].prompts[r.prompt] for r in chunk]
        enc = encode_rows(
            engine.loaded,
            td.images,
            prompts,
            with_answers=with_answers,
            reference_compat=task.reference_compat,
            cache=cache,
        )
        intervention = make_intervention(conditions, chunk, num_heads, mode, seed)
        if with_answers:
            for r, v in zip(chunk, teacher_forced_scores(engine, enc, intervention, utility).tolist()):
                scores[(r.item, r.prompt, r.condition)] = v
        elif task.generative:
            for r, prompt, ids in zip(chunk, prompts, engine.generate(enc.inputs, intervention)):
                texts[(r.item, r.condition)] = engine.decode(ids, prompt)
        else:
            decision = engine.decision_scores(enc.inputs, intervention)
            if utility == "prob":
                decision = torch.sigmoid(decision)  # P(Yes) among {Yes, No}
            for r, v in zip(chunk, decision.tolist()):
                scores[(r.item, r.prompt, r.condition)] = v
    return texts, scores


def generated_texts(
    engine: Engine,
    td,
    item_ids: Sequence[int],
    conditions: Sequence,
    batch_size: int = 64,
    mode: str = "mean",
    seed: int = 0,
) -> list[list[str]]:
    """Greedy outputs [item][condition] of a generative task."""
    items = [td.items[i] for i in item_ids]
    texts, _ = _run_rows(engine, td, items, conditions, "metric", batch_size, mode, seed)
    return [[texts[(i, c)] for c in range(len(conditions))] for i in range(len(items))]


def sweep(
    engine: Engine,
    td,
    item_ids: Sequence[int],
    conditions: Sequence,
    utility: str = "metric",
    batch_size: int = 64,
    mode: str = "mean",
    seed: int = 0,
    share_prefix: bool = True,
) -> np.ndarray:
    """Utilities [len(item_ids), len(conditions)] of the given items under each condition.

    ``share_prefix=False`` runs every retrieval candidate as a whole prompt (the plain
    path the shared-prefix scores are tested against)."""
    if utility not in UTILITIES:
        raise ValueError(f"unknown utility {utility!r}; choose one of {', '.join(UTILITIES)}")
    task = td.task
    items = [td.items[i] for i in item_ids]
    texts, scores = _run_rows(engine, td, items, conditions, utility, batch_size, mode, seed, share_prefix)
    out = np.zeros((len(items), len(conditions)))
    for i, item in enumerate(items):
        prompts = task.utility_prompts(item, utility)
        for c in range(len(conditions)):
            if utility == "metric":
                outputs = [texts[(i, c)]] if task.generative else [scores[(i, p, c)] for p in prompts]
                out[i, c] = task.utility(item, outputs)
            else:
                out[i, c] = task.teacher_forced_utility(item, {p: scores[(i, p, c)] for p in prompts}, utility)
    return out


def all_heads(num_layers: int, num_heads: int) -> list[tuple[int, int]]:
    return [(layer, head) for layer in range(num_layers) for head in range(num_heads)]
