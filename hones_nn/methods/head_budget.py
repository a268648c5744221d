"""The head budget K_h of HONES, chosen as the paper does (appendix D.2).

HONES guides its neuron attribution by the top K_h V-SEAM heads; the paper's 30 (LLaVA-1.5-7B)
and 25 (Qwen2.5-VL-7B) come from a sweep, not from first principles: for a grid of budgets K,
the top K heads are mean-replaced *together* and the relative drop of the task metric is
read; the curve rises steeply while the heads are routing hubs, then saturates, and the
budget is taken at its elbow, one for all tasks "to ensure consistent coverage" (the paper
takes a budget near the largest task's elbow). A user's own checkpoint needs its own sweep.

* The joint intervention: every head of the set has its ``o_proj`` input slice replaced by
  the mean of the other heads' *clean* slices of its layer (V-SEAM's theta_h applied to a
  head set; ``hones_nn.interventions.heads``), at every position, generated tokens included.
* The curve: relative drop (base - U_K) / base of the task's own metric, caption's being
  corpus BLEU-4 as ``evaluate`` reports it, on the split the heads were scored on.
* The elbow (the paper names no rule; this is Kneedle, Satopaa et al. 2011): with the point
  (0, 0) prepended, budgets scaled by the largest and drops by the largest drop, the elbow
  is the budget whose scaled drop lies furthest above the chord y = x (the smallest such
  budget on ties). A curve that never rises above 0, or never above the chord (no
  saturation), has no elbow: that is reported, never replaced by a default.
* The unified budget: the largest per-task elbow.

Cost: one evaluation of the split per budget (+ the clean run), batched as (example, set)
rows like the V-SEAM sweep, shards checkpointed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hones_nn.methods.base import RunContext
from hones_nn.methods.vseam import exact_head_utilities

# budgets tried by default, up to the model's head count (a 7B's curves elbow below 64)
DEFAULT_BUDGETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
BUDGET_UTILITIES = ("metric", "prob")  # a relative drop needs a utility that is positive at base
ELBOW_RULE = "kneedle: (0,0) prepended, both axes scaled by their maxima, largest scaled drop above the chord"


def check_budget_utility(utility: str) -> None:
    """Only a utility that is positive at base gives a relative drop (an error names the option)."""
    if utility not in BUDGET_UTILITIES:
        raise ValueError(f"--utility {utility!r}: the head budget reads 'metric' or 'prob' (a relative drop)")


def default_budgets(total_heads: int) -> list[int]:
    """:data:`DEFAULT_BUDGETS` up to ``total_heads``, which is added when it is 64 or fewer."""
    budgets = [b for b in DEFAULT_BUDGETS if b <= total_heads]
    if total_heads <= DEFAULT_BUDGETS[-1] and total_heads not in budgets:
        budgets.append(total_heads)
    return budgets


def check_budgets(budgets: Sequence[int], total_heads: int) -> list[int]:
    """Sorted unique budgets, each in 1..total_heads (an error names the offending value)."""
    out = sorted({int(b) for b in budgets})
    if not out:
        raise ValueError("--budgets is empty; give budgets such as 1,2,4,8")
    bad = [b for b in out if b < 1 or b > total_heads]
    if bad:
        raise ValueError(
            f"--budgets: {bad} outside 1..{total_heads} (the model has {total_heads} heads); drop or change them"
        )
    return out


def head_sets(ranked_heads: Sequence[tuple[int, int]], budgets: Sequence[int]) -> list[tuple]:
    """The condition of each budget: the top K heads as a sorted tuple of (layer, head) pairs."""
    ranked = [(int(layer), int(head)) for layer, head in ranked_heads]
    if len(set(ranked)) != len(ranked):
        raise ValueError("the head ranking lists a head twice")
    if budgets and max(budgets) > len(ranked):
        raise ValueError(f"budget {max(budgets)} is larger than the {len(ranked)} ranked heads")
    return [tuple(sorted(ranked[:k])) for k in budgets]


def elbow(budgets: Sequence[int], drops: Sequence[float]) -> int | None:
    """The curve's elbow by Kneedle (see the module docstring), or None when it has none."""
    x = np.array([0.0, *[float(b) for b in budgets]])
    y = np.array([0.0, *[float(d) for d in drops]])
    if len(x) < 3 or not np.all(np.isfinite(y)) or y.max() <= 0:
        return None
    gap = y / y.max() - x / x.max()
    best = int(np.argmax(gap))
    if best == 0 or gap[best] <= 0:
        return None
    return int(budgets[best - 1])


def unified_budget(elbows: Sequence[int | None]) -> int | None:
    """One K_h for all tasks: the largest elbow (None when no task has one)."""
    found = [e for e in elbows if e is not None]
    return max(found) if found else None


@dataclass
class BudgetCurve:
    """Base and joint-intervention utilities of one task over the budgets."""

    task: str
    budgets: list[int]
    base: float
    utilities: list[float]
    ranked_heads: list[tuple[int, int]]
    metric: str  # what U is: the task metric (corpus-level where the task's is) or P(first token)
    extra: dict = field(default_factory=dict)

    @property
    def relative_drops(self) -> list[float]:
        if not self.base > 0:
            raise ValueError(f"{self.task}: base utility {self.base} is not positive; relative drops mean nothing")
        return [(self.base - u) / self.base for u in self.utilities]

    @property
    def elbow(self) -> int | None:
        return elbow(self.budgets, self.relative_drops)

    def as_dict(self, stand_ins: bool = False) -> dict:
        """The curve as JSON; ``stand_ins`` (a dry run's values): no drops and no elbow."""
        return {
            "task": self.task,
            "metric": self.metric,
            "base": self.base,
            "budgets": list(self.budgets),
            "utilities": [float(u) for u in self.utilities],
            "relative_drops": None if stand_ins else [float(d) for d in self.relative_drops],
            "elbow": None if stand_ins else self.elbow,
            "elbow_rule": ELBOW_RULE,
            "ranked_heads": [list(h) for h in self.ranked_heads[: max(self.budgets)]],
            **self.extra,
        }


def budget_curve(
    ctx: RunContext, ranked_heads: Sequence[tuple[int, int]], budgets: Sequence[int], utility: str = "metric"
) -> BudgetCurve:
    """The head-budget curve of ``ctx``'s task: U with the top K of ``ranked_heads`` replaced
    together, for each K in ``budgets``: V-SEAM's exact sweep with head sets as conditions
    (checkpointed shards; the clean run is condition 0)."""
    check_budget_utility(utility)
    task = ctx.td.task
    sizes = ctx.sizes
    budgets = check_budgets(budgets, sizes.num_layers * sizes.num_heads)
    corpus = utility == "metric" and task.corpus_level_metric
    base, intervened = exact_head_utilities(
        ctx, head_sets(ranked_heads, budgets), utility, caption_corpus=corpus, desc=f"head budget ({task.name})"
    )
    metric = f"{task.metric_name} (corpus)" if corpus else (task.metric_name if utility == "metric" else "prob")
    return BudgetCurve(
        task=task.name,
        budgets=budgets,
        base=float(base),
        utilities=[float(u) for u in intervened],
        ranked_heads=[(int(a), int(b)) for a, b in ranked_heads],
        metric=metric,
    )
