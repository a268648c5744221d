"""Task evaluation, clean or under an intervention, and the masking protocol.

Masking evaluation (HONES 5.1): zero z for the selected neurons at every position
(generation included) on a held-out split; relative drop = (base - masked) / base. The
random control masks the same number of neurons drawn uniformly over all neurons, mean
over seeds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from hones_nn.engine.core import Engine
from hones_nn.interventions.base import Intervention
from hones_nn.interventions.neurons import NeuronMask
from hones_nn.tasks.task_data import TaskData


@dataclass
class EvalResult:
    task: str
    metric_name: str
    metric: float
    n: int
    skipped: int = 0
    utilities: list[float] = field(default_factory=list, repr=False)

    def as_json(self) -> dict:
        out = asdict(self)
        out.pop("utilities")
        return out


def score_outputs(td: TaskData, outputs: list[list]) -> EvalResult:
    utilities = [td.task.utility(item, out) for item, out in zip(td.items, outputs)]
    metric = td.task.corpus_metric(td.items, outputs)
    return EvalResult(td.task.name, td.task.metric_name, float(metric), td.n, len(td.skipped), utilities)


def evaluate(
    engine: Engine,
    td: TaskData,
    intervention: Intervention | None = None,
    batch_size: int = 32,
    progress: bool = True,
    desc: str | None = None,
) -> EvalResult:
    outputs = engine.run_task(
        td.task, td.items, td.images, batch_size=batch_size, intervention_for=intervention, progress=progress, desc=desc
    )
    return score_outputs(td, outputs)


def relative_drop(base: float, masked: float) -> float:
    if base == 0:
        return float("nan")
    return (base - masked) / base


def random_neurons(num_layers: int, d_ff: int, k: int, seed: int) -> list[tuple[int, int]]:
    """k neurons drawn uniformly without replacement over all num_layers * d_ff."""
    flat = np.random.default_rng(seed).choice(num_layers * d_ff, size=k, replace=False)
    return sorted((int(i // d_ff), int(i % d_ff)) for i in flat)


def masked_evaluation(
    engine: Engine,
    td: TaskData,
    neurons: list[tuple[int, int]] | None,
    random_seeds: int = 0,
    k: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    base: EvalResult | None = None,
) -> dict:
    """Base metric, masked metric(s) and relative drop(s).

    ``neurons``: the selected set (None for a random-only run, then give ``k``).
    ``random_seeds``: also mask that many random sets of the same size (seeds 0..n-1).
    """
    sizes = engine.adapter.sizes(engine.model)
    num_layers, d_ff = sizes.num_layers, sizes.d_ff
    base = base or evaluate(engine, td, batch_size=batch_size, progress=progress, desc=f"{td.task.name} base")
    out = {
        "task": td.task.name,
        "metric_name": td.task.metric_name,
        "n": td.n,
        "skipped": len(td.skipped),
        "base_metric": base.metric,
    }
    if neurons is not None:
        masked = evaluate(
            engine, td, NeuronMask(neurons), batch_size=batch_size, progress=progress, desc=f"{td.task.name} masked"
        )
        out.update(
            k=len(neurons),
            masked_metric=masked.metric,
            relative_drop=relative_drop(base.metric, masked.metric),
            metric=masked.metric,
        )
        k = len(neurons)
    if random_seeds:
        if not k:
            raise ValueError("a random control needs the number of neurons k")
        drops, metrics = [], []
        for seed in range(random_seeds):
            chosen = random_neurons(num_layers, d_ff, k, seed)
            result = evaluate(
                engine,
                td,
                NeuronMask(chosen),
                batch_size=batch_size,
                progress=progress,
                desc=f"{td.task.name} random seed {seed}",
            )
            metrics.append(result.metric)
            drops.append(relative_drop(base.metric, result.metric))
        out["random"] = {
            "k": k,
            "seeds": list(range(random_seeds)),
            "masked_metrics": metrics,
            "relative_drops": drops,
            "mean_masked_metric": float(np.mean(metrics)),
            "mean_relative_drop": float(np.mean(drops)),
            "std_relative_drop": float(np.std(drops)),
        }
        if neurons is None:
            out.update(
                k=k,
                masked_metric=out["random"]["mean_masked_metric"],
                relative_drop=out["random"]["mean_relative_drop"],
                metric=out["random"]["mean_masked_metric"],
            )
    return out
