"""APE: activation probability entropy across tasks (MMNeuron, Huo et al. 2024).

docs/methods.md, "Baselines" (the default, ``variant="mmneuron"``):

1. p_{i,t}: the firing rate of neuron i (g = act_fn(gate_proj(x)) > 0) on task t, i.e.
   AP of :mod:`hones_nn.methods.ap` on the discovery data of each of the four tasks
   (vqa, ocr, caption, retrieval);
2. normalise over tasks: q_{i,t} = p_{i,t} / sum_t' p_{i,t'};
3. entropy H_i = -sum_t q_{i,t} ln q_{i,t} (natural log, 0 ln 0 = 0);
4. neurons whose largest rate max_t p_{i,t} is below the 95th percentile of all rates
   (all L * d_ff * 4 values p_{i,t}, numpy's linear interpolation) get H_i = +inf; so do
   neurons that never fire on any task (q undefined);
5. select the LOWEST entropy (task-specific neurons).

Score table (rank 1 = most important = lowest entropy; scores must be finite):

    score_i = -H_i                                   if H_i is finite   (in [-ln 4, 0])
    score_i = -(ln 4 + 1) - (1 - max_t p_{i,t})      if H_i = +inf      (in [-(ln 4 + 2), -(ln 4 + 1)])

so every filtered neuron ranks below every kept one, and among the filtered ones (which
the spec leaves tied at +inf) higher firing rates come first (our deterministic
tie-break, documented choice; within the 1% budget only kept neurons matter whenever at
least 1% of the neurons pass the filter).

Choices where the spec is unsure:

* The MMNeuron entropy does not depend on the task whose table is written: the default
  ranking is the same for all four tasks, as the spec states it. ``own_task=True``
  (MMNeuron's assignment of a specific neuron to the task where it fires most) moves the
  neurons whose argmax_t p_{i,t} is another task below all others (score - (ln 4 + 3)).
* The other tasks' data: :func:`prepare_task` on the same benchmark folder and split,
  with the same number of benchmark rows as the current task read (``ape_limit``
  overrides), the same ``skip_bad`` and ``reference_compat``.
* Positions: option ``positions`` ("all" default, "image", "text"), as AP.
* ``variant="bernoulli"`` is HONES appendix D.3's description instead: the Bernoulli
  entropy H_b(p) = -p ln p - (1 - p) ln(1 - p) of the current task's firing rate,
  ranked descending; it needs only the current task's data.

Cost: 1 forward per example of each of the four tasks (4 forwards per discovery
example; 1 with ``variant="bernoulli"``).
"""

from __future__ import annotations

import math

import numpy as np

from hones_nn.methods._activation_stats import mean_activation_stats, positions_option
from hones_nn.methods.base import Method, MethodResult, Passes, RunContext, register_method
from hones_nn.tasks.task_data import prepare_task

APE_TASKS = ("vqa", "ocr", "caption", "retrieval")
VARIANTS = ("mmneuron", "bernoulli")


def task_entropy(rates: np.ndarray, percentile: float = 95.0) -> tuple[np.ndarray, float]:
    """H [L, d_ff] (+inf for filtered neurons) and the rate threshold, from rates [T, L, d_ff]."""
    rates = np.asarray(rates, dtype=np.float64)
    threshold = float(np.percentile(rates, percentile))
    total = rates.sum(0)
    safe = np.where(total > 0, total, 1.0)
    q = rates / safe
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    entropy = -terms.sum(0)
    filtered = (rates.max(0) < threshold) | (total <= 0)
    entropy = np.where(filtered, np.inf, entropy)
    return entropy, threshold


def ape_scores(
    rates: np.ndarray, percentile: float = 95.0, own_task: int | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(finite scores [L, d_ff], entropy with +inf, threshold); rank 1 = lowest entropy.

    ``own_task``: index into the rates' task axis; neurons that fire most on another task
    are put below all others.
    """
    rates = np.asarray(rates, dtype=np.float64)
    n_tasks = rates.shape[0]
    entropy, threshold = task_entropy(rates, percentile)
    floor = math.log(n_tasks) + 1.0
    scores = np.where(
        np.isfinite(entropy), -np.where(np.isfinite(entropy), entropy, 0.0), -floor - (1.0 - rates.max(0))
    )
    if own_task is not None:
        other = rates.argmax(0) != own_task
        scores = np.where(other, scores - (math.log(n_tasks) + 3.0), scores)
    return scores, entropy, threshold


def bernoulli_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        b = np.where(p < 1, -(1 - p) * np.log(np.where(p < 1, 1 - p, 1.0)), 0.0)
    return a + b


def _task_data(ctx: RunContext, task: str):
    """The discovery data of ``task`` matching the current task's benchmark, split and size."""
    td = ctx.td
    if task == td.task.name:
        return td
    limit = ctx.options.get("ape_limit")
    if limit is None:
        limit = td.n + len(td.skipped)  # the benchmark rows the current task read
    try:
        return prepare_task(
            ctx.loaded,
            task,
            data=td.data_dir,
            split=td.split,
            limit=int(limit),
            skip_bad=bool(td.skipped),
            reference_compat=td.task.reference_compat,
        )
    except ValueError as exc:
        raise ValueError(
            f"APE needs the discovery data of all four tasks ({', '.join(APE_TASKS)}), but task {task!r} "
            f"cannot be read from {td.data_dir} ({td.split}): {exc}. Use a benchmark with all four tasks, "
            "or a single-task activation baseline: 'ap', 'ma', or 'ape' with options variant='bernoulli'"
        ) from exc


@register_method
class ActivationProbabilityEntropy(Method):
    name = "ape"
    summary = "APE (MMNeuron): lowest entropy of the firing rates normalised over the four tasks (95th-pct filter)"
    needs = "discovery split of all four tasks (vqa, ocr, caption, retrieval) on the same benchmark"
    cost = "1 forward per example of each of the 4 tasks (4 per discovery example; 1 with variant='bernoulli')"
    site = "g (act_fn output)"
    needs_all_tasks = True

    @classmethod
    def passes(cls, shape, options: dict) -> Passes:
        if (options.get("variant") or "mmneuron") == "bernoulli":
            return Passes(1, "1 forward", "forward")
        return Passes(4, "4 forwards (one per task)", "forward")

    def attribute(self, ctx: RunContext) -> MethodResult:
        positions = positions_option(ctx.options)
        variant = ctx.options.get("variant", "mmneuron") or "mmneuron"
        if variant not in VARIANTS:
            raise ValueError(f"APE variant={variant!r}; choose one of {', '.join(VARIANTS)}")
        current = ctx.td.task.name
        if variant == "bernoulli":
            stats = mean_activation_stats(ctx, ctx.td, positions, self.name)
            return MethodResult(
                scores=bernoulli_entropy(stats["ap"]),
                meta={
                    "variant": variant,
                    "positions": positions,
                    "n_examples_used": {current: stats["n"]},
                    "rule": "Bernoulli entropy of the task's firing rate, descending (HONES appendix D.3)",
                },
            )
        if current not in APE_TASKS:
            raise ValueError(f"APE is defined over the tasks {', '.join(APE_TASKS)}, not {current!r}; use 'ap' or 'ma'")
        percentile = float(ctx.options.get("percentile", 95.0))
        own_task = bool(ctx.options.get("own_task", False))
        rates, used = [], {}
        for task in APE_TASKS:
            stats = mean_activation_stats(ctx, _task_data(ctx, task), positions, self.name)
            rates.append(stats["ap"])
            used[task] = stats["n"]
        rates = np.stack(rates)
        scores, entropy, threshold = ape_scores(rates, percentile, APE_TASKS.index(current) if own_task else None)
        kept = int(np.isfinite(entropy).sum())
        return MethodResult(
            scores=scores,
            extra={"rates": rates, "entropy": entropy},
            meta={
                "variant": variant,
                "positions": positions,
                "tasks": list(APE_TASKS),
                "n_examples_used": used,
                "percentile": percentile,
                "rate_threshold": threshold,
                "n_kept": kept,
                "own_task": own_task,
                "rule": "score = -H (kept); -(ln T + 1) - (1 - max_t p) for H = +inf",
            },
        )
