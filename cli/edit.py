"""`hones-nn edit`: Pan et al.'s neuron editing (source token -> target token)."""

from __future__ import annotations

import click

from hones_nn.cli.common import (
    emit_json,
    friendly_errors,
    guards_output,
    load,
    model_options,
    print_table,
    refuses_remote,
)


@click.command("edit")
@model_options
@click.option("--data", default=None, help="Benchmark folder. Default: the synthetic benchmark.")
@click.option("--source", required=True, help="The word the model says now (one token of the tokenizer), e.g. red.")
@click.option("--target", required=True, help="The word it should say instead (one token), e.g. green.")
@click.option(
    "--neurons",
    default="pan:20",
    show_default=True,
    help="Which neurons to edit: pan:K (Pan et al.'s contribution to the source token on the edit prompts), "
    "a neuron score table (.parquet; its top --top-k), a `fuzzy build` folder (the set named by "
    "--source, top --top-k by membership), or LAYER:NEURON,LAYER:NEURON.",
)
@click.option("--top-k", type=int, default=20, show_default=True, help="Neurons taken from a table or fuzzy set.")
@click.option(
    "--margin",
    type=float,
    default=2.0,
    show_default=True,
    help="Logit margin logit(target) - logit(source) the closed form aims at on the edit prompts.",
)
@click.option(
    "--aggregate",
    type=click.Choice(["max", "median", "mean"]),
    default="max",
    show_default=True,
    help="How one scale c is taken from the per-prompt scales (max: every edit prompt reaches the margin).",
)
@click.option("--split", default="discovery", show_default=True, help="Split of the edit prompts.")
@click.option(
    "--limit",
    type=int,
    default=40,
    show_default=True,
    help="Edit prompts: the first N images whose clean caption contains the source.",
)
@click.option("--eval-split", default="test", show_default=True, help="Held-out split for success and specificity.")
@click.option("--eval-limit", type=int, default=100, show_default=True, help="Held-out images captioned.")
@click.option(
    "--spec-tasks",
    default="vqa,ocr",
    show_default=True,
    help="Other tasks whose metric must stay (comma-separated; '' for none).",
)
@click.option("--spec-limit", type=int, default=100, show_default=True, help="Examples per specificity task.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Prompts per forward pass.")
@click.option("--out", required=True, help="The edit file (.safetensors); the report goes next to it as .json.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
@refuses_remote("an edit rewrites the model's W_down columns on this machine, and a remote client holds no weights")
@guards_output("out", "--out")
def edit_cmd(
    model_name,
    dtype,
    device,
    device_map,
    trust_remote_code,
    data,
    source,
    target,
    neurons,
    top_k,
    margin,
    aggregate,
    split,
    limit,
    eval_split,
    eval_limit,
    spec_tasks,
    spec_limit,
    batch_size,
    out,
    as_json,
):
    """Edit the down-projection write-out of selected neurons so the model says --target
    where it said --source, without training.

    \b
    Closed form (least-norm, rank one, documented in hones_nn/editing/edit.py):
      u = gamma * (W_U[target] - W_U[source]),  k = mean activation of the neurons at the
      positions that generate the source token,
      Delta W_down[:, i] = c * k_i / |k|^2 * u / |u|,
    with c solved exactly (through the final RMSNorm) so that the direct effect brings
    logit(target) - logit(source) to --margin on the edit prompts.
    Reports success on held-out captions, captions without the source left unchanged,
    and the metrics of --spec-tasks with and without the edit. Apply the edit elsewhere
    with `hones-nn evaluate --edit FILE`.
    """
    from hones_nn.editing.edit import save_edit
    from hones_nn.editing.run import run_edit
    from hones_nn.engine.core import Engine
    from hones_nn.tasks.prompts import TASK_NAMES

    if not out.endswith(".safetensors"):
        raise ValueError(f"--out {out}: give a .safetensors file name")
    tasks = [t.strip() for t in spec_tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        raise ValueError(f"--spec-tasks: unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASK_NAMES)}")
    if limit < 1 or eval_limit < 1 or top_k < 1:
        raise ValueError("--limit, --eval-limit and --top-k must be >= 1")
    loaded = load(model_name, dtype, device, device_map, trust_remote_code)
    engine = Engine(loaded)
    edit, report = run_edit(
        loaded,
        engine,
        data,
        source,
        target,
        neurons=neurons,
        top_k=top_k,
        margin=margin,
        aggregate=aggregate,
        split=split,
        limit=limit,
        eval_split=eval_split,
        eval_limit=eval_limit,
        spec_tasks=tasks,
        spec_limit=spec_limit,
        batch_size=batch_size,
        progress=not as_json,
    )
    save_edit(out, edit, edit.meta, report)
    report["file"] = out
    if as_json:
        emit_json(report)
        return
    e, c = report["edit_prompts"], report["held_out_captions"]
    click.echo(
        f"edit {source!r} -> {target!r}: {report['meta']['neurons']}, layers {report['layers']}, "
        f"c = {report['solve']['c']:.3f}, |Delta W| = {report['solve']['delta_frobenius']:.3f} "
        f"({100 * report['solve']['delta_relative']:.0f}% of |W| of those columns) -> {out}"
    )
    click.echo(
        f"edit prompts ({e['n']} of {e['scanned']} captions scanned): margin before {e['mean_margin_before']:.2f}, "
        f"predicted {e['mean_margin_predicted']:.2f}, measured {e['mean_margin_measured']:.2f}; "
        f"target top-1 {100 * e['top1_target']:.1f}%"
    )
    click.echo(
        f"held-out captions ({c['n_images']} images of {eval_split}): with {source!r} {c['n_with_source']}, "
        f"success {100 * c['success']:.1f}%, exact swap {100 * c['exact']:.1f}%; "
        f"without {source!r} {c['n_without_source']}, unchanged {100 * c['unchanged_without_source']:.1f}%"
    )
    if report["other_tasks"]:
        print_table(
            [
                {
                    "task": t["task"],
                    "metric": t["metric_name"],
                    "n": t["n"],
                    "base": t["base"],
                    "edited": t["edited"],
                    "change": t["change"],
                    "items changed": t["items_changed"],
                }
                for t in report["other_tasks"]
            ],
            ["task", "metric", "n", "base", "edited", "change", "items changed"],
        )
    for t in report["other_tasks"]:
        if "per_type_base" in t:
            click.echo(
                f"  {t['task']} accuracy (%) per question type, base -> edited: "
                + ", ".join(
                    f"{q} {t['per_type_base'][q]:.2f} -> {t['per_type_edited'][q]:.2f}" for q in t["per_type_base"]
                )
            )
    for ex in c["examples"][:3]:
        click.echo(f"  {ex['clean']!r} -> {ex['edited']!r}")


def register(cli: click.Group) -> None:
    cli.add_command(edit_cmd)
