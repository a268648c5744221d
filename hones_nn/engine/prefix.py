"""Shared-prefix decision scores: one prefix forward per (query, condition), many suffixes.

A retrieval query asks the same image-and-instruction prefix about 50 candidates; only
the tokens from the candidate on differ. Instead of 50 full forwards (576 image tokens
each on LLaVA-1.5), the prefix common to all the query's prompts is encoded once per
condition (clean, or one head replaced) and every candidate's suffix runs on its
key/value cache. The result equals the plain path (tested to 1e-5):

* the prefix is the longest common prefix of the prompts' token ids (each prompt
  tokenized whole, so prefix + suffix is exactly the prompt); it holds the image;
* head mean replacement acts position by position (the mean of the other heads at the
  same position), so the prefix's keys/values under a head condition do not depend on
  the suffix, and the condition is applied to the prefix and to the suffix forwards;
* suffixes are right-padded (padding comes after T, so causal attention never sees it)
  and take the positions they have in the unpadded prompt (the prefix's last position
  + 1 on: LLaVA counts tokens, Qwen's multimodal RoPE continues after the image's
  largest index).

A head in layer l changes nothing below l: those decoder layers are skipped (nnsight's
``Envoy.skip``) and take the clean run's outputs and keys/values (the clean condition
runs first).

Only interventions that act position by position can share a prefix: the Gaussian head
ablation draws its noise over a row's whole length, so it keeps the plain path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nnsight
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from hones_nn.engine.encoding import encode_prompts
from hones_nn.interventions.base import Compose, Intervention, apply_edits
from hones_nn.interventions.heads import HeadMeanReplacement, first_layer
from hones_nn.tasks.retrieval import decision_token_ids


def _unpadded_rows(inputs: dict) -> list[torch.Tensor]:
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    return [ids[b][mask[b]] for b in range(ids.shape[0])]


def common_prefix_length(rows: Sequence[torch.Tensor]) -> int:
    """Length of the longest common prefix of ``rows``, leaving at least one token
    (the decision position T) in every row's suffix."""
    shortest = min(len(r) for r in rows)
    length = shortest - 1
    first = rows[0][:shortest]
    for r in rows[1:]:
        differ = (r[:shortest] != first).nonzero()
        if len(differ):
            length = min(length, int(differ[0]))
    return max(0, length)


class SharedPrefix:
    """The split of one query's encoding into a shared prefix and per-prompt suffixes."""

    def __init__(self, loaded, enc):
        self.loaded = loaded
        self.model = loaded.model
        inputs = enc.inputs
        rows = _unpadded_rows(inputs)
        self.length = common_prefix_length(rows)
        self.suffixes = [r[self.length :] for r in rows]
        first = rows[0]
        mask = inputs["attention_mask"].bool()
        prefix: dict[str, torch.Tensor] = {
            "input_ids": first[None, : self.length],
            "attention_mask": torch.ones(1, self.length, dtype=inputs["attention_mask"].dtype),
        }
        if "image_grid_thw" in inputs:  # Qwen: flattened patches, image by image
            counts = inputs["image_grid_thw"].prod(-1).tolist()
            prefix["pixel_values"] = torch.split(inputs["pixel_values"], counts, dim=0)[0]
            prefix["image_grid_thw"] = inputs["image_grid_thw"][:1]
        elif "pixel_values" in inputs:
            prefix["pixel_values"] = inputs["pixel_values"][:1]
        for key in ("mm_token_type_ids", "image_sizes"):
            if key in inputs:
                value = inputs[key]
                prefix[key] = value[0][mask[0]][None, : self.length] if key == "mm_token_type_ids" else value[:1]
        self.prefix_inputs = prefix
        self.next_position = self._next_position()

    def usable(self, image_token_id: int) -> bool:
        """True when every image token is inside the shared prefix (else the plain path)."""
        return self.length > 0 and all(not bool((s == image_token_id).any()) for s in self.suffixes)

    def _next_position(self) -> int:
        """The position of the first suffix token in the unpadded prompt."""
        base: Any = getattr(self.model, "model", None)
        if hasattr(base, "get_rope_index") and "image_grid_thw" in self.prefix_inputs:
            p = self.prefix_inputs
            positions, _ = base.get_rope_index(
                p["input_ids"],
                mm_token_type_ids=p.get("mm_token_type_ids"),
                image_grid_thw=p["image_grid_thw"],
                attention_mask=p["attention_mask"],
            )
            return int(positions.max()) + 1
        return self.length


class _SharedPrefixLayer(DynamicLayer):
    """A cache layer holding the shared prefix's keys/values as views expanded over the
    batch (no copy). A suffix forward's keys/values are concatenated for its attention and
    not kept, so the batch's copies of the prefix live one layer at a time: at LLaVA-1.5-7B
    shape, 50 candidates hold about 0.5 GB at once instead of 16 GB for all 32 layers."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys, values
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        assert self.keys is not None and self.values is not None  # set in __init__
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def _shared_prefix_cache(text_config, kv, rows: int) -> DynamicCache:
    """The prefix's keys/values (one [1, kv heads, P, d] pair per layer) for a batch of ``rows``."""
    past = DynamicCache(config=text_config)
    past.layers = [_SharedPrefixLayer(k.expand(rows, *k.shape[1:]), v.expand(rows, *v.shape[1:])) for k, v in kv]
    return past


def query_prefix(engine, images, prompts: Sequence, reference_compat: bool = False) -> SharedPrefix | None:
    """The split of one query's prompts (a retrieval item's candidates) into the shared
    prefix and the suffixes, or None when they cannot share one: fewer than two prompts,
    more than one image, or an image token after the common prefix."""
    if len(prompts) < 2 or len({p.image_index for p in prompts}) != 1:
        return None
    split = SharedPrefix(
        engine.loaded, encode_prompts(engine.loaded, images, prompts, reference_compat=reference_compat)
    )
    return split if split.usable(engine.adapter.sizes(engine.model).image_token_id) else None


def _repeat(inputs: dict, n: int) -> dict:
    """n copies along dim 0 (Qwen's flattened patches of one image included)."""
    return {key: value.repeat(n, *([1] * (value.dim() - 1))) for key, value in inputs.items()}


def _condition_intervention(conditions, num_heads: int, extra: Intervention | None = None):
    heads = None if all(c is None for c in conditions) else HeadMeanReplacement(list(conditions), num_heads)
    if extra is None:
        return heads
    return extra if heads is None else Compose(heads, extra)


@torch.no_grad()
def prefix_decision_scores(
    engine,
    split: SharedPrefix,
    conditions: Sequence,
    batch_size: int = 64,
    skip_clean_layers: bool = True,
    intervention: Intervention | None = None,
) -> torch.Tensor:
    """logit(" Yes") - logit(" No") at T, [n_prompts, n_conditions], each condition
    (None or a (layer, head) mean-replaced) applied to the prefix and the suffix runs.

    ``intervention`` (one whose ``shares_prefix`` is true: a neuron mask or scale) is
    applied under every condition, to the prefix and to the suffixes alike.

    With ``skip_clean_layers`` and a clean condition among ``conditions``, a head in layer
    l runs only layers l and up: the decoder layers below l are skipped (nnsight's
    ``Envoy.skip``) with the clean run's outputs in their place, and their keys/values
    are the clean prefix's, since nothing below l differs from the clean run."""
    if engine.remote is not None:
        raise ValueError("shared-prefix scoring runs on a local engine only; remote runs use the plain path")
    if intervention is not None and not intervention.shares_prefix:
        raise ValueError(
            f"{type(intervention).__name__} acts row by row or over a row's length: it cannot share a prefix"
        )
    model = engine.model
    num_heads = engine.adapter.sizes(model).num_heads
    yes, no = decision_token_ids(engine.tokenizer)
    device = engine.device
    pad = engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None else 0
    n_prompts, n_cond = len(split.suffixes), len(conditions)
    out = torch.zeros(n_prompts, n_cond)
    text_config = model.config.get_text_config()
    num_layers = engine.adapter.sizes(model).num_layers
    adapter, envoy = engine.adapter, engine.envoy
    # the clean condition first: its layer outputs (prefix, and suffix batch by batch) stand
    # in for the layers below a replaced head's layer, which are the clean run's
    order = sorted(range(n_cond), key=lambda c: conditions[c] is not None)
    reuse = skip_clean_layers and n_cond > 1 and conditions[order[0]] is None
    clean_prefix: list = []
    clean_kv: list = []
    clean_suffix: dict[int, list] = {}
    prefix = {k: v.to(device) for k, v in split.prefix_inputs.items()}
    for c in order:
        condition = conditions[c]
        below = first_layer(condition) if (reuse and condition is not None and clean_prefix) else 0
        record = reuse and condition is None
        prefix_intervention = _condition_intervention([condition], num_heads, intervention)
        with envoy.trace(**prefix, use_cache=True):
            for layer in range(below):
                adapter.layer(envoy, layer).skip(clean_prefix[layer])
            if prefix_intervention is not None:
                apply_edits(envoy, adapter, prefix_intervention.edits(1))
            if record:
                outputs = nnsight.save([adapter.layer(envoy, layer).output for layer in range(num_layers)])
            cache = nnsight.save(envoy.output.past_key_values)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        if record:
            clean_prefix, clean_kv = list(outputs), kv
        if below:  # skipped layers wrote no keys/values: they are the clean run's
            kv = clean_kv[:below] + kv[below:]
        for j, r0 in enumerate(range(0, n_prompts, batch_size)):
            part = list(range(r0, min(n_prompts, r0 + batch_size)))
            lengths = [len(split.suffixes[p]) for p in part]
            width = max(lengths)
            ids = torch.full((len(part), width), pad, dtype=torch.long)
            suffix_mask = torch.zeros(len(part), width, dtype=torch.long)
            for k, p in enumerate(part):
                ids[k, : lengths[k]] = split.suffixes[p]
                suffix_mask[k, : lengths[k]] = 1
            mask = torch.cat([torch.ones(len(part), split.length, dtype=torch.long), suffix_mask], dim=1)
            positions = (split.next_position + torch.arange(width))[None].repeat(len(part), 1)
            past = _shared_prefix_cache(text_config, kv, len(part))
            last = torch.tensor(lengths, device=device) - 1
            part_intervention = _condition_intervention([condition] * len(part), num_heads, intervention)
            with envoy.trace(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                past_key_values=past,
                use_cache=True,
            ):
                for layer in range(below):
                    adapter.layer(envoy, layer).skip(clean_suffix[j][layer])
                if part_intervention is not None:
                    apply_edits(envoy, adapter, part_intervention.edits(len(part)))
                if record:
                    suffix_outputs = nnsight.save([adapter.layer(envoy, layer).output for layer in range(num_layers)])
                logits = adapter.lm_head(envoy).output
                at_t = logits[torch.arange(len(part), device=device), last]
                score = nnsight.save((at_t[:, yes] - at_t[:, no]).float().cpu())
            if record:
                clean_suffix[j] = list(suffix_outputs)
            for k, p in enumerate(part):
                out[p, c] = score[k]
    return out
