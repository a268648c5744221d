"""Activation statistics of g = act_fn(gate_proj(x)) over prompt positions (AP, MA, APE).

Shared by the activation-statistic baselines of docs/methods.md ("Baselines"):

* AP (MINER, Huang et al. 2024): per example, the fraction of the selected positions
  where g_i > 0; averaged over examples;
* MA (Xu et al. 2025): per example, the mean of g_i over the selected positions;
  averaged over examples;
* APE (MMNeuron, Huo et al. 2024) uses AP's firing rate on each of the four tasks.

Positions (option ``positions`` of ``ctx.options``): every prompt position of the prefill
pass (``"all"``, image and text tokens), only image-token positions (``"image"``: the
``image_token_id`` placeholders, which the processors expand to one per visual feature,
LLaVA-NeXT's row-newline features included), or only the other positions (``"text"``:
chat-template and instruction tokens, Qwen's ``<|vision_start|>``/``<|vision_end|>``
included). Padding is excluded through the attention mask; no answer tokens are appended.

Choices where the spec is unsure (stated here once for the three methods):

* the prompt of an example is the task's single prompt; retrieval uses the positive
  candidate's prompt (as HONES does), not all 50 candidates;
* an example with no selected position (e.g. ``positions="image"`` on an input without
  image tokens) is left out of the mean and counted in ``n_without_positions``; a split
  where no example has a selected position is an error;
* "fires" is strictly g > 0 (the paper's threshold 0; SiLU outputs are never exactly 0
  but for x = 0).

Recipe: one nnsight trace per batch; at every layer's ``act_output`` site the trace
reduces g over positions and saves only two [B, d_ff] sums per layer (positions firing, sum of g). Shards are
checkpointed by the engine's shard loop (one run per task's data, so APE resumes task by task).
"""

from __future__ import annotations

import nnsight
import numpy as np
import torch

from hones_nn.engine.encoding import encode_prompts, to_device
from hones_nn.engine.shards import run_shards
from hones_nn.interventions.base import SiteEdit, apply_edits

POSITION_CHOICES = ("all", "image", "text")


def positions_option(options: dict) -> str:
    """The validated ``positions`` option ("all" by default)."""
    positions = options.get("positions", "all") or "all"
    if positions not in POSITION_CHOICES:
        raise ValueError(f"positions={positions!r}; choose one of {', '.join(POSITION_CHOICES)}")
    return positions


def position_mask(enc, image_token_id: int, positions: str = "all") -> torch.Tensor:
    """bool [B, S]: real (non-padding) prompt positions of ``enc``, restricted by modality.

    Prompt positions are those up to ``enc.last_prompt_index`` (answers, when an encoding
    has them, are excluded); padding is where ``attention_mask`` is 0.
    """
    if positions not in POSITION_CHOICES:
        raise ValueError(f"positions={positions!r}; choose one of {', '.join(POSITION_CHOICES)}")
    ids = enc.inputs["input_ids"]
    mask = enc.inputs["attention_mask"].bool()
    seq = torch.arange(ids.shape[1]).unsqueeze(0)
    mask = mask & (seq <= enc.last_prompt_index.unsqueeze(1))
    is_image = ids == int(image_token_id)
    if positions == "image":
        mask = mask & is_image
    elif positions == "text":
        mask = mask & ~is_image
    return mask


@torch.no_grad()
def activation_stats(ctx, td, item_ids: list[int], positions: str = "all"):
    """Per example: (ap [n, L, d_ff], ma [n, L, d_ff], n_positions [n]), float64.

    ap = fraction of selected positions with g > 0; ma = mean of g over them (0 where an
    example has no selected position).
    """
    engine, adapter = ctx.engine, ctx.loaded.adapter
    sizes = ctx.sizes
    L, F = sizes.num_layers, sizes.d_ff
    items = [td.items[i] for i in item_ids]
    ap = torch.zeros(len(items), L, F, dtype=torch.float64)
    ma = torch.zeros_like(ap)
    counts = torch.zeros(len(items), dtype=torch.float64)
    for start in range(0, len(items), ctx.batch_size):
        chunk = items[start : start + ctx.batch_size]
        prompts = [td.task.attribution_prompt(item) for item in chunk]
        enc = encode_prompts(ctx.loaded, td.images, prompts, reference_compat=td.task.reference_compat)
        mask = position_mask(enc, sizes.image_token_id, positions)
        n_pos = mask.sum(1).double()
        selected = mask.float().to(engine.device)  # [B, S], 1 on the selected positions
        inputs = to_device(enc.inputs, engine.device)

        def reduce(g, selected=selected):
            m = selected.to(g.device).unsqueeze(-1)  # [B, S, 1]
            fired = ((g > 0).float() * m).sum(1)  # exact counts
            total = (g.float() * m).sum(1)
            return torch.stack([fired, total]).cpu()  # [2, B, d_ff]: sums only

        edits = [SiteEdit(layer, "act_output", reduce) for layer in range(L)]
        with engine.envoy.trace(**inputs):
            saved = nnsight.save(apply_edits(engine.envoy, adapter, edits))
        sums = torch.stack(list(saved), dim=2).double()  # [2, B, L, d_ff]
        per_position = sums / n_pos.clamp_min(1)[None, :, None, None]
        end = start + len(chunk)
        ap[start:end], ma[start:end], counts[start:end] = per_position[0], per_position[1], n_pos
    return ap, ma, counts


def mean_activation_stats(ctx, td, positions: str, method: str) -> dict:
    """Example means of AP and MA over ``td`` (checkpointed shards): {"ap", "ma"} [L, d_ff],
    plus "n" (examples in the mean) and "n_without_positions"."""
    config = {
        **ctx.run_config(),
        "method": method,
        "stats_task": td.task.name,
        "stats_data": td.data_dir,
        "stats_split": td.split,
        "stats_n": td.n,
        "positions": positions,
    }

    def compute(ids: list[int]) -> dict[str, np.ndarray]:
        ap, ma, counts = activation_stats(ctx, td, ids, positions)
        keep = counts > 0
        return {
            "ap_sum": ap[keep].sum(0).numpy(),
            "ma_sum": ma[keep].sum(0).numpy(),
            "count": np.array([float(keep.sum())]),
            "empty": np.array([float((~keep).sum())]),
        }

    def reduce(parts: list[dict[str, np.ndarray]]) -> dict:
        count = sum(p["count"][0] for p in parts)
        empty = int(sum(p["empty"][0] for p in parts))
        if count == 0:
            raise ValueError(
                f"task {td.task.name!r}: no example has a {positions!r} prompt position, so the activation "
                "statistics are undefined; use positions='all'"
            )
        return {
            "ap": sum(p["ap_sum"] for p in parts) / count,
            "ma": sum(p["ma_sum"] for p in parts) / count,
            "n": int(count),
            "n_without_positions": empty,
        }

    return run_shards(
        ctx.checkpoint_dir,
        config,
        td.n,
        int(ctx.options.get("shard_size", 64)),
        compute,
        reduce,
        desc=f"{method} ({td.task.name}, {positions} positions)",
        progress=ctx.progress,
    )
