"""`hones-nn evaluate`: a task metric, clean or with neurons masked."""

from __future__ import annotations

import click

from hones_nn.cli.common import (
    current_remote,
    data_options,
    emit_json,
    friendly_errors,
    load,
    model_options,
    prompt_options,
    remote_options,
    task_option,
)
from hones_nn.cli.fuzzy import concept_eval_options


@click.command("evaluate")
@task_option
@model_options
@data_options
@click.option("--split", default="test", show_default=True, help="Split to evaluate on.")
@click.option(
    "--mask",
    "mask",
    default=None,
    help="Mask neurons: a neuron score table (Parquet) whose top --top-ratio are zeroed, or 'random'.",
)
@click.option("--top-ratio", type=float, default=0.01, show_default=True, help="Fraction of all neurons to mask.")
@click.option(
    "--seeds",
    type=int,
    default=5,
    show_default=True,
    help="Random-control seeds (with --mask random, or --random-control).",
)
@click.option(
    "--random-control", is_flag=True, help="With a score table: also mask --seeds random sets of the same size."
)
@click.option(
    "--steer",
    "steer",
    default=None,
    help="Apply learned neuron scales (a scales.safetensors from `hones-nn steer`); reports base and steered.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--show",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Also print the first N items: the full prompt the model receives, its output and the gold answer "
    "(to see why a metric is 0: a prompt the model was not trained on).",
)
@concept_eval_options
@friendly_errors
@prompt_options
@remote_options
def evaluate_cmd(
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
    split,
    mask,
    top_ratio,
    seeds,
    random_control,
    steer,
    as_json,
    show,
    instructions=None,
    concept_opts=None,
):
    """Evaluate a task (greedy decoding; retrieval by Yes/No logits).

    \b
    Metrics: vqa = VQAv2 accuracy, ocr = ANLS, caption = corpus BLEU-4,
    retrieval = NDCG@5 over 1 positive + 49 hard negatives.
    With --mask, reports base, masked and relative drop = (base - masked) / base.
    """
    import hones_nn as hn

    loaded = load(model_name, dtype, device, device_map, trust_remote_code)
    progress = not as_json
    if concept_opts is not None:  # --edit (weights) and --modulate (fuzzy sets), see cli/fuzzy.py
        concept_opts.apply_edit(loaded)
    if steer is not None or (concept_opts is not None and concept_opts.modulate):
        from hones_nn.engine.core import Engine
        from hones_nn.tasks.task_data import prepare_task

        td = prepare_task(
            loaded,
            task,
            data=data,
            split=split,
            limit=limit,
            skip_bad=skip_bad,
            reference_compat=reference_compat,
            instructions=instructions,
        )
        engine = Engine(loaded, remote=current_remote())
    if concept_opts is not None and concept_opts.modulate:
        return concept_opts.run_modulation(loaded, td, engine, batch_size, as_json)
    if steer is not None:
        from hones_nn.steering.io import load_scales
        from hones_nn.steering.report import steered_evaluation

        if mask is not None:
            raise ValueError("--steer and --mask are separate evaluations; give one of them")
        scales = load_scales(steer)
        scales.check_model(loaded, steer)
        result = steered_evaluation(engine, td, scales, batch_size=batch_size, progress=progress)
        result.update(model=loaded.model_id, split=split, steer_file=str(steer))
        if as_json:
            emit_json(result)
            return
        click.echo(f"{task} on {split} ({result['n']} examples, model {loaded.model_id})")
        click.echo(f"  base {result['metric_name']}: {result['base_metric']:.4f}")
        click.echo(f"  steered ({result['steer']['k']} neurons, {steer}): {result['steered_metric']:.4f}")
        b = result["bootstrap"]
        click.echo(f"  gain: {result['gain']:+.4f} (bootstrap SD {b['sd']:.4f}, P(gain <= 0) = {b['p_one_sided']:.3f})")
        return
    result = hn.evaluate(
        loaded,
        task,
        mask=mask,
        top_ratio=top_ratio,
        random_control=seeds if (random_control or mask == "random") else 0,
        split=split,
        data=data,
        limit=limit,
        batch_size=batch_size,
        skip_bad=skip_bad,
        reference_compat=reference_compat,
        progress=progress,
        remote=current_remote(),
        instructions=instructions,
        show=show if mask is None else 0,
    )
    if as_json:
        emit_json(result)
        return
    skipped = result.pop("skipped_items", [])
    if skipped:
        click.echo(f"skipped {len(skipped)} bad item(s): " + "; ".join(s["reason"] for s in skipped[:5]))
    click.echo(f"{task} on {split} ({result['n']} examples, model {loaded.model_id})")
    if mask is None:
        click.echo(f"  {result['metric_name']}: {result['metric']:.4f}")
        for i, ex in enumerate(result.get("examples", []), 1):
            click.echo(f"--- example {i}: item {ex['item']} (utility {ex['utility']:.4f})")
            click.echo(f"  prompt: {ex['prompt']!r}")
            click.echo(f"  output: {ex['output']!r}")
            click.echo(f"  gold:   {ex['gold']!r}")
        dry_run = current_remote() is not None and current_remote().mode == "plan"
        if dry_run:
            click.echo("  (a dry run: the outputs above are stand-ins, not the model's)", err=True)
        elif result["metric"] <= 0 and not show:
            click.echo(
                "  warning: the metric is 0: the prompt probably does not fit the model; see what it answers "
                "with --show 5, and give its own instruction with --instruction / --prompt-file",
                err=True,
            )
    else:
        click.echo(f"  base {result['metric_name']}: {result['base_metric']:.4f}")
        click.echo(f"  masked ({result['k']} neurons, {mask}): {result['masked_metric']:.4f}")
        click.echo(f"  relative drop: {_drop(result['relative_drop'])}")
        if "random" in result and mask != "random":
            r = result["random"]
            click.echo(
                f"  random control ({len(r['seeds'])} seeds): drop {_drop(r['mean_relative_drop'])} "
                f"(std {_drop(r['std_relative_drop'])})"
            )
        if result["base_metric"] <= 0:
            click.echo(
                "  warning: the base metric is 0, so a relative drop is undefined: the prompt probably does not "
                "fit the model; check with --show 5 (without --mask) and give --instruction / --prompt-file",
                err=True,
            )


def _drop(value: float) -> str:
    """A relative drop as a percentage; NaN (base metric 0) is never printed as a figure."""
    if value != value:
        return "undefined (base metric 0)"
    return f"{100 * value:.2f}%"


def register(cli: click.Group) -> None:
    cli.add_command(evaluate_cmd)
