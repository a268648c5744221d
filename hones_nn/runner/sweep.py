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

import numpy as np
import torch

from hones_nn.evaluation.engine import Engine, encode_prompts
from hones_nn.interventions.base import apply_edits
from hones_nn.interventions.heads import HeadGaussianNoise, HeadMeanReplacement
from hones_nn.tasks.retrieval import decision_token_ids

UTILITIES = ("metric", "logprob", "prob")


@dataclass(frozen=True)
class Row:
    item: int  # index into the shard's item list
    prompt: int  # index into the item's prompts
    condition: int  # index into the condition list


def _rows_for(task, items, n_conditions: int, utility: str) -> list[Row]:
    rows = []
    for i, item in enumerate(items):
        if task.name == "retrieval" and utility == "prob":
            prompt_ids = [item.data["positive_index"]]
        else:
            prompt_ids = range(len(item.prompts))
        for p in prompt_ids:
            for c in range(n_conditions):
                rows.append(Row(i, p, c))
    return rows


def _prompt_key(prompt) -> tuple:
    return (prompt.image_index, prompt.user_text, prompt.answer)


def expand_encoding(enc, index: Sequence[int]):
    """The encoding whose row k is row ``index[k]`` of ``enc``: per-row tensors are indexed;
    Qwen's flattened ``pixel_values`` ([patches, dim], ``image_grid_thw`` patches per image)
    are regrouped image by image."""
    from hones_nn.models.adapters import Encoded

    idx = torch.as_tensor(list(index), dtype=torch.long)
    n = enc.inputs["input_ids"].shape[0]
    inputs = {}
    for key, value in enc.inputs.items():
        if not torch.is_tensor(value):
            inputs[key] = value
        elif key == "pixel_values" and "image_grid_thw" in enc.inputs:
            counts = enc.inputs["image_grid_thw"].prod(-1).tolist()
            blocks = torch.split(value, counts, dim=0)
            inputs[key] = torch.cat([blocks[i] for i in idx.tolist()], dim=0)
        elif value.shape[0] == n:
            inputs[key] = value.index_select(0, idx)
        else:
            raise ValueError(f"cannot expand input {key!r} of shape {tuple(value.shape)} by rows")
    return Encoded(
        inputs,
        enc.last_prompt_index.index_select(0, idx),
        None if enc.answer_mask is None else enc.answer_mask.index_select(0, idx),
        [enc.answer_ids[i] for i in idx.tolist()],
        [enc.prompts[i] for i in idx.tolist()] if enc.prompts else [],
    )


def encode_rows(loaded, images, prompts: Sequence, with_answers: bool = False, reference_compat: bool = False,
                cache: dict | None = None):
    """``encode_prompts`` of ``prompts``, each distinct prompt processed once.

    A sweep batch holds few prompts under many conditions (2 examples x 32 heads): the
    image processor and tokenizer run on the distinct prompts, whose rows are then
    repeated. Left padding goes to the longest distinct prompt, which is the longest row,
    so the tensors equal those of encoding every row (tested). ``cache`` (a dict the
    caller keeps across batches) reuses the previous batch's encoding when the batch holds
    the same prompts in the same order: with batches smaller than the conditions of one
    example (B = 1 ... 32 for 33 conditions), consecutive batches repeat one prompt."""
    signature = (tuple(_prompt_key(p) for p in prompts), with_answers, reference_compat)
    if cache is not None and signature in cache:
        return cache[signature]
    enc = _encode_distinct(loaded, images, prompts, with_answers, reference_compat)
    if cache is not None:
        cache.clear()  # only the last batch: the sweep's rows come example by example
        cache[signature] = enc
    return enc


def _encode_distinct(loaded, images, prompts, with_answers, reference_compat):
    keys, unique, index = {}, [], []
    for prompt in prompts:
        key = _prompt_key(prompt)
        if key not in keys:
            keys[key] = len(unique)
            unique.append(prompt)
        index.append(keys[key])
    enc = encode_prompts(loaded, images, unique, with_answers=with_answers, reference_compat=reference_compat)
    if len(unique) == len(prompts):
        return enc
    return expand_encoding(enc, index)


def make_intervention(conditions, rows: Sequence[Row], num_heads: int, mode: str, seed: int = 0,
                      row_keys=None, valid_lengths=None):
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
        token_lp = logprobs.gather(-1, ids[:, 1:, None])[..., 0]  # predicts token t+1 from t
        answer = mask[:, 1:].clone()
        # drop EOS: the last answer position of each row
        last = answer.shape[1] - 1 - answer.flip(1).float().argmax(1)
        answer[torch.arange(batch, device=answer.device), last] = False
        if utility == "logprob":
            score = (token_lp * answer).sum(1).cpu().save()
        else:
            first = answer.float().argmax(1)
            score = token_lp[torch.arange(batch, device=answer.device), first].exp().cpu().save()
    return score


def _run_rows(engine: Engine, td, items, conditions, utility: str, batch_size: int, mode: str, seed: int):
    task = td.task
    num_heads = engine.adapter.sizes(engine.model).num_heads
    rows = _rows_for(task, items, len(conditions), utility)
    texts: dict[tuple[int, int], str] = {}
    scores: dict[tuple[int, int, int], float] = {}
    with_answers = utility in ("logprob", "prob") and task.generative
    cache: dict = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [items[r.item].prompts[r.prompt] for r in chunk]
        enc = encode_rows(engine.loaded, td.images, prompts, with_answers=with_answers,
                          reference_compat=task.reference_compat, cache=cache)
        intervention = make_intervention(conditions, chunk, num_heads, mode, seed)
        if with_answers:
            values = teacher_forced_scores(engine, enc, intervention, utility).tolist()
            for r, v in zip(chunk, values):
                scores[(r.item, r.prompt, r.condition)] = v
        elif task.generative:
            for r, ids in zip(chunk, engine.generate(enc.inputs, intervention)):
                texts[(r.item, r.condition)] = engine.decode(ids)
        else:
            values = engine.decision_scores(enc.inputs, intervention)
            if utility == "prob":
                values = torch.sigmoid(values)  # P(Yes) among {Yes, No}
            for r, v in zip(chunk, values.tolist()):
                scores[(r.item, r.prompt, r.condition)] = v
    return texts, scores


def generated_texts(engine: Engine, td, item_ids: Sequence[int], conditions: Sequence, batch_size: int = 64,
                    mode: str = "mean", seed: int = 0) -> list[list[str]]:
    """Greedy outputs [item][condition] of a generative task."""
    items = [td.items[i] for i in item_ids]
    texts, _ = _run_rows(engine, td, items, conditions, "metric", batch_size, mode, seed)
    return [[texts[(i, c)] for c in range(len(conditions))] for i in range(len(items))]


def sweep(engine: Engine, td, item_ids: Sequence[int], conditions: Sequence, utility: str = "metric",
          batch_size: int = 64, mode: str = "mean", seed: int = 0) -> np.ndarray:
    """Utilities [len(item_ids), len(conditions)] of the given items under each condition."""
    if utility not in UTILITIES:
        raise ValueError(f"unknown utility {utility!r}; choose one of {', '.join(UTILITIES)}")
    task = td.task
    items = [td.items[i] for i in item_ids]
    texts, scores = _run_rows(engine, td, items, conditions, utility, batch_size, mode, seed)
    out = np.zeros((len(items), len(conditions)))
    for i, item in enumerate(items):
        for c in range(len(conditions)):
            if task.generative and utility == "metric":
                out[i, c] = task.utility(item, [texts[(i, c)]])
            elif task.generative:
                out[i, c] = scores[(i, 0, c)]
            elif utility == "metric":
                out[i, c] = task.utility(item, [scores[(i, p, c)] for p in range(len(item.prompts))])
            elif utility == "logprob":
                pos = item.data["positive_index"]
                diffs = [scores[(i, p, c)] for p in range(len(item.prompts))]
                negatives = [d for p, d in enumerate(diffs) if p != pos]
                out[i, c] = diffs[pos] - (sum(negatives) / len(negatives) if negatives else 0.0)
            else:
                out[i, c] = scores[(i, item.data["positive_index"], c)]
    return out


def all_heads(num_layers: int, num_heads: int) -> list[tuple[int, int]]:
    return [(layer, head) for layer in range(num_layers) for head in range(num_heads)]


def check_decision_tokens(engine: Engine) -> None:
    decision_token_ids(engine.tokenizer)
