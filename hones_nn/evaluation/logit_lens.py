"""MLP logit lens of a neuron group (HONES 5.2 and appendix E.4, Fig. 4 / Fig. 9).

At every decoder layer l, the output of the MLP block at the last prompt position T
(the position that predicts the first answer token) is projected to the vocabulary,
once in the clean forward and once in a forward with the group's neurons masked
(z_i <- 0 at every position; the masked forward is a whole forward, so the MLP output of
layer l also reflects masked neurons of earlier layers). Per layer and token:

    Delta logit_t = E_x[ lens(mlp_out_l(x))_t - lens(mlp_out_l(x; group masked))_t ],

positive where the group *promotes* the token. The paper lists the tokens with the
largest Delta ("which candidate tokens lose the most support"); we do the same (only
tokens with Delta > 0: a layer the mask does not reach lists none), and also
report Delta at each example's target token (the first token of the gold continuation,
as DLA: VQA answer, OCR text, caption reference, " Yes" for retrieval on the positive
candidate's prompt; the shared ``target`` option: "all" or "idf" average Delta over the
target tokens with their weights).

The projection (``norm``):

* ``"final"`` (default): lens(v) = W_U final_norm(v), the final RMSNorm (with its weight)
  applied to the MLP output itself, then ``lm_head``. This is the standard logit lens
  (nostalgebraist 2020) that Neo et al. (2025), the lens the paper follows, apply to
  LLaVA's hidden states. Note that the norm divides by the RMS of the projected vector,
  so a group that shrinks the whole MLP output changes every token's logit.
* ``"frozen"``: lens(v) = W_U (gamma * v) / sigma_T, sigma_T the RMS of the final residual
  (the input of the final norm) at T in the *clean* run, frozen for both runs: linear in
  v, so Delta is the change of the MLP block's direct logit contribution (DLA units).
* ``"none"``: lens(v) = W_U v, no norm at all.

Examples: the task's HONES prompts (:func:`hones_nn.methods.hones.hones_prompt`: the
first prompt of an item; retrieval's positive candidate). One clean trace per batch and
one masked trace per batch and group. Averaged over all examples (``limit=1`` gives the
paper's single-case view).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import nnsight
import numpy as np
import torch

from hones_nn.engine.readout import final_norm_eps, rms

NORMS = ("final", "frozen", "none")


@dataclass
class LensGroup:
    name: str
    size: int
    masked: np.ndarray  # [L, V] mean projected logits with the group masked
    target_masked: np.ndarray  # [L] mean projected logit of each example's target token, masked


@dataclass
class LensReport:
    task: str
    norm: str
    n: int
    base: np.ndarray  # [L, V] mean projected logits, clean run
    target_base: np.ndarray  # [L]
    groups: dict[str, LensGroup] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)  # decoded vocabulary

    def delta(self, group: str) -> np.ndarray:
        """[L, V] Delta logit = base - masked (positive: the group promotes the token)."""
        return self.base - self.groups[group].masked

    def target_delta(self, group: str) -> np.ndarray:
        return self.target_base - self.groups[group].target_masked

    def top_tokens(self, group: str, k: int = 5) -> list[list[dict]]:
        """Per layer, the k tokens whose projected logit falls most when the group is masked
        (only tokens that do fall: Delta > 0; a layer the mask does not reach lists none)."""
        delta = self.delta(group)
        out = []
        for layer in range(delta.shape[0]):
            # stable: equal drops keep the lower token id first
            order = [t for t in np.argsort(-delta[layer], kind="stable")[:k] if delta[layer, t] > 0]
            out.append(
                [
                    {
                        "token_id": int(t),
                        "token": self.tokens[t] if t < len(self.tokens) else str(t),
                        "delta": float(delta[layer, t]),
                        "base": float(self.base[layer, t]),
                        "masked": float(self.groups[group].masked[layer, t]),
                    }
                    for t in order
                ]
            )
        return out

    def as_json(self, k: int = 5) -> dict:
        return {
            "task": self.task,
            "norm": self.norm,
            "n": self.n,
            "position": "T (last prompt token)",
            "groups": [
                {
                    "name": name,
                    "size": g.size,
                    "target_delta": [float(x) for x in self.target_delta(name)],
                    "layers": [
                        {"layer": layer, "top_falls": tops} for layer, tops in enumerate(self.top_tokens(name, k))
                    ],
                }
                for name, g in self.groups.items()
            ],
        }


def decode_vocab(tokenizer, size: int) -> list[str]:
    out = []
    for i in range(size):
        try:
            text = tokenizer.decode([i])
        except Exception:
            text = f"<{i}>"
        out.append(text)
    return out


@torch.no_grad()
def _lens_logits(
    engine,
    inputs: dict,
    mask_by_layer: Mapping[int, torch.Tensor] | None,
    num_layers: int,
    norm: str,
    eps: float,
    sigma: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One trace: the MLP outputs at T of every layer projected to the vocabulary under
    ``norm``, [B, L, V] float32 CPU, computed inside the trace where the weights are
    (:func:`lens_project`); and, for the clean run of ``norm="frozen"`` (``sigma`` None),
    the clean run's final RMS at T [B], which the masked runs are given back."""
    from hones_nn.interventions.base import site_value

    adapter, envoy = engine.adapter, engine.envoy
    with envoy.trace(**inputs):
        outs = []
        for layer in range(num_layers):  # execution order: z of layer l, the MLP output of l, then l + 1
            if mask_by_layer and layer in mask_by_layer:
                z = site_value(envoy, adapter, layer, "down_proj_input")
                z[..., mask_by_layer[layer].to(z.device)] = 0
            outs.append(adapter.mlp(envoy, layer).output[:, -1].float().cpu())
        if norm == "frozen" and sigma is None:
            sigma = nnsight.save(rms(adapter.final_norm(envoy).input[:, -1].float().cpu(), eps).float())
        logits = nnsight.save(lens_project(envoy, adapter, torch.stack(outs, dim=1), norm, eps, sigma))
    return logits, sigma


def rms_norm(v: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The decoders' RMSNorm (Llama, Mistral, Qwen2), written out: weight * v / rms(v), the
    statistics in float32, the result in v's dtype times the weight."""
    dtype = v.dtype
    v = v.to(torch.float32)
    variance = v.pow(2).mean(-1, keepdim=True)
    v = v * torch.rsqrt(variance + eps)
    return weight * v.to(dtype)


def lens_project(envoy, adapter, vectors: torch.Tensor, norm: str, eps: float, sigma=None) -> torch.Tensor:
    """Inside a trace: vocabulary logits of ``vectors`` [..., hidden] under ``norm`` (see
    the module docstring), float32 CPU, through the final norm and ``lm_head`` weights."""
    head = adapter.lm_head(envoy)
    param = head.weight
    bias = getattr(head, "bias", None)
    gamma = adapter.final_norm(envoy).weight
    v = vectors.to(device=param.device, dtype=param.dtype)
    if norm == "final":
        v = rms_norm(v, gamma, eps)
    elif norm == "frozen":
        if sigma is None:
            raise ValueError("norm='frozen' needs the clean run's final RMS sigma_T")
        g = gamma.to(v.device).float()
        v = v.float() * g / sigma.to(v.device).float().reshape(*sigma.shape, *([1] * (v.dim() - sigma.dim())))
        v = v.to(param.dtype)
    elif norm != "none":
        raise ValueError(f"norm={norm!r}; choose one of {', '.join(NORMS)}")
    return torch.nn.functional.linear(v, param, bias).float().cpu()


@torch.no_grad()
def logit_lens(
    engine,
    td,
    groups: Mapping[str, Sequence[tuple[int, int]]],
    norm: str = "final",
    batch_size: int = 16,
    progress: bool = True,
    target: str = "first",
) -> LensReport:
    """The MLP logit lens of ``td``'s examples, clean and with each group masked (see the module docstring).

    ``target``: the tokens whose (weighted mean) Delta is reported per layer, the shared
    target option of the direct-projection methods (``hones_nn.tasks.base.TARGET_MODES``):
    ``first`` (default: the first gold token), ``all`` or ``idf``."""
    from tqdm.auto import tqdm

    from hones_nn.engine.readout import attribution_inputs
    from hones_nn.interventions.neurons import group_by_layer
    from hones_nn.tasks.base import target_option

    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}; choose one of {', '.join(NORMS)}")
    if not groups:
        raise ValueError("give at least one neuron group to mask")
    if td.n == 0:
        raise ValueError(f"no {td.task.name} examples on split {td.split}")
    loaded = engine.loaded
    sizes = loaded.sizes
    L = sizes.num_layers
    for name, neurons in groups.items():
        if not neurons:
            raise ValueError(f"neuron group {name!r} is empty: nothing to mask")
        bad = [(layer, i) for layer, i in neurons if not (0 <= layer < L and 0 <= i < sizes.d_ff)]
        if bad:
            raise ValueError(f"group {name!r} has neurons outside the model ({L} layers x {sizes.d_ff}): {bad[:3]}")
    masks = {name: group_by_layer(neurons) for name, neurons in groups.items()}
    eps = final_norm_eps(loaded)
    base_sum = None
    sums = dict.fromkeys(groups)
    tgt_base = torch.zeros(L, dtype=torch.float64)
    tgt_masked = {name: torch.zeros(L, dtype=torch.float64) for name in groups}
    tokenizer = engine.tokenizer
    target = target_option({"target": target}, "first")
    context = td.task.direction_context(tokenizer, td.items) if target == "idf" else None
    starts = range(0, td.n, batch_size)
    for start in tqdm(starts, desc=f"logit lens ({td.task.name})", disable=not progress, leave=False):
        items = td.items[start : start + batch_size]
        target_rows = [td.task.target_tokens(tokenizer, item, target, context) for item in items]
        inputs = attribution_inputs(engine, td, items)
        logits, sigma = _lens_logits(engine, inputs, None, L, norm, eps)
        logits = logits.double()  # [B, L, V]
        base_sum = logits.sum(0) if base_sum is None else base_sum + logits.sum(0)
        # per example, the target tokens' weights (summing to 1) over the vocabulary: [B, V]
        weights = torch.zeros(len(items), logits.shape[-1], dtype=torch.float64)
        for b, (ids, w) in enumerate(target_rows):
            w_t = torch.tensor(w, dtype=torch.float64)
            weights[b].index_add_(0, torch.tensor(ids, dtype=torch.long), w_t / w_t.sum())
        tgt_base += torch.einsum("blv,bv->l", logits, weights)
        for name in groups:
            logits_m = _lens_logits(engine, inputs, masks[name], L, norm, eps, sigma)[0].double()
            sums[name] = logits_m.sum(0) if sums[name] is None else sums[name] + logits_m.sum(0)
            tgt_masked[name] += torch.einsum("blv,bv->l", logits_m, weights)
    n = td.n
    vocab = base_sum.shape[-1]
    report = LensReport(
        td.task.name, norm, n, (base_sum / n).numpy(), (tgt_base / n).numpy(), tokens=decode_vocab(tokenizer, vocab)
    )
    for name, neurons in groups.items():
        report.groups[name] = LensGroup(name, len(neurons), (sums[name] / n).numpy(), (tgt_masked[name] / n).numpy())
    return report
