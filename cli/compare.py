"""`hones-nn compare`: methods side by side (paper Tables 1, 7 and 9)."""

from __future__ import annotations

from pathlib import Path

import click

from hones_nn.cli.common import (
    current_remote,
    emit_json,
    friendly_errors,
    guards_output,
    load,
    model_options,
    print_table,
    remote_options,
)
from hones_nn.tasks.prompts import TASK_NAMES


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command("compare")
@click.option(
    "--methods",
    default="hones,ap,ma,ape,dla,llm-knowledge,qrnca,group-patching,random",
    show_default=True,
    help="Comma-separated method names (see `hones-nn methods`).",
)
@click.option("--tasks", default=",".join(TASK_NAMES), show_default=True, help="Comma-separated tasks.")
@click.option("--top-ratio", type=float, default=0.01, show_default=True, help="Fraction of neurons masked per method.")
@model_options
@click.option("--data", default=None, help="Benchmark folder (default: the synthetic benchmark).")
@click.option(
    "--out-dir",
    "out_dir",
    default="hones_compare",
    show_default=True,
    help="Folder for score tables (reused when present) and compare.parquet.",
)
@click.option("--discovery-limit", type=int, default=None, help="Rank on the first N discovery items only.")
@click.option("--test-limit", type=int, default=None, help="Mask on the first N test items only.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--utility",
    type=click.Choice(["metric", "logprob", "prob"]),
    default="metric",
    show_default=True,
    help="Head utility for HONES's V-SEAM step.",
)
@click.option(
    "--top-heads",
    type=int,
    default=None,
    help="K_h for HONES (default: 30, a quarter of the heads for tiny models; choose it for your model with "
    "`hones-nn head-budget`).",
)
@click.option(
    "--target",
    type=click.Choice(["first", "all", "idf"]),
    default=None,
    help="One target for every direct-projection method (hones, dla, llm-knowledge): first = the first gold "
    "token, all = every gold token, idf = HONES's target (captions: IDF-weighted tokens of all references). "
    "Default: each method's paper default (see `hones-nn methods`); the tables say which each row used.",
)
@click.option(
    "--ape-variant",
    type=click.Choice(["bernoulli", "mmneuron"]),
    default="bernoulli",
    show_default=True,
    help="APE as in the HONES appendix (Bernoulli entropy, ranked descending) or MMNeuron's lowest-entropy variant.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--skip-bad", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option(
    "--shard",
    default=None,
    metavar="i/n|auto",
    help="Data-parallel: every ranking stage computes only its shards k % n == i-1 and keeps their files; no "
    "comparison is written. Then `hones-nn merge compare` with the same options; methods guided by heads need a "
    "second round (the merge says so) once the head tables are merged.",
)
@click.option(
    "--merge-only",
    is_flag=True,
    default=False,
    help="Compute no ranking: reduce the tables from the --shard runs' files, then mask and compare "
    "(`hones-nn merge compare ...` is the same).",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=None,
    help="Discovery examples per checkpointed shard (default: each method's own). Merge with the same value.",
)
@friendly_errors
@remote_options
@guards_output("out_dir", "--out-dir", "compare.parquet")
def compare_cmd(
    methods,
    tasks,
    top_ratio,
    model_name,
    dtype,
    device,
    device_map,
    trust_remote_code,
    data,
    out_dir,
    discovery_limit,
    test_limit,
    batch_size,
    utility,
    top_heads,
    target,
    ape_variant,
    seed,
    skip_bad,
    as_json,
    shard,
    merge_only,
    shard_size,
):
    """Rank with each method on discovery, mask each top ratio on test, print the tables.

    \b
    Table 1: relative drop (%) of the task metric when the top neurons are masked
    Table 7: absolute metric after masking
    Table 9: localization time per discovery instance (s)
    Score tables already in --out-dir are reused; compare.parquet has one row per method x task.
    """
    import hones_nn as hn
    from hones_nn.engine.shards import parse_shard
    from hones_nn.evaluation.compare import CompareRoundDone, pivot

    method_list, task_list = _csv(methods), _csv(tasks)
    unknown = [t for t in task_list if t not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASK_NAMES)}")
    shard = parse_shard(shard)  # bad values fail before the model loads
    model = load(model_name, dtype, device, device_map, trust_remote_code)
    try:
        frame = hn.compare(
            model,
            method_list,
            task_list,
            top_ratio=top_ratio,
            discovery_limit=discovery_limit,
            test_limit=test_limit,
            utility=utility,
            top_heads=top_heads,
            target=target,
            ape_variant=ape_variant,
            out_dir=out_dir,
            log=(lambda *_: None) if as_json else click.echo,
            remote=current_remote(),
            batch_size=batch_size,
            seed=seed,
            progress=not as_json,
            data=data,
            skip_bad=skip_bad,
            shard=shard,
            merge_only=merge_only,
            shard_size=shard_size,
        )
    except CompareRoundDone as done:
        if as_json:
            emit_json({"shard": list(done.shard) if done.shard else None, "waiting": done.waiting})
        else:
            for line in done.lines():
                click.echo(line)
        return
    rows = frame.to_dict("records")
    if as_json:
        emit_json(rows)
        return
    labels = {}
    for r in rows:
        label = r["method"]
        if r.get("target"):
            label += f" [target: {r['target']}]"
        elif r["method"] == "ape":
            label += f" [{ape_variant}]"
        labels[r["method"]] = label
    rows = [{**r, "method": labels[r["method"]]} for r in rows]
    method_list = [labels.get(m, m) for m in method_list]
    columns = ["method", *task_list, "mean"]
    click.echo(
        f"\nTable 1: relative drop (%) when masking the top {100 * top_ratio:g}% neurons (higher = more critical)"
    )
    print_table(pivot(rows, "relative_drop", method_list, task_list, 100.0), columns, floatfmt="{:.2f}")
    base = {t: next(r["base"] for r in rows if r["task"] == t) for t in task_list}
    click.echo("\nTable 7: metric after masking (base: " + ", ".join(f"{t} {v:.4f}" for t, v in base.items()) + ")")
    print_table(pivot(rows, "masked", method_list, task_list), columns)
    click.echo("\nTable 9: localization time per discovery instance (s)")
    print_table(pivot(rows, "seconds_per_instance", method_list, task_list), columns, floatfmt="{:.4f}")
    click.echo(
        "\n[target: ...] is the target a direct-projection method read (first = first gold token, all = every "
        "gold token, idf = HONES's target; captions: IDF-weighted references); also in compare.parquet"
    )
    click.echo(f"\nwrote {Path(out_dir) / 'compare.parquet'}")


def register(cli: click.Group) -> None:
    cli.add_command(compare_cmd)
