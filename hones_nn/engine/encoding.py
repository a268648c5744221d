"""Model inputs: processor-batched, left-padded encodings of prompts.

Every recipe builds its inputs here, so the prompt format (the adapter's chat wrapping,
``reference_compat``'s variant) is decided in one place. Batches are one processor call
per batch (nnsight 0.8 cannot batch images across invokes), left-padded so that the last
prompt position T is position -1 of every row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hones_nn.models.adapters import Encoded
from hones_nn.tasks.base import ImageSource, Prompt


def to_device(inputs: dict, device) -> dict:
    """The encoding's tensors moved to ``device`` (other values kept)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def encode_prompts(
    loaded, images: ImageSource, prompts: Sequence[Prompt], with_answers: bool = False, reference_compat: bool = False
):
    """One processor-batched, left-padded encoding of ``prompts`` (the one way every
    recipe builds model inputs; ``reference_compat`` gives the reference code's prompt)."""
    pictures = [images[p.image_index] for p in prompts]
    answers = [p.teacher_forced for p in prompts] if with_answers else None
    prefixes = [p.prefix for p in prompts]
    return loaded.adapter.encode(
        loaded.processor,
        pictures,
        [p.user_text for p in prompts],
        answers=answers,
        reference_compat=reference_compat,
        assistant_prefixes=prefixes if any(prefixes) else None,
    )


def _prompt_key(prompt) -> tuple:
    return (prompt.image_index, prompt.user_text, prompt.answer, prompt.prefix, prompt.suffix)


def expand_encoding(enc, index: Sequence[int]):
    """The encoding whose row k is row ``index[k]`` of ``enc``: per-row tensors are indexed;
    Qwen's flattened ``pixel_values`` ([patches, dim], ``image_grid_thw`` patches per image)
    are regrouped image by image."""
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


def encode_rows(
    loaded,
    images,
    prompts: Sequence,
    with_answers: bool = False,
    reference_compat: bool = False,
    cache: dict | None = None,
):
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
    keys: dict[tuple, int] = {}
    unique: list[Prompt] = []
    index: list[int] = []
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


def repeat_inputs(inputs: dict, n: int) -> dict:
    """A one-example encoding replicated to ``n`` identical rows.

    Per-row tensors (first dim 1) are repeated along the batch; Qwen's flattened
    ``pixel_values`` ([patches, dim], one image) and ``image_grid_thw`` ([1, 3]) are
    repeated n times along dim 0, which is the encoding of n copies of the image.
    """
    out = {}
    for key, value in inputs.items():
        if not torch.is_tensor(value):
            out[key] = value
        elif key == "pixel_values" and "image_grid_thw" in inputs:
            out[key] = value.repeat(n, *([1] * (value.dim() - 1)))
        else:
            if value.shape[0] != 1:
                raise ValueError(f"repeat_inputs needs a one-example encoding; {key} has batch {value.shape[0]}")
            out[key] = value.repeat(n, *([1] * (value.dim() - 1)))
    return out
