"""`hones-nn fuzzy`: Wang et al.'s fuzzy multimodal neuron sets (build, VQA table, analyses).

Also the ``--modulate`` / ``--edit`` options that `hones-nn evaluate` takes
(:func:`concept_eval_options`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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
)


@click.group("fuzzy")
def fuzzy() -> None:
    """Fuzzy neuron sets of visual concepts and interrogative words (Wang et al.).

    \b
      hones-nn fuzzy build   --out-dir DIR [--concepts red,circle,...]   perturb, caption, build the sets
      hones-nn fuzzy table   --sets DIR                              VQA modulation table + suppression
      hones-nn fuzzy analyze --sets DIR                              top tokens, Spearman, layers (plots)
      hones-nn evaluate --task vqa --modulate DIR --lambda-x 0.5 --lambda-q 0.25   one setting
    """


@fuzzy.command("build")
@model_options
@click.option(
    "--data", default=None, help="Benchmark folder (needs object / text masks). Default: the synthetic benchmark."
)
@click.option("--split", default="discovery", show_default=True, help="Split the images and questions come from.")
@click.option(
    "--concepts",
    default="all",
    show_default=True,
    help="Comma-separated visual concepts (object colours / kinds, 'text'), or 'all' for every one with a mask.",
)
@click.option("--limit", type=int, default=40, show_default=True, help="Images per concept (first N that show it).")
@click.option(
    "--q-limit", type=int, default=100, show_default=True, help="Question/declarative pairs per interrogative word."
)
@click.option("--questions/--no-questions", default=True, show_default=True, help="Also build interrogative-word sets.")
@click.option("--top-n", type=int, default=100, show_default=True, help="High-response neurons per image (U_n).")
@click.option(
    "--keep-ratio",
    type=float,
    default=0.2,
    show_default=True,
    help="Keep the top fraction of U_x by membership (theta at the top 20%).",
)
@click.option(
    "--noise-std",
    type=float,
    default=None,
    help="Std of the patch noise (default: each image's own patch-embedding std).",
)
@click.option(
    "--patch-threshold",
    type=float,
    default=0.0,
    show_default=True,
    help="Perturb a patch when more than this fraction of its pixels is in the mask.",
)
@click.option(
    "--random-control/--no-random-control",
    default=True,
    show_default=True,
    help="Also caption with the same number of random patches perturbed (the caption-check control).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per generation batch.")
@click.option("--max-new-tokens", type=int, default=24, show_default=True, help="Caption length cap.")
@click.option(
    "--out-dir", "out", required=True, help="Output folder (fuzzy_sets.parquet, perturbation.json, deltas.safetensors)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
@refuses_remote("fuzzy sets are built from activations with local weight edits and image perturbations on this machine")
@guards_output("out", "--out-dir", "fuzzy_sets.parquet")
def build_cmd(
    model_name,
    dtype,
    device,
    device_map,
    trust_remote_code,
    data,
    split,
    concepts,
    limit,
    q_limit,
    questions,
    top_n,
    keep_ratio,
    noise_std,
    patch_threshold,
    random_control,
    seed,
    batch_size,
    max_new_tokens,
    out,
    as_json,
):
    """Perturb each concept's patches after the patch embedding, caption clean and perturbed
    images, and build one fuzzy set per concept (and per interrogative word).

    \b
    delta(l,i) = mean z over the clean caption's tokens - the same for the perturbed one;
    per image the top-N neurons; c = stability, s = sqrt(mean delta), mu = minmax(c * s);
    the set keeps the top --keep-ratio of the union by mu. Writes OUT/fuzzy_sets.parquet
    (concept, kind, layer, neuron, membership, stability, mean_delta, in_set) and
    OUT/perturbation.json (the caption check: how often the perturbation removes the
    concept from the caption and keeps the other objects, next to random patches).
    """
    from hones_nn.concepts.build import build_fuzzy_sets
    from hones_nn.data import resolve_benchmark
    from hones_nn.data.dataset import load_split

    if not 0 < keep_ratio <= 1:
        raise ValueError(f"--keep-ratio must be in (0, 1], got {keep_ratio}")
    if top_n < 1 or q_limit < 1 or batch_size < 1:
        raise ValueError("--top-n, --q-limit and --batch-size must be >= 1")
    loaded = load(model_name, dtype, device, device_map, trust_remote_code)
    root = resolve_benchmark(data, default=getattr(loaded, "benchmark", None))
    dataset = load_split(root, split)
    report = build_fuzzy_sets(
        loaded,
        dataset,
        str(root),
        split,
        out,
        concepts=concepts,
        limit=limit,
        q_limit=q_limit,
        questions=questions,
        top_n=top_n,
        keep_ratio=keep_ratio,
        noise_std=noise_std,
        threshold=patch_threshold,
        seed=seed,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        random_control=random_control,
        progress=not as_json,
    )
    if as_json:
        emit_json(report)
        return
    click.echo(f"fuzzy sets of {len(report['meta']['set_sizes'])} concepts -> {out} ({report['seconds']} s)")
    rows = []
    for concept, s in report["perturbation"].items():
        row = {
            "concept": concept,
            "images": s["n_images"],
            "patches": s["mean_patches"],
            "named": s["semantic"]["n_concept_named"],
            "removed": s["semantic"]["removal_rate"],
            "others kept": s["semantic"]["others_kept_rate"],
        }
        if "random" in s:
            row.update(
                {
                    "removed (random)": s["random"]["removal_rate"],
                    "others kept (random)": s["random"]["others_kept_rate"],
                }
            )
        row.update({"|U_x|": s["union_size"], "set": s["set_size"]})
        rows.append(row)
    columns = ["concept", "images", "patches", "named", "removed", "others kept"]
    if random_control:
        columns += ["removed (random)", "others kept (random)"]
    print_table(rows, columns + ["|U_x|", "set"], floatfmt="{:.3f}")
    if report["interrogative"]:
        click.echo("")
        q = report["interrogative"]
        print_table(
            [
                {
                    "set": k,
                    "pairs": v["n_pairs"],
                    "|U_x|": v["union_size"],
                    "set size": v["set_size"],
                    "example": f"{v['example']['question']} / {v['example']['declarative']}",
                }
                for k, v in q.items()
                if k.startswith("q:")
            ],
            ["set", "pairs", "|U_x|", "set size", "example"],
        )


def _print_modulation(rows, suppression=None) -> None:
    types = [t for t in rows[0]["per_type"] if t != "overall"] + ["overall"]
    table = [{"setting": r["setting"], **{t: r["per_type"][t] for t in types}} for r in rows]
    click.echo("VQA accuracy (%) per question type")
    print_table(table, ["setting"] + types, floatfmt="{:.2f}")
    if suppression:
        s = suppression
        click.echo("")
        click.echo(
            f"suppression: zero each example's X and Q sets (mean {s['mean_neurons_zeroed']:.1f} neurons, "
            f"{100 * s['mean_fraction_zeroed']:.2f}% of all)"
        )
        click.echo(
            f"  base {100 * s['base']:.2f}  sets zeroed {100 * s['sets_zeroed']:.2f} "
            f"(drop {100 * s['sets_relative_drop']:.2f}%)  random zeroed {100 * s['random_mean']:.2f} "
            f"(drop {100 * s['random_relative_drop']:.2f}%, mean of {s['random_seeds']} seeds)"
        )


@fuzzy.command("table")
@model_options
@data_options
@click.option("--sets", "sets_path", required=True, help="A `hones-nn fuzzy build` folder.")
@click.option("--split", default="test", show_default=True, help="VQA split to evaluate on.")
@click.option("--lambda-x", type=float, default=0.5, show_default=True, help="Scale of the visual-concept sets.")
@click.option("--lambda-q", type=float, default=0.25, show_default=True, help="Scale of the interrogative sets.")
@click.option(
    "--concept-source",
    type=click.Choice(["image", "question"]),
    default="image",
    show_default=True,
    help="image: the concepts the image's annotations show (paper); question: the concepts the question names.",
)
@click.option(
    "--suppression/--no-suppression",
    default=True,
    show_default=True,
    help="Also zero the sets vs the same number of random neurons per example.",
)
@click.option("--seeds", type=int, default=3, show_default=True, help="Random-control seeds of the suppression check.")
@click.option("--out", default=None, help="Also write the results to this JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
@refuses_remote("the fuzzy table reads activations with local interventions on this machine")
@guards_output("out", "--out")
def table_cmd(
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
    sets_path,
    split,
    lambda_x,
    lambda_q,
    concept_source,
    suppression,
    seeds,
    out,
    as_json,
):
    """The paper's Table 4 on our VQA: Baseline, X, Q, X+Q and the -Fix variants (mu = 0.5),
    accuracy per question type, then the suppression check.

    a <- a * (1 + lambda_x mu_x + lambda_q mu_q) at every position and generation step.
    """
    from hones_nn.concepts.fuzzy import read_sets
    from hones_nn.concepts.modulate import ExampleSets, modulation_table, suppression_check
    from hones_nn.engine.core import Engine
    from hones_nn.tasks.task_data import prepare_task
    from hones_nn.utils.io import atomic_write_json

    loaded = load(model_name, dtype, device, device_map, trust_remote_code)
    sets = read_sets(sets_path)
    sets.check_model(loaded)
    td = prepare_task(
        loaded, "vqa", data=data, split=split, limit=limit, skip_bad=skip_bad, reference_compat=reference_compat
    )
    sizes = loaded.sizes
    example_sets = ExampleSets(sets, td, sizes.num_layers, sizes.d_ff, concept_source)
    engine = Engine(loaded)
    progress = not as_json
    rows = modulation_table(engine, td, example_sets, lambda_x, lambda_q, batch_size=batch_size, progress=progress)
    supp = None
    if suppression:
        supp = suppression_check(
            engine, td, example_sets, seeds=seeds, batch_size=batch_size, progress=progress, base=rows[0]["metric"]
        )
    result = {
        "model": loaded.model_id,
        "sets": str(sets_path),
        "split": split,
        "n": td.n,
        "lambda_x": lambda_x,
        "lambda_q": lambda_q,
        "concept_source": concept_source,
        "coverage": example_sets.coverage(),
        "settings": rows,
        "suppression": supp,
    }
    if out:
        atomic_write_json(out, result)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"vqa on {split} ({td.n} questions, model {loaded.model_id}); lambda_x {lambda_x}, lambda_q {lambda_q}, "
        f"concepts from the {concept_source}"
    )
    _print_modulation(rows, supp)


@fuzzy.command("analyze")
@model_options
@click.option("--sets", "sets_path", required=True, help="A `hones-nn fuzzy build` folder.")
@click.option("--out-dir", "out", default=None, help="Output folder (default: the sets folder).")
@click.option("--top-tokens", type=int, default=10, show_default=True, help="Tokens per neuron.")
@click.option("--formats", default="png", show_default=True, help="Plot formats, comma-separated (png, svg, pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
@refuses_remote("the analysis projects neurons through the local unembedding weights")
def analyze_cmd(model_name, dtype, device, device_map, trust_remote_code, sets_path, out, top_tokens, formats, as_json):
    """Top tokens per neuron (W_U (gamma * W_down[:, i])), semantic relevance of each set,
    Spearman correlation between the sets' memberships, and each set's layer distribution.
    Writes analysis.json, spearman.png and layers.png."""
    from pathlib import Path

    from hones_nn.concepts.analysis import analyze
    from hones_nn.concepts.fuzzy import read_sets
    from hones_nn.plots import parse_formats

    loaded = load(model_name, dtype, device, device_map, trust_remote_code)
    sets = read_sets(sets_path)
    target = out or (sets_path if Path(sets_path).is_dir() else str(Path(sets_path).parent))
    report = analyze(loaded, sets, target, parse_formats(formats), k=top_tokens)
    if as_json:
        emit_json(report)
        return
    rows = []
    for name, t in report["top_tokens"].items():
        top = t["neurons"][0] if t["neurons"] else None
        rows.append(
            {
                "set": name,
                "size": len(sets.members(name)),
                "relevance": t["semantic_relevance"],
                "top neuron": f"{top['layer']}:{top['neuron']}" if top else "",
                "its top tokens": " ".join(top["top_tokens"][:6]) if top else "",
                "per layer": " ".join(map(str, report["layer_distribution"][name])),
            }
        )
    print_table(rows, ["set", "size", "relevance", "top neuron", "its top tokens", "per layer"], floatfmt="{:.2f}")
    names, rho = report["spearman"]["names"], report["spearman"]["rho"]
    click.echo("")
    click.echo("Spearman rho between memberships")
    print_table(
        [{"": a, **{b: rho[i][j] for j, b in enumerate(names)}} for i, a in enumerate(names)],
        [""] + names,
        floatfmt="{:.2f}",
    )
    click.echo("")
    click.echo("plots: " + ", ".join(report["plots"]))


# ------------------------------------------------------------------ `hones-nn evaluate` options


@dataclass
class ConceptEvalOptions:
    """--modulate / --lambda-x / --lambda-q / --fix / --concept-source / --edit of `hones-nn evaluate`."""

    modulate: str | None = None
    lambda_x: float = 0.5
    lambda_q: float = 0.25
    fix: bool = False
    concept_source: str = "image"
    edit: str | None = None

    def apply_edit(self, loaded) -> None:
        """Add the --edit file's delta to the weights (for the rest of the command)."""
        if not self.edit:
            return
        from hones_nn.editing.edit import apply_permanently, check_edit, load_edit

        try:  # a remote run executes on the server's weights, which a local edit cannot reach
            from hones_nn.cli.common import current_remote

            remote = current_remote()
        except ImportError:
            remote = None
        if remote is not None and getattr(remote, "mode", "ndif") == "ndif":
            raise ValueError("--edit changes the local weights; it cannot apply to a --remote run (drop one of them)")
        edit = load_edit(self.edit)
        check_edit(loaded, edit, self.edit)
        apply_permanently(loaded, edit)
        meta = edit.meta
        click.echo(
            f"applied edit {self.edit}: {meta.get('source')!r} -> {meta.get('target')!r}, {len(edit.neurons)} neurons",
            err=True,
        )

    def run_modulation(self, loaded, td, engine, batch_size: int, as_json: bool) -> None:
        from hones_nn.concepts.fuzzy import read_sets
        from hones_nn.concepts.modulate import ExampleSets, run_setting

        if not td.task.asks_questions:
            raise ValueError(f"--modulate is for --task vqa (the fuzzy sets modulate VQA), not {td.task.name}")
        sets = read_sets(self.modulate)
        sets.check_model(loaded)
        sizes = loaded.sizes
        example_sets = ExampleSets(sets, td, sizes.num_layers, sizes.d_ff, self.concept_source)
        progress = not as_json
        base = run_setting(
            engine, td, example_sets, 0.0, 0.0, batch_size=batch_size, progress=progress, desc="vqa base"
        )
        name = (
            ("X" if self.lambda_x else "")
            + ("+" if self.lambda_x and self.lambda_q else "")
            + ("Q" if self.lambda_q else "")
        )
        name = (name or "Baseline") + ("-Fix" if self.fix else "")
        mod = run_setting(
            engine,
            td,
            example_sets,
            self.lambda_x,
            self.lambda_q,
            self.fix,
            batch_size=batch_size,
            progress=progress,
            desc=f"vqa {name}",
        )
        rows = [{"setting": "Baseline", **base}, {"setting": name, **mod}]
        result = {
            "model": loaded.model_id,
            "task": "vqa",
            "split": td.split,
            "n": td.n,
            "modulate": self.modulate,
            "concept_source": self.concept_source,
            "coverage": example_sets.coverage(),
            "settings": rows,
            "edit": self.edit,
            "base_metric": base["metric"],
            "metric": mod["metric"],
            "gain": mod["metric"] - base["metric"],
        }
        if as_json:
            emit_json(result)
            return
        click.echo(
            f"vqa on {td.split} ({td.n} questions, model {loaded.model_id}), sets {self.modulate}"
            + (f", edit {self.edit}" if self.edit else "")
        )
        _print_modulation(rows)


def concept_eval_options(fn):
    """Add --modulate/--lambda-x/--lambda-q/--fix/--concept-source/--edit to a command; the
    command receives them bundled as one ``concept_opts`` (:class:`ConceptEvalOptions`)."""
    options = [
        click.option(
            "--modulate",
            default=None,
            help="Modulate VQA with fuzzy sets (a `hones-nn fuzzy build` folder): "
            "a <- a * (1 + lambda_x mu_x + lambda_q mu_q); reports base and modulated per question type.",
        ),
        click.option(
            "--lambda-x", type=float, default=0.5, show_default=True, help="With --modulate: visual-set scale."
        ),
        click.option(
            "--lambda-q", type=float, default=0.25, show_default=True, help="With --modulate: interrogative-set scale."
        ),
        click.option(
            "--fix", is_flag=True, help="With --modulate: the -Fix setting (membership 0.5 for every member)."
        ),
        click.option(
            "--concept-source",
            type=click.Choice(["image", "question"]),
            default="image",
            show_default=True,
            help="With --modulate: concepts from the image's annotations (paper) or named by the question.",
        ),
        click.option(
            "--edit",
            "edit_file",
            default=None,
            help="Apply a neuron edit (an .safetensors from `hones-nn edit`) to the weights first.",
        ),
    ]

    @functools.wraps(fn)
    def wrapper(*args, modulate, lambda_x, lambda_q, fix, concept_source, edit_file, **kwargs):
        opts = ConceptEvalOptions(modulate, lambda_x, lambda_q, fix, concept_source, edit_file)
        return fn(*args, concept_opts=opts, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def register(cli: click.Group) -> None:
    cli.add_command(fuzzy)
