"""Steering experiments end to end: learn on dev, compare on test, test significance, transfer.

:func:`steer_experiment` (``hones-nn steer``) is HONES Table 3 and Table 14 for one task:

1. learn our scales on the dev split (:func:`~hones_nn.steering.scales.train_scales`);
2. build the baselines at the same budget (:mod:`hones_nn.steering.baselines`): Fixed-Amp,
   Grid-Search (factor chosen on dev), RandNeuron and no-KL (both learned on dev);
3. evaluate base, every baseline and ours on the test split with the task metric (greedy
   decoding, scales applied at every position and generation step);
4. paired bootstrap (:mod:`hones_nn.steering.bootstrap`) of ours against base and each
   baseline on the same test items;
5. the side effect on the other three tasks: their test metric steered vs base
   (the cross-task interference the paper reduces by steering a small bank).

With ``out_dir`` every learned or chosen condition is saved as a scales file
(``scales.safetensors`` for ours, ``baselines/<name>.safetensors``), training checkpoints
go to ``checkpoints/<name>/`` (a rerun resumes), and the report to ``report.json``.

:func:`relearn_experiment` is the OOD protocol of appendix F.2 / Table 4: keep the
neuron bank, re-learn the scales on a random ``fraction`` (20%) of a dataset's split and
evaluate on the other 80%, over ``repeats`` (10) random splits, mean +- SD, against base,
Fixed-Amp, RandNeuron (re-learned on the same 20%) and, given a scales file, the
zero-shot transfer of in-domain scales. Zero-shot transfer alone is just
``hones-nn evaluate --steer scales.safetensors --data OOD`` (:func:`steered_evaluation`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np

from hones_nn.evaluation.evaluate import EvalResult, score_outputs
from hones_nn.steering.baselines import (
    GRID,
    fixed_amp,
    grid_search,
    parse_baselines,
    random_neurons_like,
    train_no_kl,
    train_rand_neuron,
)
from hones_nn.steering.bootstrap import item_statistics, paired_bootstrap, significance_stars
from hones_nn.steering.io import ScalesFile, save_scales
from hones_nn.steering.scales import SteeringConfig, TrainResult, train_scales
from hones_nn.tasks.prompts import TASK_NAMES
from hones_nn.tasks.task_data import prepare_task
from hones_nn.utils.io import atomic_write_json

OURS = "ours"


def run_condition(
    engine, td, intervention, batch_size: int = 32, progress: bool = True, desc: str | None = None
) -> tuple[EvalResult, list[list]]:
    """The task metric of ``td`` under ``intervention``, with the raw outputs (for the bootstrap)."""
    outputs = engine.run_task(
        td.task, td.items, td.images, batch_size=batch_size, intervention_for=intervention, progress=progress, desc=desc
    )
    return score_outputs(td, outputs), outputs


def per_layer(neurons) -> dict[str, int]:
    return {str(layer): n for layer, n in sorted(Counter(layer for layer, _ in neurons).items())}


def _scales_meta(loaded, td_train, method: str, neurons_info: dict, extra: dict) -> dict:
    from hones_nn.engine.tables import versions

    return {
        "method": method,
        "task": td_train.task.name,
        "model_id": loaded.model_id,
        "weights_hash": loaded.weights_hash,
        "revision": loaded.revision,
        "neurons_source": neurons_info,
        "data": td_train.data_dir,
        "train_split": td_train.split,
        "n_train_items": td_train.n,
        "versions": versions(),
        **extra,
    }


def _save_trained(path: Path, loaded, td_train, method: str, neurons_info: dict, result: TrainResult) -> str:
    save_scales(path, result.neurons, result.delta, _scales_meta(loaded, td_train, method, neurons_info, result.meta()))
    return str(path)


def _save_uniform(
    path: Path, loaded, td_train, method: str, neurons, neurons_info: dict, factor: float, extra: dict
) -> str:
    import torch

    delta = torch.full((len(neurons),), float(factor) - 1.0)
    save_scales(path, neurons, delta, _scales_meta(loaded, td_train, method, neurons_info, {"factor": factor, **extra}))
    return str(path)


def _training_summary(result: TrainResult) -> dict:
    d = result.delta
    return {
        "steps": len(result.curve),
        "epochs": result.epochs,
        "resumed_from_epoch": result.resumed_from_epoch,
        "final_loss": result.curve[-1]["loss"] if result.curve else None,
        "delta_mean": float(d.mean()),
        "delta_abs_max": float(d.abs().max()),
        "n_neurons": len(result.neurons),
    }


def steer_experiment(
    loaded,
    task: str,
    neurons,
    neurons_info: dict | None = None,
    config: SteeringConfig | None = None,
    *,
    data=None,
    dev_split: str = "dev",
    test_split: str = "test",
    dev_limit: int | None = None,
    test_limit: int | None = None,
    baselines=None,
    grid=GRID,
    grid_criterion: str = "metric",
    fixed_factor: float = 2.0,
    rand_seed: int = 0,
    n_resamples: int = 1000,
    bootstrap_seed: int = 0,
    bootstrap_stat: str = "metric",
    other_tasks: bool = True,
    out_dir=None,
    batch_size: int = 32,
    skip_bad: bool = False,
    reference_compat: bool = False,
    progress: bool = True,
    engine=None,
) -> dict:
    """Learn, compare and test one task's steering (see the module doc); returns the report."""
    from hones_nn.engine.core import Engine

    config = config or SteeringConfig()
    names = parse_baselines(baselines)
    neurons = sorted((int(layer), int(i)) for layer, i in neurons)
    neurons_info = dict(neurons_info or {"source": "given", "k": len(neurons)})
    engine = engine or Engine(loaded)
    out = Path(out_dir) if out_dir is not None else None
    ckpt = (lambda name: out / "checkpoints" / name) if out is not None else (lambda name: None)

    td_dev = prepare_task(
        loaded, task, data=data, split=dev_split, limit=dev_limit, skip_bad=skip_bad, reference_compat=reference_compat
    )
    td_test = prepare_task(
        loaded,
        task,
        data=data,
        split=test_split,
        limit=test_limit,
        skip_bad=skip_bad,
        reference_compat=reference_compat,
    )
    files: dict[str, str] = {}
    training: dict[str, dict] = {}

    # 1. ours
    ours = train_scales(
        loaded, td_dev, neurons, config, checkpoint_dir=ckpt(OURS), progress=progress, desc=f"steer ours ({task})"
    )
    training[OURS] = _training_summary(ours)
    if out is not None:
        files[OURS] = _save_trained(out / "scales.safetensors", loaded, td_dev, "hones-steer", neurons_info, ours)

    # 2. baselines (dev side)
    interventions = {"base": None}
    grid_info = None
    for name in names:
        if name == "fixed-amp":
            interventions[name] = fixed_amp(neurons, fixed_factor)
            if out is not None:
                files[name] = _save_uniform(
                    out / "baselines" / "fixed-amp.safetensors",
                    loaded,
                    td_dev,
                    "fixed-amp",
                    neurons,
                    neurons_info,
                    fixed_factor,
                    {},
                )
        elif name == "grid":
            result = grid_search(
                engine,
                td_dev,
                neurons,
                grid=grid,
                criterion=grid_criterion,
                config=config,
                batch_size=batch_size,
                progress=progress,
            )
            grid_info = result.as_json()
            interventions[name] = result.intervention(neurons)
            if out is not None:
                files[name] = _save_uniform(
                    out / "baselines" / "grid.safetensors",
                    loaded,
                    td_dev,
                    "grid-search",
                    neurons,
                    neurons_info,
                    result.factor,
                    {"grid": grid_info},
                )
        elif name == "rand-neuron":
            result = train_rand_neuron(
                loaded, td_dev, neurons, config, seed=rand_seed, checkpoint_dir=ckpt(name), progress=progress
            )
            training[name] = {**_training_summary(result), "seed": rand_seed, "per_layer": per_layer(result.neurons)}
            interventions[name] = result.intervention()
            if out is not None:
                info = {"source": "random", "seed": rand_seed, "matched_to": neurons_info, "k": len(result.neurons)}
                files[name] = _save_trained(
                    out / "baselines" / "rand-neuron.safetensors", loaded, td_dev, "rand-neuron", info, result
                )
        elif name == "no-kl":
            result = train_no_kl(loaded, td_dev, neurons, config, checkpoint_dir=ckpt(name), progress=progress)
            training[name] = _training_summary(result)
            interventions[name] = result.intervention()
            if out is not None:
                files[name] = _save_trained(
                    out / "baselines" / "no-kl.safetensors", loaded, td_dev, "no-kl", neurons_info, result
                )
    interventions[OURS] = ours.intervention()

    # 3. test
    results, outputs = {}, {}
    for name, intervention in interventions.items():
        results[name], outputs[name] = run_condition(
            engine, td_test, intervention, batch_size, progress, desc=f"{task} test: {name}"
        )
    base_metric = results["base"].metric
    conditions = [
        {
            "condition": name,
            "metric": r.metric,
            "gain": r.metric - base_metric,
            "relative_gain": (r.metric - base_metric) / base_metric if base_metric else float("nan"),
        }
        for name, r in results.items()
    ]

    # 4. bootstrap: ours vs every other condition
    ours_stats, metric_fn = item_statistics(td_test, outputs[OURS], results[OURS].utilities, bootstrap_stat)
    bootstrap = []
    for name in results:
        if name == OURS:
            continue
        other_stats, _ = item_statistics(td_test, outputs[name], results[name].utilities, bootstrap_stat)
        b = paired_bootstrap(ours_stats, other_stats, metric_fn, n_resamples=n_resamples, seed=bootstrap_seed)
        bootstrap.append({"baseline": name, **b.as_json(), "stars": significance_stars(b.p_one_sided)})

    # 5. the other tasks under our scales
    side = []
    if other_tasks:
        for other in TASK_NAMES:
            if other == task:
                continue
            try:
                td_other = prepare_task(
                    loaded,
                    other,
                    data=data,
                    split=test_split,
                    limit=test_limit,
                    skip_bad=skip_bad,
                    reference_compat=reference_compat,
                )
            except ValueError as exc:
                side.append({"task": other, "error": str(exc)})
                continue
            base_r, _ = run_condition(engine, td_other, None, batch_size, progress, desc=f"{other} test: base")
            steer_r, _ = run_condition(
                engine, td_other, interventions[OURS], batch_size, progress, desc=f"{other} test: steered by {task}"
            )
            side.append(
                {
                    "task": other,
                    "metric_name": base_r.metric_name,
                    "n": base_r.n,
                    "base": base_r.metric,
                    "steered": steer_r.metric,
                    "change": steer_r.metric - base_r.metric,
                }
            )

    report = {
        "task": task,
        "metric_name": results["base"].metric_name,
        "model_id": loaded.model_id,
        "weights_hash": loaded.weights_hash,
        "data": td_test.data_dir,
        "neurons": {**neurons_info, "k": len(neurons), "per_layer": per_layer(neurons)},
        "hyperparameters": config.as_dict(),
        "baselines": names,
        "fixed_factor": fixed_factor,
        "dev": {"split": dev_split, "n": td_dev.n, "skipped": len(td_dev.skipped)},
        "test": {"split": test_split, "n": td_test.n, "skipped": len(td_test.skipped)},
        "conditions": conditions,
        "grid": grid_info,
        "training": training,
        "bootstrap": {
            "statistic": bootstrap_stat,
            "n_resamples": n_resamples,
            "seed": bootstrap_seed,
            "p_value": "one-sided P(gain <= 0); p_two_sided doubles the smaller tail",
            "comparisons": bootstrap,
        },
        "other_tasks": side,
        "files": files,
    }
    if out is not None:
        atomic_write_json(out / "report.json", _jsonable(report))
        files["report"] = str(out / "report.json")
    return report


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


# ------------------------------------------------------------------ zero-shot: evaluate --steer


def steered_evaluation(
    engine, td, scales: ScalesFile, batch_size: int = 32, progress: bool = True, n_resamples: int = 1000, seed: int = 0
) -> dict:
    """Base and steered test metric of ``td`` under a scales file, with a paired bootstrap."""
    base, base_out = run_condition(engine, td, None, batch_size, progress, desc=f"{td.task.name} base")
    steered, steer_out = run_condition(
        engine, td, scales.intervention(), batch_size, progress, desc=f"{td.task.name} steered"
    )
    a, metric_fn = item_statistics(td, steer_out, steered.utilities)
    b, _ = item_statistics(td, base_out, base.utilities)
    boot = paired_bootstrap(a, b, metric_fn, n_resamples=n_resamples, seed=seed)
    return {
        "task": td.task.name,
        "metric_name": base.metric_name,
        "n": td.n,
        "skipped": len(td.skipped),
        "base_metric": base.metric,
        "steered_metric": steered.metric,
        "metric": steered.metric,
        "gain": steered.metric - base.metric,
        "bootstrap": boot.as_json(),
        "steer": {
            "k": len(scales.neurons),
            "learned_for": scales.meta.get("task"),
            "method": scales.meta.get("method"),
            "learned_on": scales.meta.get("data"),
        },
    }


# ------------------------------------------------------------------ OOD: re-learn on a fraction


def _subset(td, idx):
    return dataclasses.replace(td, items=[td.items[i] for i in idx])


def _mean_sd(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}


def relearn_experiment(
    loaded,
    task: str,
    neurons,
    neurons_info: dict | None = None,
    config: SteeringConfig | None = None,
    *,
    data=None,
    split: str = "test",
    limit: int | None = None,
    fraction: float = 0.2,
    repeats: int = 10,
    seed: int = 0,
    zero_shot: ScalesFile | None = None,
    baselines=("fixed-amp", "rand-neuron"),
    fixed_factor: float = 2.0,
    out_dir=None,
    batch_size: int = 32,
    skip_bad: bool = False,
    reference_compat: bool = False,
    progress: bool = True,
    engine=None,
) -> dict:
    """Re-learn the scales on ``fraction`` of ``split``, evaluate on the rest, ``repeats`` times."""
    from hones_nn.engine.core import Engine

    if not 0 < fraction < 1:
        raise ValueError(f"--relearn-fraction must be in (0, 1), got {fraction}")
    if repeats < 1:
        raise ValueError("--repeats must be >= 1")
    config = config or SteeringConfig()
    names = [n for n in parse_baselines(baselines) if n in ("fixed-amp", "rand-neuron")]
    neurons = sorted((int(layer), int(i)) for layer, i in neurons)
    engine = engine or Engine(loaded)
    out = Path(out_dir) if out_dir is not None else None
    td = prepare_task(
        loaded, task, data=data, split=split, limit=limit, skip_bad=skip_bad, reference_compat=reference_compat
    )
    n_train = max(1, round(fraction * td.n))
    if td.n - n_train < 1:
        raise ValueError(f"{td.n} item(s) cannot be split {fraction:.0%} / {1 - fraction:.0%}; use more items")

    # conditions that learn nothing are evaluated once on the whole split, then sliced per repeat
    fixed_outputs = {"base": run_condition(engine, td, None, batch_size, progress, desc=f"{task}: base")[1]}
    if "fixed-amp" in names:
        fixed_outputs["fixed-amp"] = run_condition(
            engine, td, fixed_amp(neurons, fixed_factor), batch_size, progress, desc=f"{task}: fixed-amp"
        )[1]
    if zero_shot is not None:
        zero_shot.check_model(loaded)
        fixed_outputs["zero-shot"] = run_condition(
            engine, td, zero_shot.intervention(), batch_size, progress, desc=f"{task}: zero-shot"
        )[1]

    per_repeat = []
    for r in range(repeats):
        order = np.random.default_rng([seed, r]).permutation(td.n)
        train_idx, eval_idx = sorted(order[:n_train].tolist()), sorted(order[n_train:].tolist())
        td_train, td_eval = _subset(td, train_idx), _subset(td, eval_idx)
        metrics = {}
        for name, outs in fixed_outputs.items():
            metrics[name] = score_outputs(td_eval, [outs[i] for i in eval_idx]).metric
        ckpt = (out / "checkpoints" / f"repeat-{r}") if out is not None else None
        ours = train_scales(
            loaded,
            td_train,
            neurons,
            config,
            checkpoint_dir=ckpt / OURS if ckpt else None,
            progress=progress,
            desc=f"re-learn {task} (repeat {r + 1}/{repeats})",
        )
        metrics[OURS] = run_condition(
            engine, td_eval, ours.intervention(), batch_size, progress, desc=f"{task}: ours (repeat {r + 1})"
        )[0].metric
        if out is not None:
            _save_trained(
                out / f"scales-repeat-{r}.safetensors",
                loaded,
                td_train,
                "hones-steer-relearn",
                neurons_info or {},
                ours,
            )
        if "rand-neuron" in names:
            rand = train_scales(
                loaded,
                td_train,
                random_neurons_like(neurons, loaded.sizes.d_ff, seed=r),
                config,
                checkpoint_dir=ckpt / "rand-neuron" if ckpt else None,
                progress=progress,
                desc=f"re-learn rand-neuron (repeat {r + 1}/{repeats})",
            )
            metrics["rand-neuron"] = run_condition(
                engine, td_eval, rand.intervention(), batch_size, progress, desc=f"{task}: rand-neuron (repeat {r + 1})"
            )[0].metric
        per_repeat.append({"repeat": r, "n_train": len(train_idx), "n_eval": len(eval_idx), "metrics": metrics})

    conditions = list(per_repeat[0]["metrics"])
    summary = []
    for name in conditions:
        values = [p["metrics"][name] for p in per_repeat]
        gains = [p["metrics"][name] - p["metrics"]["base"] for p in per_repeat]
        summary.append(
            {
                "condition": name,
                **{f"metric_{k}": v for k, v in _mean_sd(values).items() if k != "values"},
                **{f"gain_{k}": v for k, v in _mean_sd(gains).items() if k != "values"},
            }
        )
    report = {
        "task": task,
        "mode": "relearn",
        "model_id": loaded.model_id,
        "weights_hash": loaded.weights_hash,
        "data": td.data_dir,
        "split": split,
        "n": td.n,
        "fraction": fraction,
        "repeats": repeats,
        "seed": seed,
        "metric_name": td.task.metric_name,
        "baselines": names,
        "neurons": {**(neurons_info or {}), "k": len(neurons), "per_layer": per_layer(neurons)},
        "hyperparameters": config.as_dict(),
        "summary": summary,
        "per_repeat": per_repeat,
        "zero_shot": (
            {"learned_for": zero_shot.meta.get("task"), "learned_on": zero_shot.meta.get("data")} if zero_shot else None
        ),
    }
    if out is not None:
        atomic_write_json(out / "relearn-report.json", _jsonable(report))
    return report
