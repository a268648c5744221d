"""`hones-nn data ...`: build, import and inspect benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hones_nn.cli.common import emit_json, friendly_errors, print_table


@click.group("data")
def data_group() -> None:
    """Build, import and inspect benchmarks (the shared Parquet layout)."""


@data_group.command("build-synthetic")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the benchmark to.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--n-images", type=int, default=1200, show_default=True,
              help="Images of the evaluation splits, split discovery:dev:test = 7:2:3.")
@click.option("--n-train", type=int, default=2000, show_default=True, help="Images of the train split (model training only).")
@friendly_errors
def build_synthetic(out, seed, n_images, n_train):
    """Generate the synthetic four-task benchmark (deterministic for a seed)."""
    from hones_nn.data.synthetic import build_synthetic_benchmark

    path = build_synthetic_benchmark(out, seed=seed, n_images=n_images, n_train=n_train)
    _print_info(path)


@data_group.command("info")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@friendly_errors
def info(folder, as_json):
    """Show what a benchmark folder holds."""
    if as_json:
        from hones_nn.data.dataset import read_manifest

        emit_json(read_manifest(folder))
    else:
        _print_info(Path(folder))


def _print_info(path: Path) -> None:
    from hones_nn.data.dataset import load_split, read_manifest

    manifest = read_manifest(path)
    click.echo(f"benchmark {path}")
    click.echo(f"  source: {manifest.get('source')}  " + "  ".join(
        f"{k}: {v}" for k, v in manifest.items() if k not in ("splits", "source") and not isinstance(v, (dict, list))))
    rows = []
    for split, count in manifest.get("splits", {}).items():
        ds = load_split(path, split)
        qtypes = {}
        for qa in ds.select_columns(["vqa"])["vqa"]:
            qtypes[qa["question_type"]] = qtypes.get(qa["question_type"], 0) + 1
        rows.append({"split": split, "images": count, "vqa question types": json.dumps(qtypes, sort_keys=True)})
    print_table(rows, ["split", "images", "vqa question types"])


def register(cli: click.Group) -> None:
    cli.add_command(data_group)
