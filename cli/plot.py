"""`hones-nn plot`: the paper's figures from hones-nn's files (PNG / SVG, headless)."""

from __future__ import annotations

import functools
import sys

import click

from hones_nn.cli.common import emit_json, friendly_errors


def _size(value: str | None):
    if value is None:
        return None
    try:
        w, h = (float(x) for x in value.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size expects WIDTHxHEIGHT in inches, e.g. 8x4.5; got {value!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"--size must be positive, got {value!r}")
    return (w, h)


def figure_options(fn):
    options = [
        click.option(
            "--out",
            "out_prefix",
            required=True,
            metavar="FILE_PREFIX",
            help="Output path without extension: writes FILE_PREFIX.png, FILE_PREFIX.svg ...",
        ),
        click.option(
            "--format",
            "formats",
            default="png,svg",
            show_default=True,
            help="Comma-separated formats among png, svg, pdf.",
        ),
        click.option("--dpi", type=int, default=150, show_default=True, help="PNG resolution (pixels per inch)."),
        click.option(
            "--size",
            default=None,
            metavar="WxH",
            help="Figure size in inches (default per figure); PNG pixels = size x dpi.",
        ),
        click.option("--title", default=None, help="Replace the default title."),
        click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def needs_matplotlib(fn):
    """A missing matplotlib is one clear line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from hones_nn.plots import MissingPlotExtra

        try:
            return fn(*args, **kwargs)
        except MissingPlotExtra as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _report(paths, as_json) -> None:
    if as_json:
        emit_json({"files": [str(p) for p in paths]})
    else:
        for p in paths:
            click.echo(f"wrote {p}")


def _tables(paths):
    from hones_nn.engine.tables import read_table

    if not paths:
        raise ValueError("give one or more score tables")
    return [read_table(p) for p in paths]


@click.group("plot")
def plot_group() -> None:
    """Figures of the paper (needs matplotlib: pip install hones-nn[plot]).

    \b
      hones-nn plot layers  vqa.parquet ocr.parquet ... --out fig2     Fig. 2
      hones-nn plot heads   vqa.heads.parquet ...       --out fig5     Fig. 5/6
      hones-nn plot groups  OUT/overlap.parquet         --out fig3     Fig. 3
      hones-nn plot steering vqa/report.json ...        --out steer    Table 3 as bars
      hones-nn plot head-budget vqa.head-budget.json ...  --out fig7   Fig. 7 (K_h)
    Each writes FILE_PREFIX.png and FILE_PREFIX.svg (--format), headless.
    """


@plot_group.command("layers", short_help="Layer distribution of the top neurons per task (Fig. 2).")
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--top-ratio", type=float, default=0.01, show_default=True, help="Top fraction of all neurons counted.")
@click.option(
    "--style",
    type=click.Choice(["auto", "bar", "line"]),
    default="auto",
    show_default=True,
    help="Grouped bars or lines (auto: bars for small models).",
)
@click.option("--percent", is_flag=True, help="Share of each task's top set per layer instead of counts.")
@figure_options
@friendly_errors
@needs_matplotlib
def layers_cmd(tables, top_ratio, style, percent, out_prefix, formats, dpi, size, title, as_json):
    """Layer distribution of each task's top neurons (Fig. 2): one series per neuron table."""
    from hones_nn.plots import DEFAULT_SIZE, plot_layers

    paths = plot_layers(
        _tables(tables),
        out_prefix,
        top_ratio=top_ratio,
        formats=formats,
        size=_size(size) or DEFAULT_SIZE,
        dpi=dpi,
        style=style,
        percent=percent,
        title=title,
    )
    _report(paths, as_json)


@plot_group.command("heads", short_help="Head importance heatmaps, layers x heads (Fig. 5/6).")
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--mark-top", type=int, default=0, show_default=True, help="Circle each table's top K heads (K_h).")
@click.option("--shared-scale", is_flag=True, help="One colour scale for all panels (default: one per panel).")
@figure_options
@friendly_errors
@needs_matplotlib
def heads_cmd(tables, mark_top, shared_scale, out_prefix, formats, dpi, size, title, as_json):
    """Head importance heatmaps, layers x heads (Fig. 5/6): one panel per head table."""
    from hones_nn.plots import plot_heads

    paths = plot_heads(
        _tables(tables),
        out_prefix,
        formats=formats,
        size=_size(size),
        dpi=dpi,
        mark_top=mark_top,
        shared_scale=shared_scale,
        title=title,
    )
    _report(paths, as_json)


@plot_group.command("groups", short_help="Relative drops of the cross-task neuron groups (Fig. 3).")
@click.argument("overlap", type=click.Path(dir_okay=False))
@click.option(
    "--mode",
    type=click.Choice(["summary", "full"]),
    default="summary",
    show_default=True,
    help="summary: Fig. 3 (specific, best pair, best triple, general, random per task); "
    "full: every group on every task.",
)
@figure_options
@friendly_errors
@needs_matplotlib
def groups_cmd(overlap, mode, out_prefix, formats, dpi, size, title, as_json):
    """Relative drops of the cross-task neuron groups (Fig. 3) from `hones-nn overlap`'s overlap.parquet (or .json)."""
    from hones_nn.evaluation.overlap import read_overlap_rows
    from hones_nn.plots import plot_groups

    paths = plot_groups(
        read_overlap_rows(overlap), out_prefix, formats=formats, mode=mode, size=_size(size), dpi=dpi, title=title
    )
    _report(paths, as_json)


@plot_group.command("steering", short_help="Steering results per task as bars (Table 3).")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False))
@figure_options
@friendly_errors
@needs_matplotlib
def steering_cmd(reports, out_prefix, formats, dpi, size, title, as_json):
    """Steering results per task as bars (Table 3), one panel per task.

    \b
    REPORTS: JSON files, merged task by task, each one of:
      the report.json of `hones-nn steer --out-dir DIR` (one task; conditions base, fixed-amp,
        grid, rand-neuron, no-kl, ours) or its relearn-report.json (mean +- SD bars);
      [{"task": "vqa", "name": "Base", "metric": 0.652}, {"task": "vqa", "name": "Ours", "metric": 0.673}, ...]
      {"vqa": [{"name": "Base", "metric": 0.652}, ...], "ocr": [...]}
      either of the last two under a "tasks" or "results" key of an object
    name may also be condition/method/label, metric may be test_metric/value/score;
    optional "std" (or "sd") or "ci": [low, high] draw error bars, "metric_name" the y label.
    A condition named Base is drawn grey.
    """
    from hones_nn.plots import plot_steering

    paths = plot_steering(list(reports), out_prefix, formats=formats, size=_size(size), dpi=dpi, title=title)
    _report(paths, as_json)


@plot_group.command("head-budget", short_help="Relative drop against the head budget K, per task (Fig. 7).")
@click.argument("curves", nargs=-1, required=True, type=click.Path(dir_okay=False))
@figure_options
@friendly_errors
@needs_matplotlib
def head_budget_cmd(curves, out_prefix, formats, dpi, size, title, as_json):
    """The head-budget curves of `hones-nn head-budget` (TASK.head-budget.json files), one line
    per task with its elbow circled, and the budget for all of them: the largest elbow
    (the paper's unified K_h, appendix D.2). Pass it to `hones-nn rank --top-heads`."""
    from hones_nn.methods.head_budget import unified_budget
    from hones_nn.plots import plot_head_budget, read_head_budgets

    data = read_head_budgets(list(curves))
    paths = plot_head_budget(data, out_prefix, formats=formats, size=_size(size), dpi=dpi, title=title)
    unified = unified_budget([c["elbow"] for c in data])
    if as_json:
        emit_json(
            {"files": [str(p) for p in paths], "elbows": {c["task"]: c["elbow"] for c in data}, "unified": unified}
        )
        return
    _report(paths, False)
    for c in data:
        click.echo(f"{c['task']}: elbow K = {c['elbow'] if c['elbow'] is not None else 'none'}")
    if unified is None:
        click.echo("no curve has an elbow: no budget to suggest")
    else:
        click.echo(f"unified budget (largest elbow): --top-heads {unified}")


def register(cli: click.Group) -> None:
    cli.add_command(plot_group)
