"""Grad (Schwettmann et al. 2023): activation x gradient on the image positions.

Spec (shared/spec/methods.md, "Baselines"): ``a_i * d log p(y) / d a_i``, max over image
positions, mean over examples. Here, for neuron (l, i) and example x:

    s_{l,i}(x) = max_{p in image positions} z_{l,i}(p) * d log p(y | x) / d z_{l,i}(p)
    Grad_{l,i} = E_x s_{l,i}(x)

Choices (the spec leaves them open; written down here):

* **a = z**, the input of ``down_proj`` (the package's neuron, as HONES), at every
  position; the gradient is the total derivative (all later layers react).
* **y** = the first gold answer token, log-probability at T (the last prompt position):
  VQA the answer, OCR the word, caption the first token of the task's gold reference
  (``item.prompts[0].answer``: one of the references, drawn with a fixed per-image
  seed), retrieval the decision token " Yes" with the positive candidate in the prompt
  (the same token id as evaluation). Token ids: ``tokenizer(answer,
  add_special_tokens=False)`` with special tokens removed, as the teacher-forced
  encodings of the package. A target with no token is a ValueError naming the item.
* **Image positions**: the prompt positions whose input id is the model's image token
  (``image_token_id``; LLaVA's expanded ``<image>`` tokens, Qwen's ``<|image_pad|>``):
  after the projector these hold the image features. The **max is signed** (the
  largest product, not the largest magnitude).
* **Gradients through nnsight 0.8.1**: one trace per batch with ``with loss.backward():``
  (nnsight's backward tracer), reading ``z.grad`` layer by layer in reverse order. The
  model's parameters are frozen for the duration (:func:`frozen_parameters`, flags
  restored after), so no parameter ``.grad`` is touched; the graph starts at layer 0's
  z, marked ``requires_grad_()`` inside the trace, so every later z is on it.

The helpers of this module (gold token, prompt, row replication, frozen parameters) are
shared with the other gradient / patching baselines (``qrnca``, ``group-patching``).

Cost: 1 forward + 1 backward per example (examples batched, ``batch_size`` rows).
"""

from __future__ import annotations

import contextlib

import nnsight
import numpy as np
import torch

from hones_nn.methods.base import Method, MethodResult, RunContext, register_method
from hones_nn.methods.hones import hones_prompt, target_token_ids
from hones_nn.runner.shards import ShardedRun
from hones_nn.tasks.retrieval import decision_token_ids

# ---------------------------------------------------------------- shared helpers


def method_prompt(task, item):
    """The prompt a baseline attributes: retrieval's positive candidate, else the one prompt."""
    return hones_prompt(task, item)


def gold_token_id(ctx: RunContext, item) -> int:
    """y: the first gold answer token (retrieval: " Yes" on the positive prompt)."""
    tokenizer = ctx.engine.tokenizer
    task = ctx.td.task
    if task.name == "retrieval":
        return int(decision_token_ids(tokenizer)[0])
    answer = method_prompt(task, item).answer
    ids = target_token_ids(tokenizer, answer or "")
    if not ids:
        raise ValueError(
            f"item {item.item_id!r}: the gold answer {answer!r} has no non-special token in this tokenizer, "
            "so p(y) is undefined; fix the answer or drop the item"
        )
    return int(ids[0])


def encode_items(ctx: RunContext, items) -> dict:
    """One left-padded batch of the items' prompts (no answers), on the engine's device."""
    prompts = [method_prompt(ctx.td.task, item) for item in items]
    pictures = [ctx.td.images[p.image_index] for p in prompts]
    enc = ctx.loaded.adapter.encode(ctx.loaded.processor, pictures, [p.user_text for p in prompts])
    return {k: v.to(ctx.engine.device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()}


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


@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module):
    """requires_grad False on every parameter inside the block; the flags are restored after.

    Gradients are then taken only with respect to the activations the method marks, the
    backward walks only the graph from them onwards, and no parameter ``.grad`` is written.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def image_positions(ctx: RunContext, input_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, S]: positions holding image features; an error if a row has none."""
    mask = input_ids == ctx.sizes.image_token_id
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"rows {empty} have no image token (id {ctx.sizes.image_token_id}) in the prompt: the method needs "
            "image positions; check the processor builds image placeholders"
        )
    return mask


# ---------------------------------------------------------------- the computation


def grad_scores(ctx: RunContext, item_ids: list[int]) -> torch.Tensor:
    """s [n_items, L, d_ff]: max over image positions of z * d log p(y) / dz, per example."""
    engine, adapter = ctx.engine, ctx.loaded.adapter
    num_layers = ctx.sizes.num_layers
    out = []
    for start in range(0, len(item_ids), ctx.batch_size):
        chunk = [ctx.td.items[i] for i in item_ids[start : start + ctx.batch_size]]
        inputs = encode_items(ctx, chunk)
        y = torch.tensor([gold_token_id(ctx, item) for item in chunk], device=engine.device)
        mask = image_positions(ctx, inputs["input_ids"])[..., None]  # [B, S, 1]
        rows = torch.arange(len(chunk), device=engine.device)
        with frozen_parameters(ctx.loaded.model), torch.enable_grad():
            with engine.envoy.trace(**inputs):
                zs = []
                for layer in range(num_layers):
                    z = adapter.down_proj(engine.envoy, layer).input
                    if layer == 0:
                        z.requires_grad_(True)  # the graph starts here: every later z is on it
                    zs.append(z)
                logits = adapter.lm_head(engine.envoy).output[:, -1].float()
                loss = torch.log_softmax(logits, -1)[rows, y].sum()
                with loss.backward():
                    per_layer = []
                    for layer in reversed(range(num_layers)):
                        z = zs[layer]
                        prod = (z.detach().float() * z.grad.float()).masked_fill(~mask, float("-inf"))
                        per_layer.append(prod.amax(1).cpu())
                    scores = nnsight.save(per_layer)
        out.append(torch.stack(list(reversed(scores)), dim=1).double())  # [B, L, d_ff]
    return torch.cat(out)


@register_method
class Grad(Method):
    name = "grad"
    summary = "Grad (Schwettmann et al.): max over image positions of z_i * d log p(y)/dz_i, mean over examples"
    needs = "discovery split of the task (gold answers)"
    cost = "1 forward + 1 backward per example (batched; y = first gold token at T)"
    site = "z (down_proj input), image positions"

    def attribute(self, ctx: RunContext) -> MethodResult:
        config = {"method": self.name, "target": "first gold token, log p at T", **ctx.run_config()}
        run = ShardedRun(ctx.checkpoint_dir, config, ctx.td.n, int(ctx.options.get("shard_size", 64)))

        def compute(shard: range) -> dict[str, np.ndarray]:
            s = grad_scores(ctx, list(shard))
            return {"sum": s.sum(0).numpy(), "count": np.array([float(s.shape[0])])}

        parts = run.run(compute, desc=f"{self.name} ({ctx.td.task.name})", progress=ctx.progress)
        count = sum(p["count"][0] for p in parts)
        scores = sum(p["sum"] for p in parts) / count
        run.cleanup()
        return MethodResult(
            scores=scores,
            meta={"target": "first gold answer token (retrieval: ' Yes' on the positive prompt)",
                  "objective": "log p(y) at T", "reduction": "signed max over image positions, mean over examples"},
        )
