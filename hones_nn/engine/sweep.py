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
from hones_nn.engine.encoding import encode_prompts, encode_rows, expand_encoding
from hones_nn.engine.prefix import prefix_decision_scores, query_prefix
from hones_nn.engine.skipping import layer_rows, recorded_layers, skip_plan, skips_by_default
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
def teacher_forced_scores(
    engine: Engine, enc, intervention, utility: str, skip_below: int = 0, skip_value=None, record=None
):
    """Per row: sum log p(answer tokens) ('logprob') or p(first answer token) ('prob').

    ``skip_below`` > 0: decoder layers below it do not run; they hand on ``skip_value``
    (the clean run's output of layer ``skip_below - 1``, the input of the first layer
    that runs). ``record`` (layers, possibly none; a run without ``intervention`` only):
    their outputs are returned too, as ``(scores, outputs)``."""
    inputs = {k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()}
    mask = enc.answer_mask.to(engine.device)
    batch = mask.shape[0]
    ids = inputs["input_ids"]
    start = max(1, int(enc.answer_mask.float().argmax(1).min()))  # the earliest answer token
    envoy, adapter = engine.envoy, engine.adapter
    if record is not None and intervention is not None:
        raise ValueError("layer outputs are recorded on the clean run only")
    # only the answer span is scored: position t predicts token t + 1, for the tokens from
    # the earliest answer start on (rows are left-padded, answers end them); the model
    # computes logits for those positions only (at 7B and batch 64, all positions' logits
    # would take gigabytes)
    keep = ids.shape[1] - start + 1
    with envoy.trace(**inputs, logits_to_keep=keep):
        for layer in range(skip_below):
            adapter.layer(envoy, layer).skip(skip_value)
        if record:
            outputs = nnsight.save([adapter.layer(envoy, layer).output for layer in record])
        if intervention is not None:
            apply_edits(envoy, adapter, intervention.edits(batch))
        logits = adapter.lm_head(envoy).output  # [B, keep, V]: positions start - 1 .. S - 1
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        # the ids and the mask travel with the request: on the logits' device (a server's GPU)
        span_lp = logprobs.gather(-1, ids[:, start:, None].to(logprobs.device))[..., 0]
        token_lp = torch.zeros(batch, ids.shape[1] - 1, dtype=span_lp.dtype, device=span_lp.device)
        token_lp[:, start - 1 :] = span_lp  # zeros elsewhere: the sums below run as over every position
        answer = mask[:, 1:].to(logprobs.device).clone()
        # drop EOS: the last answer position of each row
        last = answer.shape[1] - 1 - answer.flip(1).float().argmax(1)
        answer[torch.arange(batch, device=answer.device), last] = False
        if utility == "logprob":
            score = nnsight.save((token_lp * answer).sum(1).cpu())
        else:
            first = answer.float().argmax(1)
            score = nnsight.save(token_lp[torch.arange(batch, device=answer.device), first].exp().cpu())
    if record is not None:
        return score, dict(zip(record, outputs)) if record else {}
    return score


@torch.no_grad()
def _teacher_forced_skipping(engine: Engine, td, items, conditions, rows: Sequence[Row], utility: str, batch_size: int):
    """Teacher-forced scores of ``rows``, a head in layer l running layers l and up only
    (:mod:`hones_nn.engine.skipping`): each group of prompts runs clean once, recording
    the layer outputs the heads start from. Equal to the plain path within float rounding
    (the groups pad differently; tested)."""
    task = td.task
    num_heads = engine.adapter.sizes(engine.model).num_heads
    units = list(dict.fromkeys((r.item, r.prompt) for r in rows))
    clean = [c for c, condition in enumerate(conditions) if condition is None]
    record = recorded_layers(conditions)
    scores: dict[tuple[int, int, int], float] = {}
    for group, chunks in skip_plan(len(units), conditions, batch_size):
        keys = [units[u] for u in group]
        prompts = [items[i].prompts[p] for i, p in keys]
        enc = encode_prompts(
            engine.loaded, td.images, prompts, with_answers=True, reference_compat=task.reference_compat
        )
        clean_scores, outputs = teacher_forced_scores(engine, enc, None, utility, record=record)
        for (i, p), v in zip(keys, clean_scores.tolist()):
            for c in clean:
                scores[(i, p, c)] = v
        for chunk in chunks:
            chunk_rows = [Row(keys[k][0], keys[k][1], c) for k, c in zip(chunk.index, chunk.conditions)]
            values = teacher_forced_scores(
                engine,
                expand_encoding(enc, chunk.index),
                make_intervention(conditions, chunk_rows, num_heads, "mean"),
                utility,
                skip_below=chunk.layer,
                skip_value=layer_rows(outputs[chunk.layer - 1], chunk.index) if chunk.layer > 0 else None,
            )
            for r, v in zip(chunk_rows, values.tolist()):
                scores[(r.item, r.prompt, r.condition)] = v
    return scores


@torch.no_grad()
def _generation_skipping(engine: Engine, td, items, conditions, rows: Sequence[Row], batch_size: int):
    """Greedy texts of ``rows``, a head in layer l starting its prefill at layer l
    (:mod:`hones_nn.engine.skipping`): each group of prompts is generated clean once,
    recording its prefill's layer outputs and keys/values; a head row's prefill skips the
    layers below its own (their keys/values written into the generation's cache from the
    clean prefill) and its decoding steps run every layer. Equal to the plain path (tested)."""
    task = td.task
    num_heads = engine.adapter.sizes(engine.model).num_heads
    units = list(dict.fromkeys((r.item, r.prompt) for r in rows))
    clean = [c for c, condition in enumerate(conditions) if condition is None]
    record = recorded_layers(conditions)
    texts: dict[tuple[int, int], str] = {}
    for group, chunks in skip_plan(len(units), conditions, batch_size):
        keys = [units[u] for u in group]
        prompts = [items[i].prompts[p] for i, p in keys]
        enc = encode_prompts(engine.loaded, td.images, prompts, reference_compat=task.reference_compat)
        ids, state = engine.generate(enc.inputs, record=record, max_new_tokens=task.max_new_tokens)
        for (i, _), prompt, row in zip(keys, prompts, ids):
            for c in clean:
                texts[(i, c)] = engine.decode(row, prompt)
        for chunk in chunks:
            chunk_rows = [Row(keys[k][0], keys[k][1], c) for k, c in zip(chunk.index, chunk.conditions)]
            intervention = make_intervention(conditions, chunk_rows, num_heads, "mean")
            skip = state.skip_for(chunk.layer, chunk.index)
            inputs = expand_encoding(enc, chunk.index).inputs
            generated = engine.generate(inputs, intervention, skip=skip, max_new_tokens=task.max_new_tokens)
            for r, k, row in zip(chunk_rows, chunk.index, generated):
                texts[(r.item, r.condition)] = engine.decode(row, prompts[k])
    return texts


def _shared_prefix_scores(engine: Engine, td, items, conditions, utility: str, batch_size: int) -> dict:
    """Decision scores of the items whose prompts share an image-and-instruction prefix,
    computed once per (item, condition) with the suffixes on its key/value cache
    (:mod:`hones_nn.engine.prefix`); items it cannot split are left to the plain path."""
    task = td.task
    scores: dict[tuple[int, int, int], float] = {}
    for i, item in enumerate(items):
        prompt_ids = task.utility_prompts(item, utility)
        prompts = [item.prompts[p] for p in prompt_ids]
        split = query_prefix(engine, td.images, prompts, reference_compat=task.reference_compat)
        if split is None:
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
    skip_clean_layers: bool | None = None,
):
    task = td.task
    if skip_clean_layers is None:
        skip_clean_layers = skips_by_default(engine)
    num_heads = engine.adapter.sizes(engine.model).num_heads
    rows = _rows_for(task, items, len(conditions), utility)
    texts: dict[tuple[int, int], str] = {}
    scores: dict[tuple[int, int, int], float] = {}
    with_answers = utility in ("logprob", "prob") and task.generative
    # position-wise interventions (mean replacement) on a local engine share the prefix
    if share_prefix and not task.generative and mode == "mean" and engine.remote is None:
        scores = _shared_prefix_scores(engine, td, items, conditions, utility, batch_size)
        rows = [r for r in rows if (r.item, r.prompt, r.condition) not in scores]
    elif skip_clean_layers and mode == "mean" and engine.remote is None and rows and task.generative:
        if with_answers:
            return texts, _teacher_forced_skipping(engine, td, items, conditions, rows, utility, batch_size)
        return _generation_skipping(engine, td, items, conditions, rows, batch_size), scores
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
            generated = engine.generate(enc.inputs, intervention, max_new_tokens=task.max_new_tokens)
            for r, prompt, ids in zip(chunk, prompts, generated):
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
    skip_clean_layers: bool | None = None,
) -> list[list[str]]:
    """Greedy outputs [item][condition] of a generative task (``skip_clean_layers``: as
    :func:`sweep`)."""
    items = [td.items[i] for i in item_ids]
    texts, _ = _run_rows(
        engine, td, items, conditions, "metric", batch_size, mode, seed, skip_clean_layers=skip_clean_layers
    )
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
    skip_clean_layers: bool | None = None,
) -> np.ndarray:
    """Utilities [len(item_ids), len(conditions)] of the given items under each condition.

    Local runs of mean replacement skip work that equals the clean run's: retrieval
    candidates share their query's prefix (``share_prefix``), and a head in layer l runs
    from layer l up (``skip_clean_layers``; None decides by depth,
    :func:`hones_nn.engine.skipping.skips_by_default`).
    ``share_prefix=False`` runs every candidate as a whole prompt and
    ``skip_clean_layers=False`` every layer of every row: the plain paths the optimized
    ones are tested against."""
    if utility not in UTILITIES:
        raise ValueError(f"unknown utility {utility!r}; choose one of {', '.join(UTILITIES)}")
    task = td.task
    items = [td.items[i] for i in item_ids]
    texts, scores = _run_rows(
        engine, td, items, conditions, utility, batch_size, mode, seed, share_prefix, skip_clean_layers
    )
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
