"""Grad (Schwettmann et al. 2023): activation x gradient on the image positions.

Spec (docs/methods.md, "Baselines"): ``a_i * d log p(y) / d a_i``, max over image
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

The gold token comes from the task (``Task.gold_token_ids``), the inputs, image positions
and frozen parameters from the engine (``hones_nn.engine.readout``), shared with the other
gradient / patching baselines (``qrnca``, ``group-patching``).

Cost: 1 forward + 1 backward per example (examples batched, ``batch_size`` rows).
"""

from __future__ import annotations

import nnsight
import torch

from hones_nn.engine.readout import attribution_inputs, frozen_parameters, image_positions
from hones_nn.methods.base import MeanOverExamples, Passes, RunContext, ShardPlan, register_method


def gold_token_id(ctx: RunContext, item) -> int:
    """y: the first gold answer token (retrieval: " Yes" on the positive prompt)."""
    return int(ctx.td.task.gold_token_ids(ctx.engine.tokenizer, item)[0])


# ---------------------------------------------------------------- the computation


def grad_scores(ctx: RunContext, item_ids: list[int]) -> torch.Tensor:
    """s [n_items, L, d_ff]: max over image positions of z * d log p(y) / dz, per example."""
    engine, adapter = ctx.engine, ctx.loaded.adapter
    num_layers = ctx.sizes.num_layers
    out = []
    for start in range(0, len(item_ids), ctx.batch_size):
        chunk = ctx.items(item_ids[start : start + ctx.batch_size])
        inputs = attribution_inputs(ctx.engine, ctx.td, chunk)
        y = torch.tensor([gold_token_id(ctx, item) for item in chunk], device=engine.device)
        mask = image_positions(inputs["input_ids"], ctx.sizes.image_token_id)[..., None]  # [B, S, 1]
        rows = torch.arange(len(chunk), device=engine.device)
        with frozen_parameters(ctx.loaded.model), torch.enable_grad(), engine.envoy.trace(**inputs):
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
class Grad(MeanOverExamples):
    name = "grad"
    summary = "Grad (Schwettmann et al.): max over image positions of z_i * d log p(y)/dz_i, mean over examples"
    needs = "discovery split of the task (gold answers)"
    cost = "1 forward + 1 backward per example (batched; y = first gold token at T)"
    site = "z (down_proj input), image positions"
    needs_gradients = True
    remote_refusal = (
        "it takes gradients through the model (a backward pass inside the trace with the parameters "
        "frozen on this machine), which the remote backend does not ship yet: run it where the "
        "weights are"
    )

    @classmethod
    def passes(cls, shape, options: dict) -> Passes:
        return Passes(1, "1 forward + 1 backward", "backward")

    def plan(self, ctx: RunContext) -> ShardPlan:
        return ShardPlan(config={"target": "first gold token, log p at T"})

    def per_example(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> torch.Tensor:
        return grad_scores(ctx, item_ids)

    def result_meta(self, plan: ShardPlan) -> dict:
        return {
            "target": "first gold answer token (retrieval: ' Yes' on the positive prompt)",
            "objective": "log p(y) at T",
            "reduction": "signed max over image positions, mean over examples",
        }
