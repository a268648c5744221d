"""Attribution-patching (AtP) pre-screen of V-SEAM head scores, then exact verification.

Spec (docs/methods.md, "Attribution patching pre-screen"): for head h of layer l,
with x the ``o_proj`` input viewed as [S, H, d_head] and U a differentiable utility,

    drop_h(x) = U(x) - U(x; theta_h)  ~=  sum_positions (x_h - mean_{h' != h} x_{h'}) . dU/dx_h

i.e. minus the first-order Taylor term of U along the mean-replacement direction
Delta_h = mean_{h' != h} x_{h'} - x_h. dU/dx is the *total* derivative (every later layer
reacts), taken at the clean run, so one forward + one backward per batch scores every
head of every layer at once. The screen score is E_x drop_h(x) over the discovery split.

U, the screen utility (always teacher-forced, whatever ``--utility`` the verification uses):

* generative tasks (VQA, OCR, caption): the log-probability of the gold answer tokens of
  the item's first prompt (sum over the answer's tokens, EOS excluded) -- ``sweep``'s
  ``logprob`` utility;
* retrieval: the margin logit-diff(positive) - mean logit-diff(negatives), logit-diff =
  logit(" Yes") - logit(" No") at T, over all candidates of the item -- ``sweep``'s
  ``logprob`` utility for retrieval. Each candidate prompt is a row; its row utility is
  weighted +1 (positive) or -1 / n_negatives, so the per-item sum is the margin.

The approximation: first order only. Mean replacement is not a small change (it swaps a
head's output for another vector of similar norm), so the neglected higher-order terms
(attention softmax and norms downstream, MLP non-linearities, the log-softmax) can
reorder heads; that is why the top N heads are re-scored exactly. Known failure mode:
where the model is confident (p(answer) -> 1, log p -> 0) the gradient of log p vanishes
and the first-order term misses large drops (saturation); a log-odds objective did not
help in our test. ``benchmarks/bench_head_screen.py`` measures the screen's Spearman
correlation and top-K_h recall against exact scores: run it on your model before trusting
a screen-only table or a small ``--verify-top``.

Verification (``verify_top`` = N, default 4 x K_h): the N heads with the largest screen
estimate (ties: lower layer, then lower head) are scored exactly by the V-SEAM sweep
(:func:`hones_nn.methods.vseam.exact_head_utilities`) with the run's ``--utility``
(the task metric of greedy generation by default). The table then holds:

* verified heads: ``score`` = the exact V-SEAM score, ``intervened_utility`` = the exact
  intervened utility, ``rank`` 1..N by exact score (ties: lower layer, then head);
* unverified heads: ``score`` = the screen estimate (in the screen utility's units),
  ``intervened_utility`` = NaN (not measured), ``rank`` N+1..L*H by screen estimate --
  below every verified head whatever the two scores' values;
* ``base_utility`` = the exact clean utility (the screen's clean U when N = 0).

With ``verify_top=0`` the table is the screen alone: ``score`` = screen estimate, ranks
from it, ``base_utility`` = mean clean U, ``intervened_utility`` = base - estimate (the
first-order prediction). The metadata records ``screen``, ``verify_top``,
``verified_heads``, ``screen_utility``, ``screen_scores`` (the full [L, H] estimate
matrix), ``screen_base_utility`` and ``rank_rule``.

Cost: 1 forward + 1 backward per example for the screen (retrieval: per candidate), plus
(N + 1) evaluations per example for the verification.
"""

from __future__ import annotations

import time

import nnsight
import numpy as np
import torch

from hones_nn.engine.encoding import encode_prompts, to_device
from hones_nn.engine.readout import frozen_parameters
from hones_nn.engine.shards import run_shards
from hones_nn.methods.base import (
    Method,
    MethodResult,
    Passes,
    RunContext,
    default_top_heads,
    head_utility,
    register_method,
    top_heads_option,
)
from hones_nn.methods.vseam import exact_head_utilities, utility_passes
from hones_nn.tasks.retrieval import decision_token_ids

SCREEN_UTILITY = {
    "generative": "teacher-forced log-prob of the gold answer (sum over answer tokens, EOS excluded)",
    "retrieval": "logit-diff margin: (logit(' Yes') - logit(' No'))(positive) - mean over negatives, at T",
}
RANK_RULE = (
    "verified heads (exact V-SEAM score) rank 1..N by exact score; unverified heads rank N+1.. by "
    "screen estimate, score = screen estimate, intervened_utility = NaN"
)


def head_estimates(x: torch.Tensor, grad: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, H]: sum over positions and dims of (x_h - mean_{h' != h} x_{h'}) * dU/dx_h.

    ``x`` and ``grad`` are the ``o_proj`` input and dU/d(input), [B, S, H * d]."""
    b, s, width = x.shape
    xv = x.float().reshape(b, s, num_heads, width // num_heads)
    gv = grad.float().reshape(b, s, num_heads, width // num_heads)
    other_mean = (xv.sum(dim=2, keepdim=True) - xv) / (num_heads - 1)
    return ((xv - other_mean) * gv).sum(dim=(1, 3))


def _rows(task, items):
    """(item index, prompt, weight) rows whose weighted utility sum is each item's U."""
    return [(i, prompt, weight) for i, item in enumerate(items) for prompt, weight in task.screen_rows(item)]


def atp_scores(ctx: RunContext, item_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(estimates [n_items, L, H], clean U [n_items]) for the given discovery items."""
    engine, adapter, task = ctx.engine, ctx.loaded.adapter, ctx.td.task
    sizes = ctx.sizes
    num_layers, num_heads = sizes.num_layers, sizes.num_heads
    items = [ctx.td.items[i] for i in item_ids]
    rows = _rows(task, items)
    estimates = np.zeros((len(items), num_layers, num_heads))
    clean = np.zeros(len(items))
    retrieval = not task.generative  # decision-scored: U is a Yes-No logit-difference margin
    if retrieval:
        yes, no = decision_token_ids(engine.tokenizer)
    for start in range(0, len(rows), ctx.batch_size):
        chunk = rows[start : start + ctx.batch_size]
        enc = encode_prompts(
            ctx.loaded,
            ctx.td.images,
            [p for _, p, _ in chunk],
            with_answers=not retrieval,
            reference_compat=task.reference_compat,
        )
        inputs = to_device(enc.inputs, engine.device)
        weights = torch.tensor([w for _, _, w in chunk], dtype=torch.float32, device=engine.device)
        batch = len(chunk)
        if not retrieval:
            ids = inputs["input_ids"]
            answer = enc.answer_mask.to(engine.device)[:, 1:].clone()
            last = answer.shape[1] - 1 - answer.flip(1).float().argmax(1)
            answer[torch.arange(batch, device=answer.device), last] = False  # drop EOS
        with frozen_parameters(ctx.loaded.model), torch.enable_grad(), engine.envoy.trace(**inputs):
            xs = []
            for layer in range(num_layers):
                x = adapter.o_proj(engine.envoy, layer).input
                if layer == 0:
                    x.requires_grad_(True)  # the graph starts here: every later o_proj input is on it
                xs.append(x)
            logits = adapter.lm_head(engine.envoy).output
            if retrieval:
                last_logits = logits[:, -1].float()
                row_u = last_logits[:, yes] - last_logits[:, no]
            else:
                logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                token_lp = logprobs.gather(-1, ids[:, 1:, None])[..., 0]
                row_u = (token_lp * answer).sum(1)
            saved_u = row_u.detach().cpu().save()
            loss = (row_u * weights).sum()
            with loss.backward():
                per_layer = []
                for layer in reversed(range(num_layers)):
                    x = xs[layer]
                    per_layer.append(head_estimates(x.detach(), x.grad, num_heads).cpu())
                saved = nnsight.save(per_layer)
        est = torch.stack(list(reversed(saved)), dim=1).double().numpy()  # [rows, L, H]
        row_u = saved_u.double().numpy()
        for k, (i, _, w) in enumerate(chunk):
            estimates[i] += est[k]  # the row's gradient already carries its weight w
            clean[i] += w * row_u[k]
    return estimates, clean


def top_heads_by(scores: np.ndarray, n: int) -> list[tuple[int, int]]:
    """The n (layer, head) pairs of largest score; ties: lower layer, then lower head."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-flat, kind="stable")[:n]
    heads = scores.shape[1]
    return [(int(k // heads), int(k % heads)) for k in order]


@register_method
class AtpScreenHeads(Method):
    name = "atp-screen"
    kind = "heads"
    site = "o_proj input, one head slice (first-order estimate, then exact)"
    summary = (
        "AtP pre-screen of V-SEAM: drop_h ~= sum_pos (x_h - mean_{h'!=h} x_h') . dU/dx_h (first-order "
        "Taylor term of the mean replacement, U = teacher-forced log-prob of the gold answer; retrieval: "
        "Yes-No logit-diff margin); the top N heads (default 4 x K_h) re-scored exactly by V-SEAM, the "
        "others keep the estimate and rank below them"
    )
    needs = "discovery split of the task (gold answers)"
    cost = "1 forward + 1 backward per example (retrieval: per candidate) + (N + 1) V-SEAM evaluations, N = verify_top"
    approximation = (
        "first-order Taylor estimate of the mean-replacement drop at the clean run, on the "
        "teacher-forced log-prob of the gold answer (retrieval: Yes-No logit-diff margin) whatever "
        "--utility is; ignores the higher-order terms (mean replacement is not a small change), so only "
        "the top --verify-top heads (default 4 x K_h) carry exact V-SEAM scores; the rest keep the "
        "estimate and rank below them"
    )

    needs_gradients = True
    remote_refusal = (
        "it takes gradients through the model (a backward pass inside the trace with the parameters "
        "frozen on this machine), which the remote backend does not ship yet: run it where the "
        "weights are"
    )

    @classmethod
    def passes(cls, shape, options: dict) -> Passes:
        verify = options.get("verify_top")
        n = int(verify) if verify is not None else 4 * top_heads_option(shape, options)
        what, _ = utility_passes(head_utility(options))
        return Passes(n + 2, f"1 forward + 1 backward (screen) + {n + 1} {what} (verify N = {n})", "backward")

    def attribute(self, ctx: RunContext) -> MethodResult:
        utility = head_utility(ctx.options)
        caption_corpus = bool(ctx.options.get("caption_corpus", False))
        sizes = ctx.sizes
        total = sizes.num_layers * sizes.num_heads
        verify_top = ctx.options.get("verify_top")
        if verify_top is None:
            verify_top = 4 * default_top_heads(sizes.num_layers, sizes.num_heads)
        verify_top = int(verify_top)
        if verify_top < 0:
            raise ValueError(f"--verify-top must be >= 0, got {verify_top}")
        verify_top = min(verify_top, total)
        if sizes.num_heads < 2:
            raise ValueError("mean replacement needs at least 2 heads per layer")

        start = time.perf_counter()

        def compute(ids: list[int]) -> dict[str, np.ndarray]:
            est, clean = atp_scores(ctx, ids)
            return {"est_sum": est.sum(0), "clean_sum": np.array([clean.sum()]), "count": np.array([float(len(clean))])}

        def reduce(parts: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, float]:
            count = sum(p["count"][0] for p in parts)
            screen = sum(p["est_sum"] for p in parts) / count  # [L, H]
            return screen, float(sum(p["clean_sum"][0] for p in parts) / count)

        screen, screen_base = run_shards(
            ctx.checkpoint_dir,
            {"method": "atp-screen", **ctx.run_config()},
            ctx.td.n,
            int(ctx.options.get("shard_size", 64)),
            compute,
            reduce,
            desc=f"AtP head screen ({ctx.td.task.name})",
            progress=ctx.progress,
        )
        screen_seconds = time.perf_counter() - start

        meta = {
            "utility": utility,
            "caption_corpus": caption_corpus,
            "screen": "atp",
            "verify_top": verify_top,
            "screen_utility": SCREEN_UTILITY["generative" if ctx.td.task.generative else "retrieval"],
            "screen_scores": screen.tolist(),
            "screen_base_utility": screen_base,
            "screen_seconds": round(screen_seconds, 3),
        }
        if verify_top == 0:
            meta.update(
                verified_heads=[],
                rank_rule="screen only: score = screen estimate, ranks from it, "
                "intervened_utility = base - estimate (first order)",
            )
            return MethodResult(
                scores=screen,
                kind="heads",
                extra={"base_utility": screen_base, "intervened": screen_base - screen},
                meta=meta,
            )

        verified = top_heads_by(screen, verify_top)
        start = time.perf_counter()
        base, intervened = exact_head_utilities(
            ctx,
            verified,
            utility,
            caption_corpus,
            desc=f"V-SEAM verification of {verify_top} heads ({ctx.td.task.name})",
        )
        exact = base - intervened
        scores = screen.copy()
        inter = np.full(screen.shape, np.nan)
        ranks = np.zeros(screen.shape, dtype=np.int64)
        by_key = sorted(range(len(verified)), key=lambda k: (-exact[k], verified[k]))  # ties: layer, head
        for r, k in enumerate(by_key, start=1):
            layer, head = verified[k]
            scores[layer, head] = exact[k]
            inter[layer, head] = intervened[k]
            ranks[layer, head] = r
        chosen = set(verified)
        rest = [h for h in top_heads_by(screen, total) if h not in chosen]
        for r, (layer, head) in enumerate(rest, start=verify_top + 1):
            ranks[layer, head] = r
        meta.update(
            verified_heads=[list(h) for h in verified],
            rank_rule=RANK_RULE,
            verify_seconds=round(time.perf_counter() - start, 3),
        )
        return MethodResult(
            scores=scores,
            kind="heads",
            extra={"base_utility": float(base), "intervened": inter, "ranks": ranks},
            meta=meta,
        )
