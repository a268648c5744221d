"""Steering baselines at the same neuron budget (HONES section 5.3, appendix F.1).

* **Fixed-Amp**: s = 2 on every selected neuron (train-free uniform amplification).
* **Grid-Search**: one shared s from {0.5, 0.75, 1, 1.25, 1.5, 2}, chosen on the dev
  split. Criterion ``metric`` (default, the paper's "dev-tuned amplification"): the task
  metric of greedy decoding on dev (retrieval: NDCG@5 from the Yes/No logits);
  ``loss``: the teacher-forced training loss (CE + beta KL) on dev, a fast surrogate
  offered as an option, never substituted silently. Ties go to the factor closest to 1
  (the smaller intervention), then to the smaller factor. s = 1 is the unsteered model,
  so Grid-Search can never be worse than base *on dev*.
* **RandNeuron**: scales learned exactly as ours (same hyper-parameters, same dev data)
  on random neurons with the same count in every layer as the selected set, drawn
  uniformly (seeded) among that layer's neurons *not* in the selected set, so the
  control shares no neuron with the set it controls for.
* **no-KL**: ours with beta = 0 (CE + L2 only).

Every baseline is an :class:`~hones_nn.interventions.neurons.NeuronScale`, as ours, so
the test evaluation runs the same code for all conditions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from hones_nn.interventions.neurons import NeuronScale
from hones_nn.steering.scales import SteeringConfig, TrainResult, dev_loss, train_scales

BASELINES = ("fixed-amp", "grid", "rand-neuron", "no-kl")
GRID = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
GRID_CRITERIA = ("metric", "loss")


def parse_baselines(text: str | Sequence[str] | None) -> list[str]:
    """'fixed-amp,grid' -> ['fixed-amp', 'grid'] (order kept); 'none' or '' -> []; 'all' -> all."""
    if text is None:
        return list(BASELINES)
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    if parts in ([], ["none"]):
        return []
    if parts == ["all"]:
        return list(BASELINES)
    aliases = {
        "fixed": "fixed-amp",
        "fixedamp": "fixed-amp",
        "grid-search": "grid",
        "randneuron": "rand-neuron",
        "random": "rand-neuron",
        "nokl": "no-kl",
        "no_kl": "no-kl",
        "rand_neuron": "rand-neuron",
    }
    out = []
    for p in parts:
        p = aliases.get(p, p)
        if p not in BASELINES:
            raise ValueError(f"unknown baseline {p!r}; choose from {', '.join(BASELINES)} (or 'all', 'none')")
        if p not in out:
            out.append(p)
    return out


def uniform_scales(neurons: Sequence[tuple[int, int]], factor: float) -> NeuronScale:
    """s = ``factor`` on every neuron."""
    return NeuronScale(neurons, torch.full((len(neurons),), float(factor)))


def fixed_amp(neurons: Sequence[tuple[int, int]], factor: float = 2.0) -> NeuronScale:
    return uniform_scales(neurons, factor)


def random_neurons_like(
    neurons: Sequence[tuple[int, int]], d_ff: int, seed: int = 0, exclude_selected: bool = True
) -> list[tuple[int, int]]:
    """Random neurons with the same count per layer as ``neurons`` (sorted).

    Drawn uniformly without replacement within each layer (generator seeded by ``seed``
    and the layer), among the layer's neurons outside ``neurons`` when
    ``exclude_selected``."""
    by_layer: dict[int, set[int]] = {}
    for layer, i in neurons:
        by_layer.setdefault(int(layer), set()).add(int(i))
    out = []
    for layer, chosen in sorted(by_layer.items()):
        pool = np.array([i for i in range(d_ff) if not (exclude_selected and i in chosen)])
        if len(pool) < len(chosen):
            raise ValueError(
                f"layer {layer}: cannot draw {len(chosen)} random neurons outside the {len(chosen)} "
                f"selected ones among {d_ff}"
            )
        rng = np.random.default_rng([seed, layer])
        out.extend((layer, int(i)) for i in rng.choice(pool, size=len(chosen), replace=False))
    return sorted(out)


@dataclass
class GridResult:
    factor: float
    criterion: str
    table: list[dict] = field(default_factory=list)  # one row per grid value: factor, dev metric or loss

    def intervention(self, neurons) -> NeuronScale:
        return uniform_scales(neurons, self.factor)

    def as_json(self) -> dict:
        return {"factor": self.factor, "criterion": self.criterion, "table": self.table}


def _pick(values: dict[float, float], higher_is_better: bool) -> float:
    best = max(values.values()) if higher_is_better else min(values.values())
    tied = [f for f, v in values.items() if abs(v - best) <= 1e-12]
    return sorted(tied, key=lambda f: (abs(f - 1.0), f))[0]


def grid_search(
    engine,
    td_dev,
    neurons,
    grid: Sequence[float] = GRID,
    criterion: str = "metric",
    config: SteeringConfig | None = None,
    batch_size: int = 32,
    progress: bool = True,
    base_dev_metric: float | None = None,
) -> GridResult:
    """The shared factor of ``grid`` that is best on ``td_dev`` (see the module doc)."""
    from hones_nn.evaluation.evaluate import evaluate

    if criterion not in GRID_CRITERIA:
        raise ValueError(f"unknown grid criterion {criterion!r}; choose one of {', '.join(GRID_CRITERIA)}")
    if not grid:
        raise ValueError("empty grid")
    values: dict[float, float] = {}
    table = []
    for factor in grid:
        factor = float(factor)
        if criterion == "metric":
            if factor == 1.0 and base_dev_metric is not None:
                value = base_dev_metric
            else:
                value = evaluate(
                    engine,
                    td_dev,
                    None if factor == 1.0 else uniform_scales(neurons, factor),
                    batch_size=batch_size,
                    progress=progress,
                    desc=f"grid s={factor:g} (dev)",
                ).metric
            table.append({"factor": factor, "dev_metric": value})
        else:
            losses = dev_loss(engine.loaded, td_dev, neurons, torch.full((len(neurons),), factor), config)
            value = losses["loss"]
            table.append({"factor": factor, "dev_loss": value, "dev_ce": losses["ce"], "dev_kl": losses["kl"]})
        values[factor] = value
    return GridResult(_pick(values, higher_is_better=criterion == "metric"), criterion, table)


def train_rand_neuron(
    loaded, td_dev, neurons, config: SteeringConfig, seed: int = 0, checkpoint_dir=None, progress: bool = True
) -> TrainResult:
    """Learned scales on random neurons (same per-layer counts, disjoint from ``neurons``)."""
    chosen = random_neurons_like(neurons, loaded.sizes.d_ff, seed=seed)
    return train_scales(
        loaded,
        td_dev,
        chosen,
        config,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        desc=f"steer rand-neuron ({td_dev.task.name})",
    )


def train_no_kl(
    loaded, td_dev, neurons, config: SteeringConfig, checkpoint_dir=None, progress: bool = True
) -> TrainResult:
    """Ours without the KL term (beta = 0)."""
    return train_scales(
        loaded,
        td_dev,
        neurons,
        dataclasses.replace(config, beta=0.0),
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        desc=f"steer no-kl ({td_dev.task.name})",
    )
