"""Options and helpers shared by the commands."""

from __future__ import annotations

import functools
import json
import sys

import click

from hones_nn.tasks.prompts import TASK_NAMES


def model_options(fn):
    """--model, --dtype, --device, --device-map, --trust-remote-code."""
    options = [
        click.option("--model", "model_name", default="tiny-llava", show_default=True,
                     help="Hub id, local path, or an embedded model name (tiny-llava is shipped in the package)."),
        click.option("--dtype", default=None, type=click.Choice(["float32", "float16", "bfloat16", "auto"]),
                     help="Weights dtype (default: float32 on CPU; the checkpoint's own with 'auto')."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps ..."),
        click.option("--device-map", default=None, help="Passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs."),
        click.option("--trust-remote-code", is_flag=True, default=False,
                     help="Allow model code from the hub to run (off by default)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def data_options(fn):
    options = [
        click.option("--data", default=None,
                     help="Benchmark folder (hones-nn layout). Default: the synthetic benchmark, built on first use."),
        click.option("--limit", type=int, default=None, help="Use only the first N items of the split."),
        click.option("--batch-size", type=int, default=32, show_default=True, help="Prompts per forward pass."),
        click.option("--skip-bad", is_flag=True, default=False,
                     help="Skip unusable items (corrupt image, empty answer) and report how many, instead of failing."),
        click.option("--reference-compat", is_flag=True, default=False,
                     help="Reproduce the official HONES code's choices instead of the paper's (see the docs)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


task_option = click.option("--task", required=True, type=click.Choice(TASK_NAMES), help="The task.")


def load(model_name, dtype, device, device_map, trust_remote_code):
    from hones_nn.models.loading import load_model

    return load_model(model_name, dtype=dtype, device=device, device_map=device_map,
                      trust_remote_code=trust_remote_code)


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=float))


def friendly_errors(fn):
    """Turn expected user errors into one clear line and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            click.echo(f"error: {message}", err=True)
            sys.exit(2)

    return wrapper


def print_table(rows: list[dict], columns: list[str], floatfmt: str = "{:.4f}") -> None:
    """A plain aligned text table."""
    def fmt(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))
