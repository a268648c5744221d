"""`hones-nn steer`: learn per-neuron scales on dev, compare with baselines on test."""

from __future__ import annotations

import click

from hones_nn.cli.common import (
    data_options,
    emit_json,
    friendly_errors,
    guards_output,
    load,
    model_options,
    print_table,
    refuses_remote,
    task_option,
)


def _fmt_p(p: float, n_resamples: int) -> str:
    return f"<{1 / n_resamples:.0e}" if p == 0 else f"{p:.3f}"


def _print_steer(report: dict) -> None:
    metric = report["metric_name"]
    neurons = report["neurons"]
    click.echo(
        f"{report['task']}: steering {neurons['k']} neurons (per layer {neurons['per_layer']}), "
        f"model {report['model_id']}"
    )
    click.echo(
        f"dev {report['dev']['split']} ({report['dev']['n']} items) -> test {report['test']['split']} "
        f"({report['test']['n']} items)"
    )
    click.echo("")
    rows = []
    for c in report["conditions"]:
        label = c["condition"]
        if label == "grid" and report.get("grid"):
            label = f"grid (s={report['grid']['factor']:g})"
        elif label == "fixed-amp":
            label = f"fixed-amp (s={report['fixed_factor']:g})"
        rows.append({"condition": label, metric: c["metric"], "gain": c["gain"]})
    print_table(rows, ["condition", metric, "gain"])
    boot = report["bootstrap"]
    if boot["comparisons"]:
        click.echo("")
        click.echo(
            f"paired bootstrap of ours - baseline ({boot['n_resamples']} resamples, seed {boot['seed']}, "
            f"statistic {boot['statistic']}; p = P(gain <= 0)):"
        )
        rows = [
            {
                "baseline": b["baseline"],
                "gain": b["observed"],
                "mean": b["mean"],
                "sd": b["sd"],
                "95% CI": f"[{b['ci_low']:.4f}, {b['ci_high']:.4f}]",
                "p": _fmt_p(b["p_one_sided"], b["n_resamples"]),
                "p (two-sided)": _fmt_p(b["p_two_sided"], b["n_resamples"]),
                "": b["stars"],
            }
            for b in boot["comparisons"]
        ]
        print_table(rows, ["baseline", "gain", "mean", "sd", "95% CI", "p", "p (two-sided)", ""])
    if report["other_tasks"]:
        click.echo("")
        click.echo(f"other tasks under the {report['task']} scales (test):")
        rows = []
        for o in report["other_tasks"]:
            if "error" in o:
                rows.append({"task": o["task"], "metric": "-", "base": "-", "steered": "-", "change": o["error"]})
            else:
                rows.append(
                    {
                        "task": o["task"],
                        "metric": o["metric_name"],
                        "base": o["base"],
                        "steered": o["steered"],
                        "change": o["change"],
                    }
                )
        print_table(rows, ["task", "metric", "base", "steered", "change"])
    for name, path in report["files"].items():
        click.echo(f"{name}: {path}")


def _print_relearn(report: dict) -> None:
    click.echo(
        f"{report['task']} re-learned on {report['fraction']:.0%} of {report['split']} ({report['n']} items, "
        f"{report['data']}), evaluated on the rest; {report['repeats']} random splits, mean +- SD"
    )
    metric = report["metric_name"]
    rows = [
        {
            "condition": s["condition"],
            metric: f"{s['metric_mean']:.4f} +- {s['metric_sd']:.4f}",
            "gain over base": f"{s['gain_mean']:+.4f} +- {s['gain_sd']:.4f}",
        }
        for s in report["summary"]
    ]
    print_table(rows, ["condition", metric, "gain over base"])


@click.command("steer")
@task_option
@model_options
@data_options
@click.option(
    "--scores", default=None, help="Neuron score table (Parquet, from `hones-nn rank`) to take the top neurons of."
)
@click.option("--top-k", type=int, default=None, help="Steer the top K neurons of --scores.")
@click.option(
    "--top-ratio", type=float, default=None, help="Steer the top fraction of all neurons of --scores (default 0.01)."
)
@click.option(
    "--neurons",
    "neurons_file",
    default=None,
    help="Neuron list to steer instead (Parquet/CSV with columns layer, neuron, or JSON [[layer, neuron], ...]).",
)
@click.option(
    "--group",
    "group",
    default=None,
    help="Steer a neuron group of `hones-nn overlap` instead, as the paper does: 'dominant' (the task's "
    "dominant shared group) or a group name (e.g. vqa+ocr, general) of --groups; or FILE:NAME.",
)
@click.option(
    "--groups",
    "groups_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="The overlap.json (from `hones-nn overlap --out-dir DIR`) that --group names a group of.",
)
@click.option(
    "--baselines",
    default="fixed-amp,grid,rand-neuron,no-kl",
    show_default=True,
    help="Comma-separated baselines, or 'none'.",
)
@click.option(
    "--out-dir",
    "out_dir",
    default=None,
    help="Folder for scales.safetensors, baselines/, checkpoints/ (resumable) and report.json.",
)
@click.option("--dev-split", default="dev", show_default=True, help="Split the scales are learned on.")
@click.option(
    "--split",
    default="test",
    show_default=True,
    help="Split the conditions are compared on (with --relearn-fraction: the split that is divided).",
)
@click.option("--dev-limit", type=int, default=None, help="Items of the dev split (default --limit).")
@click.option("--test-limit", type=int, default=None, help="Items of the test split (default --limit).")
@click.option("--epochs", type=int, default=2, show_default=True)
@click.option("--beta", type=float, default=0.05, show_default=True, help="Weight of KL(p_frozen || p_steered).")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="AdamW learning rate (cosine to 0.1 lr).")
@click.option("--l2", type=float, default=1e-4, show_default=True, help="Weight of sum(delta^2).")
@click.option("--grad-accum", type=int, default=4, show_default=True)
@click.option("--clip", type=float, default=1.0, show_default=True, help="Gradient-norm clip.")
@click.option("--clamp", type=float, default=1.5, show_default=True, help="delta is clamped to [-clamp, clamp].")
@click.option("--train-batch-size", type=int, default=8, show_default=True, help="Rows per training micro-batch.")
@click.option("--negatives", type=int, default=4, show_default=True, help="Retrieval: hard negatives per positive.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training order / negatives / random neurons.")
@click.option("--fixed-factor", type=float, default=2.0, show_default=True, help="Fixed-Amp's s.")
@click.option(
    "--grid-criterion",
    type=click.Choice(["metric", "loss"]),
    default="metric",
    show_default=True,
    help="Grid-Search picks s by the dev task metric, or by the dev training loss (fast).",
)
@click.option("--resamples", type=int, default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True)
@click.option(
    "--bootstrap-stat",
    type=click.Choice(["metric", "utility"]),
    default="metric",
    show_default=True,
    help="Caption: corpus BLEU of each resample (metric) or mean sentence BLEU (utility).",
)
@click.option(
    "--other-tasks/--no-other-tasks",
    default=True,
    show_default=True,
    help="Also report the other tasks' test metric steered vs base.",
)
@click.option(
    "--relearn-fraction",
    type=float,
    default=None,
    help="OOD mode: re-learn on this fraction of --split of --data, evaluate on the rest "
    "(baselines there: fixed-amp and rand-neuron).",
)
@click.option("--repeats", type=int, default=10, show_default=True, help="OOD mode: random splits.")
@click.option(
    "--zero-shot",
    "zero_shot",
    default=None,
    help="OOD mode: also evaluate these in-domain scales (their neurons are used if none are given).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
@refuses_remote(
    "learning neuron scales trains through the model (backward passes, an optimizer state), which "
    "runs where the weights are; rank with --remote, then steer on a machine that holds the model"
)
@guards_output("out_dir", "--out-dir", "report.json")
def steer_cmd(
    task,
    model_name,
    dtype,
    device,
    device_map,
    trust_remote_code,
    data,
    limit,
    batch_size,
    skip_bad,
    reference_compat,
    scores,
    top_k,
    top_ratio,
    neurons_file,
    group,
    groups_file,
    baselines,
    out_dir,
    dev_split,
    split,
    dev_limit,
    test_limit,
    epochs,
    beta,
    lr,
    l2,
    grad_accum,
    clip,
    clamp,
    train_batch_size,
    negatives,
    seed,
    fixed_factor,
    grid_criterion,
    resamples,
    bootstrap_seed,
    bootstrap_stat,
    other_tasks,
    relearn_fraction,
    repeats,
    zero_shot,
    as_json,
):
    """Learn per-neuron scales s = 1 + delta (weights frozen) and test them (HONES 4.3).

    \b
    Trains on --dev-split with CE + beta * KL(p_frozen || p_steered) + l2 * |delta|^2,
    evaluates base, each baseline and ours on --split, bootstraps ours - baseline
    (paired, p = P(gain <= 0)), and shows the other tasks' metrics under the scales.
    Baselines: fixed-amp (s = 2), grid (shared s chosen on dev), rand-neuron (learned
    scales on random neurons, same per-layer counts), no-kl (beta = 0).

    \b
    Examples:
      hones-nn steer --task vqa --scores vqa.parquet --top-k 40 --out-dir steer-vqa
      hones-nn steer --task vqa --group dominant --groups overlap/overlap.json --out-dir steer-vqa-dom
      hones-nn evaluate --task vqa --steer steer-vqa/scales.safetensors --data OOD
      hones-nn steer --task vqa --zero-shot steer-vqa/scales.safetensors --data OOD \\
          --split test --relearn-fraction 0.2 --repeats 10
    """
    from hones_nn.steering.io import check_neurons, load_scales, select_neurons
    from hones_nn.steering.report import relearn_experiment, steer_experiment
    from hones_nn.steering.scales import SteeringConfig

    loaded = load(model_name, dtype, device, device_map, trust_remote_code)
    config = SteeringConfig(
        beta=beta,
        lr=lr,
        l2=l2,
        grad_accum=grad_accum,
        clip=clip,
        epochs=epochs,
        clamp=clamp,
        batch_size=train_batch_size,
        negatives=negatives,
        seed=seed,
    )
    progress = not as_json
    transferred = load_scales(zero_shot) if zero_shot else None
    if transferred is not None:
        transferred.check_model(loaded, zero_shot)
    if group is not None:
        from hones_nn.cli.overlap import resolve_group
        from hones_nn.steering.io import check_neurons

        if scores is not None or neurons_file is not None:
            raise ValueError("--group steers an overlap group: give it without --scores / --neurons")
        name, pairs = resolve_group(group, task, groups_file, 0.01, loaded)
        sizes = loaded.sizes
        neurons = check_neurons([tuple(p) for p in pairs], sizes.num_layers, sizes.d_ff, groups_file or group)
        info = {"source": "overlap group", "group": name, "path": str(groups_file or group), "k": len(neurons)}
    elif scores is None and neurons_file is None and transferred is not None:
        sizes = loaded.sizes
        neurons = check_neurons(transferred.neurons, sizes.num_layers, sizes.d_ff, zero_shot)
        info = {"source": "scales", "path": str(zero_shot), "k": len(neurons)}
    else:
        neurons, info = select_neurons(
            loaded, scores=scores, top_k=top_k, top_ratio=top_ratio, neurons_file=neurons_file, task=task
        )
    common = dict(
        data=data,
        batch_size=batch_size,
        skip_bad=skip_bad,
        reference_compat=reference_compat,
        progress=progress,
        out_dir=out_dir,
    )
    if relearn_fraction is not None:
        report = relearn_experiment(
            loaded,
            task,
            neurons,
            info,
            config,
            split=split,
            limit=test_limit if test_limit is not None else limit,
            fraction=relearn_fraction,
            repeats=repeats,
            seed=seed,
            zero_shot=transferred,
            baselines=baselines,
            fixed_factor=fixed_factor,
            **common,
        )
        if as_json:
            emit_json(report)
        else:
            _print_relearn(report)
        return
    if transferred is not None:
        raise ValueError(
            "--zero-shot is for the OOD mode (with --relearn-fraction); to apply scales, use "
            "`hones-nn evaluate --steer FILE`"
        )
    report = steer_experiment(
        loaded,
        task,
        neurons,
        info,
        config,
        dev_split=dev_split,
        test_split=split,
        dev_limit=dev_limit if dev_limit is not None else limit,
        test_limit=test_limit if test_limit is not None else limit,
        baselines=baselines,
        grid_criterion=grid_criterion,
        fixed_factor=fixed_factor,
        rand_seed=seed,
        n_resamples=resamples,
        bootstrap_seed=bootstrap_seed,
        bootstrap_stat=bootstrap_stat,
        other_tasks=other_tasks,
        **common,
    )
    if as_json:
        emit_json(report)
    else:
        _print_steer(report)


def register(cli: click.Group) -> None:
    cli.add_command(steer_cmd)
