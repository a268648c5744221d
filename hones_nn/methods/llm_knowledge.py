"""LLM-Knowledge: neuron-level knowledge attribution (Yu & Ananiadou 2024), a HONES baseline.

docs/methods.md, "Baselines": the importance of neuron (l, i) for the target y is
the change of the target's log-probability when the neuron's write-out is added to the
residual stream entering the layer's MLP, read through the final norm and unembedding:

    Imp_{l,i}(x) = log p(y | r + m_i) - log p(y | r),
    r   = the residual at T entering layer l's MLP (attention output included): the input
          of the decoder layer's ``post_attention_layernorm``,
    m_i = z_{l,i}(T) W_down[:, i],
    p(. | v) = softmax(W_U (gamma * v) / sigma),

gamma the final norm's weight. Score = E_x Imp_{l,i}(x), ranked descending.

The final norm's scale sigma (option ``norm_scale``; the spec says "frozen final-layer
scale" and leaves the value open):

* ``"final"`` (default, our reading of the spec): sigma = sigma_T = sqrt(mean h(T)^2 + eps),
  the RMS of the final residual (the input of the final norm) at T in the clean run,
  frozen for r and every r + m_i -- the same frozen scale as DLA, so the logit change of
  the target is exactly the neuron's DLA;
* ``"residual"``: sigma = RMS of r itself (p(. | r) is then exactly the logit lens of r),
  frozen for every r + m_i;
* ``"live"``: the norm is applied to each vector, sigma = RMS(r + m_i) (Yu & Ananiadou's
  original, not frozen).

Target y: as DLA (:mod:`hones_nn.methods.dla`): the first token of the gold continuation
at T (VQA answer, OCR text, caption's teacher-forced reference, retrieval's " Yes" on the
positive candidate's prompt) by default; the shared ``target`` option takes ``all`` (the
mean of the log-prob differences over all the gold tokens; ``mean`` is its old name) or
``idf`` (HONES's target tokens, the log-probs weighted as u_y weighs them).

Recipe: one nnsight trace per batch saves r(T) and z(T) of every layer (and h(T) for
``"final"``); then per layer, all d_ff candidates r + m_i at once through the factorised
logits (W_U (gamma * (r + z_i w_i)) = W_U (gamma * r) + z_i W_U (gamma * w_i)): one matrix
product W_U diag(gamma) W_down per neuron chunk and batch (option ``chunk``, 1024 neurons),
then a [chunk, vocab] log-softmax per example. For ``"live"`` the candidates' RMS comes in
closed form, ||r + z_i w_i||^2 = ||r||^2 + 2 z_i r.w_i + z_i^2 ||w_i||^2.

Cost: 1 forward per example (prompt prefill only), no backward; plus, per batch and
layer, one [vocab x hidden] x [hidden x d_ff] product and d_ff x vocab log-softmaxes per
example.
"""

from __future__ import annotations

import functools

import torch

from hones_nn.engine.readout import final_norm_eps, read_at_T, rms
from hones_nn.methods.base import MeanOverExamples, RunContext, ShardPlan, register_method
from hones_nn.methods.dla import target_context, target_mode

NORM_SCALES = ("final", "residual", "live")


def norm_scale_option(options: dict) -> str:
    scale = options.get("norm_scale", "final") or "final"
    if scale not in NORM_SCALES:
        raise ValueError(f"norm_scale={scale!r}; choose one of {', '.join(NORM_SCALES)}")
    return scale


def llm_knowledge_scores(values, envoy, adapter, targets, weights, norm_scale: str, eps: float, chunk: int):
    """Inside the read trace (``read_at_T(..., reduce=)``): Imp [B, L, d_ff] float64 from
    r(T), z(T) (and h(T) for the ``final`` scale), with W_U, the final norm's gamma and
    each W_down read where they are: the vocabulary-sized products never leave the server."""
    W_U = adapter.lm_head(envoy).weight.detach()
    device = W_U.device
    W_U = W_U.float()
    gamma = adapter.final_norm(envoy).weight.detach().float().cpu().to(device)
    hidden = gamma.shape[0]
    targets = [t.to(device) for t in targets]
    weights = [w.to(device) for w in weights]
    r_all, z_all = values["r"], values["z"]
    B, L, F = z_all.shape
    out = torch.zeros(B, L, F, dtype=torch.float64)
    sigma_T = rms(values["h"], eps) if norm_scale == "final" else None
    for layer in range(L):
        W_down = adapter.down_proj(envoy, layer).weight.detach().to(device).float()  # [hidden, d_ff]
        r = r_all[:, layer].to(device)  # [B, hidden]
        z = z_all[:, layer].to(device).double()  # [B, d_ff]
        base_unscaled = ((r * gamma) @ W_U.T).double()  # [B, V]
        if norm_scale == "final":
            sigma_base = sigma_T.to(device)
        else:
            sigma_base = rms(r, eps).to(device)  # float64 [B]
        if norm_scale == "live":
            r64, W64, z64 = r.double(), W_down.double(), z
            r_dot_w = r64 @ W64  # [B, d_ff]
            w_sq = W64.pow(2).sum(0)  # [d_ff]
            sq = r64.pow(2).sum(-1, keepdim=True) + 2 * z64 * r_dot_w + z64.pow(2) * w_sq
            sigma_cand = torch.sqrt(sq / hidden + eps)  # [B, d_ff]
        base_logp = [
            (torch.log_softmax(base_unscaled[b] / sigma_base[b], -1)[tgt] * weights[b]).sum()
            for b, tgt in enumerate(targets)
        ]
        for c0 in range(0, F, chunk):
            cols = slice(c0, min(F, c0 + chunk))
            M = (W_U @ (gamma[:, None] * W_down[:, cols])).double().T  # [C, V], shared by the batch
            for b, tgt in enumerate(targets):
                cand = base_unscaled[b][None, :] + z[b, cols][:, None] * M  # [C, V] unscaled logits
                sig = sigma_cand[b, cols] if norm_scale == "live" else sigma_base[b].expand(cand.shape[0])
                logp = (torch.log_softmax(cand / sig[:, None], -1)[:, tgt] * weights[b]).sum(-1)
                out[b, layer, cols] = (logp - base_logp[b]).cpu()
    return out


@torch.no_grad()
def llm_knowledge_per_example(
    ctx: RunContext,
    item_ids: list[int],
    mode: str = "first",
    norm_scale: str = "final",
    chunk: int = 1024,
    context=None,
) -> torch.Tensor:
    """Imp_{l,i}(x) [n, L, d_ff] float64 for the given items (one trace per batch; the
    vocabulary projections run inside it, so the client needs no weights)."""
    items = ctx.items(item_ids)
    tokenizer, task = ctx.engine.tokenizer, ctx.td.task
    L, F = ctx.sizes.num_layers, ctx.sizes.d_ff
    eps = final_norm_eps(ctx.loaded)
    out = torch.zeros(len(items), L, F, dtype=torch.float64)
    for start in range(0, len(items), ctx.batch_size):
        batch = items[start : start + ctx.batch_size]
        targets, weights = [], []
        for item in batch:
            ids, w = task.target_tokens(tokenizer, item, mode, context)
            targets.append(torch.tensor(ids))
            weights.append(torch.tensor(w, dtype=torch.float64) / sum(w))
        reduce = functools.partial(
            llm_knowledge_scores, targets=targets, weights=weights, norm_scale=norm_scale, eps=eps, chunk=chunk
        )
        sites = ("r", "z")
        out[start : start + len(batch)] = read_at_T(
            ctx.engine, ctx.td, batch, sites=sites, final=norm_scale == "final", reduce=reduce
        )
    return out


@register_method
class LLMKnowledge(MeanOverExamples):
    name = "llm-knowledge"
    summary = "LLM-Knowledge (Yu & Ananiadou 2024): log p(y | r + z_i W_down[:, i]) - log p(y | r) at T"
    needs = "discovery split of the task (gold targets)"
    cost = "1 forward per example (prompt prefill only) + per layer d_ff candidate log-softmaxes over the vocabulary"
    site = "z (down_proj input) and the residual entering the MLP"
    default_target = "first"

    @classmethod
    def passes(cls, shape, options: dict):
        from hones_nn.methods.base import Passes

        return Passes(1, "1 forward (+ per-layer d_ff x V log-softmaxes)", "forward")

    def plan(self, ctx: RunContext) -> ShardPlan:
        chunk = int(ctx.options.get("chunk", 1024))
        if chunk <= 0:
            raise ValueError(f"chunk must be positive, got {chunk}")
        mode = target_mode(ctx.options, self.default_target)
        return ShardPlan(
            config={"target": mode, "norm_scale": norm_scale_option(ctx.options)},
            state=(chunk, target_context(ctx, mode)),
        )

    def per_example(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> torch.Tensor:
        chunk, context = plan.state
        return llm_knowledge_per_example(
            ctx, item_ids, plan.config["target"], plan.config["norm_scale"], chunk, context
        )

    def result_meta(self, plan: ShardPlan) -> dict:
        return {**plan.config, "chunk": plan.state[0]}
