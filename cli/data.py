"""`hones-nn data ...`: build, import and inspect benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hones_nn.cli.common import emit_json, friendly_errors, guards_output, print_table


@click.group("data")
def data_group() -> None:
    """Build, import and inspect benchmarks (the shared Parquet layout)."""


@data_group.command("build-synthetic")
@click.option(
    "--out-dir", "out", required=True, type=click.Path(file_okay=False), help="Folder to write the benchmark to."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--n-images",
    type=int,
    default=1200,
    show_default=True,
    help="Images of the evaluation splits, split discovery:dev:test = 7:2:3.",
)
@click.option(
    "--n-train", type=int, default=2000, show_default=True, help="Images of the train split (model training only)."
)
@click.option(
    "--generator",
    default="synthetic-v1",
    show_default=True,
    help="synthetic-v1 (the shipped tiny models' data) or synthetic-v2 (harder: more colours, shapes "
    "and sizes, textured backgrounds, distractor text, relations, counts to six; 64 x 64 images).",
)
@friendly_errors
@guards_output("out", "--out-dir", ".benchmark")
def build_synthetic(out, seed, n_images, n_train, generator):
    """Generate the synthetic four-task benchmark (deterministic for a seed)."""
    from hones_nn.data.synthetic import build_synthetic_benchmark

    path = build_synthetic_benchmark(out, seed=seed, n_images=n_images, n_train=n_train, generator=generator)
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


def _report(report: dict, as_json: bool, out) -> None:
    if as_json:
        emit_json(report)
        return
    click.echo(
        f"wrote {out}: {report.get('n_written')} image(s) of {report.get('n_records', report.get('n_input', '?'))}"
        f" record(s); per split {report.get('splits', report.get('counts'))}"
    )
    if report.get("n_skipped"):
        click.echo(f"skipped {report['n_skipped']} bad record(s): {report.get('skipped_by_reason')}")


def _split_sizes(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    sizes = {}
    for part in text.split(","):
        name, _, count = part.partition("=")
        if not count.strip().isdigit():
            raise ValueError(
                f"--split-sizes expects name=count pairs like discovery=700,dev=200,test=300, got {part!r}"
            )
        sizes[name.strip()] = int(count)
    return sizes


@data_group.command("import-hones")
@click.option(
    "--records",
    "json_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Official HONES unified records, a JSON file (e.g. hones_coco_dev_split.json).",
)
@click.option(
    "--images", required=True, type=click.Path(exists=True, file_okay=False), help="COCO train2014 image folder."
)
@click.option(
    "--out-dir", "out", required=True, type=click.Path(file_okay=False), help="Folder to write the benchmark to."
)
@click.option("--split", default="dev", show_default=True, help="Split the records go to.")
@click.option(
    "--split-sizes", default=None, help="Instead: partition image-disjointly, e.g. discovery=700,dev=200,test=300."
)
@click.option("--seed", type=int, default=3407, show_default=True, help="Seed of partitioning and retrieval mining.")
@click.option("--limit", type=int, default=None, help="Import only the first N records.")
@click.option("--skip-bad", is_flag=True, help="Skip (and count) records with a missing/corrupt image or empty field.")
@click.option(
    "--draw-ocr-box/--no-draw-ocr-box",
    default=True,
    show_default=True,
    help="Draw the blue OCR outline into the pixels (the paper's visual prompt), or keep the images as they are "
    '(the reference code draws none itself). Records marked ocr.box_drawn (or a file with "ocr_box_drawn": '
    "true) are never drawn on again.",
)
@click.option(
    "--tasks",
    default="vqa,ocr,caption,retrieval",
    show_default=True,
    help="The tasks every record must carry (comma-separated); a record lacking another task's fields is kept "
    "with them empty and counted (missing_task_fields); retrieval candidates are mined only for retrieval.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
@friendly_errors
@guards_output("out", "--out-dir", ".benchmark")
def import_hones_cmd(json_path, images, out, split, split_sizes, seed, limit, skip_bad, draw_ocr_box, tasks, as_json):
    """Import the official HONES records + COCO images (blue OCR box drawn from the bbox,
    retrieval negatives mined from the split's captions)."""
    from hones_nn.data.hones_records import import_hones

    report = import_hones(
        json_path,
        images,
        out,
        seed=seed,
        split_sizes=_split_sizes(split_sizes),
        skip_bad=skip_bad,
        split=split,
        limit=limit,
        progress=not as_json,
        draw_box=draw_ocr_box,
        tasks=[t.strip() for t in tasks.split(",") if t.strip()],
    )
    _report(report, as_json, out)


def _ood_command(name: str, loader_name: str, annotation_help: str):
    @data_group.command(name)
    @click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False), help=annotation_help)
    @click.option("--images", required=True, type=click.Path(exists=True, file_okay=False), help="Image folder.")
    @click.option(
        "--out-dir", "out", required=True, type=click.Path(file_okay=False), help="Folder to write the benchmark to."
    )
    @click.option("--split", default="test", show_default=True, help="Split the items go to.")
    @click.option("--seed", type=int, default=3407, show_default=True)
    @click.option("--max-images", type=int, default=None, help="Import at most N images.")
    @click.option("--skip-bad", is_flag=True, help="Skip (and count) unusable records.")
    @click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
    @friendly_errors
    @guards_output("out", "--out-dir", ".benchmark")
    def command(annotations, images, out, split, seed, max_images, skip_bad, as_json):
        from hones_nn.data import ood

        loader = getattr(ood, loader_name)
        report = loader(
            annotations,
            images,
            out,
            split=split,
            seed=seed,
            skip_bad=skip_bad,
            max_images=max_images,
            progress=not as_json,
        )
        _report(report, as_json, out)

    command.__doc__ = (
        f"Import {name.removeprefix('import-')} (out-of-distribution set of the paper) into the shared layout."
    )
    return command


_ood_command("import-gqa", "load_gqa", "GQA questions JSON ({qid: {imageId, question, answer, ...}}).")
_ood_command("import-textvqa", "load_textvqa", "TextVQA_0.5.1 JSON ({'data': [...]}).")
_ood_command("import-flickr30k", "load_flickr30k", "Karpathy-style dataset_flickr30k.json.")


def _print_info(path: Path) -> None:
    from hones_nn.data.dataset import load_split, read_manifest

    manifest = read_manifest(path)
    click.echo(f"benchmark {path}")
    click.echo(
        f"  source: {manifest.get('source')}  "
        + "  ".join(
            f"{k}: {v}"
            for k, v in manifest.items()
            if k not in ("splits", "source") and not isinstance(v, (dict, list))
        )
    )
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
