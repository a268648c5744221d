"""`hones-nn heads`, `hones-nn rank`, `hones-nn methods`."""

from __future__ import annotations

from pathlib import Path

import click

from hones_nn.cli.common import data_options, emit_json, friendly_errors, load, model_options, print_table, task_option


def _method_names() -> list[str]:
    from hones_nn.methods.base import METHODS, get_method

    get_method("hones")  # imports the registry
    return sorted(n for n, cls in METHODS.items() if cls.kind == "neurons")


def _runner(model_name, dtype, device, device_map, trust_remote_code, data, limit, batch_size, skip_bad,
            reference_compat, out_dir, split, seed, quiet):
    from hones_nn.runner.pipeline import Runner

    loaded = load(model_name, dtype, device, device_map, trust_remote_code)
    return Runner(loaded=loaded, out_dir=Path(out_dir), batch_size=batch_size, seed=seed, progress=not quiet,
                  data=data, split=split, limit=limit, skip_bad=skip_bad, reference_compat=reference_compat)


def common_run_options(fn):
    options = [
        click.option("--split", default="discovery", show_default=True, help="Split to localize on."),
        click.option("--out-dir", default="hones_runs", show_default=True,
                     help="Where tables (and resumable checkpoints, in .checkpoints/) go."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--utility", type=click.Choice(["metric", "logprob", "prob"]), default="metric", show_default=True,
                     help="Head utility: the task metric of greedy generation (paper), teacher-forced log-prob of the "
                          "gold answer, or the first answer token's probability (V-SEAM's original)."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a table."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def parse_options(pairs) -> dict:
    """KEY=VALUE pairs into a dict; values as JSON where possible."""
    import json

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _summary(table, top: int = 10) -> list[dict]:
    df = table.table.to_pandas().sort_values("rank").head(top)
    return df.to_dict("records")


@click.command("heads")
@task_option
@model_options
@data_options
@common_run_options
@click.option("--caption-corpus", is_flag=True,
              help="Caption only: score a head by the drop of corpus BLEU-4 (reference code) instead of the mean "
                   "per-example drop of sentence BLEU-4.")
@click.option("--out", default=None, help="Output Parquet (default OUT_DIR/TASK.heads.parquet).")
@friendly_errors
def heads_cmd(task, model_name, dtype, device, device_map, trust_remote_code, data, limit, batch_size, skip_bad,
              reference_compat, split, out_dir, seed, utility, as_json, caption_corpus, out):
    """V-SEAM head localization: replace each head by the mean of the others.

    Score S_h = E_x[P(x) - P(x; theta_h)] on the discovery split, for all L x H heads,
    many (example, head) pairs per forward. Writes a Parquet table (layer, head, score,
    rank, base_utility, intervened_utility). Rerun the same command to resume.
    """
    runner = _runner(model_name, dtype, device, device_map, trust_remote_code, data, limit, batch_size, skip_bad,
                     reference_compat, out_dir, split, seed, as_json)
    table = runner.heads(task, utility=utility, caption_corpus=caption_corpus, out=out)
    rows = _summary(table)
    if as_json:
        emit_json({"path": str(table.path), "task": task, "n_examples": table.meta["n_examples"],
                   "base_utility": rows[0]["base_utility"], "top": rows})
        return
    click.echo(f"wrote {table.path}  ({table.meta['n_examples']} examples, utility {utility}, "
               f"{table.meta['seconds']:.1f}s)")
    print_table(rows, ["rank", "layer", "head", "score", "base_utility", "intervened_utility"])


@click.command("rank")
@task_option
@click.option("--method", required=True, type=click.Choice(_method_names()), help="Ranking method (see `hones-nn methods`).")
@model_options
@data_options
@common_run_options
@click.option("--heads", "heads_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A V-SEAM head table; computed first (and saved) when omitted.")
@click.option("--top-heads", type=int, default=None,
              help="K_h heads guiding HONES (default: 30, or a quarter of the heads for tiny models).")
@click.option("--out", default=None, help="Output Parquet (default OUT_DIR/TASK.METHOD.parquet).")
@click.option("--option", "method_options", multiple=True, metavar="KEY=VALUE",
              help="A method option, repeatable (e.g. --option steps=50 for qrnca, --option positions=image for ap); "
                   "values are parsed as JSON when they can be (numbers, true/false), else kept as text.")
@friendly_errors
def rank_cmd(task, method, model_name, dtype, device, device_map, trust_remote_code, data, limit, batch_size, skip_bad,
             reference_compat, split, out_dir, seed, utility, as_json, heads_path, top_heads, out, method_options):
    """Rank every FFN neuron of the language model for a task.

    Writes one row per neuron (layer, neuron, score, rank; rank 1 = most important,
    ties by lower layer then index) with the run's metadata. Mask the top ones with
    `hones-nn evaluate --task T --mask TABLE`.
    """
    runner = _runner(model_name, dtype, device, device_map, trust_remote_code, data, limit, batch_size, skip_bad,
                     reference_compat, out_dir, split, seed, as_json)
    table = runner.rank(task, method, heads=heads_path, top_heads=top_heads, utility=utility, out=out,
                        options=parse_options(method_options))
    rows = _summary(table)
    if as_json:
        emit_json({"path": str(table.path), "task": task, "method": method, "n_examples": table.meta["n_examples"],
                   "seconds": table.meta["seconds"], "top": rows})
        return
    click.echo(f"wrote {table.path}  ({method}, {table.meta['n_examples']} examples, {table.meta['seconds']:.1f}s)")
    print_table(rows, ["rank", "layer", "neuron", "score"], floatfmt="{:.6g}")


@click.command("methods")
@click.option("--json", "as_json", is_flag=True)
def methods_cmd(as_json):
    """List the registered methods: what each needs and costs per example."""
    from hones_nn.methods.base import METHODS, get_method

    get_method("hones")
    rows = [{"method": name, "kind": cls.kind, "site": cls.site, "needs": cls.needs, "cost per example": cls.cost,
             "summary": cls.summary} for name, cls in sorted(METHODS.items())]
    if as_json:
        emit_json(rows)
        return
    print_table(rows, ["method", "kind", "cost per example", "needs"])


def register(cli: click.Group) -> None:
    for command in (heads_cmd, rank_cmd, methods_cmd):
        cli.add_command(command)
