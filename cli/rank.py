"""`hones-nn heads`, `hones-nn head-budget`, `hones-nn rank`, `hones-nn methods`."""

from __future__ import annotations

from pathlib import Path

import click

from hones_nn.cli.common import (
    current_remote,
    data_options,
    emit_json,
    friendly_errors,
    load,
    lock_wait_option,
    model_options,
    print_table,
    prompt_options,
    remote_options,
    task_option,
)


def _method_names() -> list[str]:
    from hones_nn.methods.base import METHODS, get_method

    get_method("hones")  # imports the registry
    return sorted(n for n, cls in METHODS.items() if cls.kind == "neurons")


def _run_options(
    data,
    limit,
    batch_size,
    skip_bad,
    reference_compat,
    out_dir,
    split,
    seed,
    quiet,
    instructions,
    allow_degenerate,
    shard=None,
    merge_only=False,
    shard_size=None,
    lock_wait=0.0,
) -> dict:
    """The front door's run options (``hones_nn.runner.api``) from the shared CLI options."""
    from hones_nn.engine.shards import parse_shard

    return {
        "shard": parse_shard(shard),
        "merge_only": merge_only,
        "shard_size": shard_size,
        "instructions": instructions,
        "allow_degenerate": allow_degenerate,
        "lock_wait": lock_wait,
        "out_dir": Path(out_dir),
        "batch_size": batch_size,
        "seed": seed,
        "progress": not quiet,
        "data": data,
        "split": split,
        "limit": limit,
        "skip_bad": skip_bad,
        "reference_compat": reference_compat,
        "remote": current_remote(),
    }


def common_run_options(fn):
    options = [
        click.option("--split", default="discovery", show_default=True, help="Split to localize on."),
        click.option(
            "--out-dir",
            default="hones_runs",
            show_default=True,
            help="Where tables (and resumable checkpoints, in .checkpoints/) go.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--utility",
            type=click.Choice(["metric", "logprob", "prob"]),
            default="metric",
            show_default=True,
            help="Head utility: the task metric of greedy generation (paper), teacher-forced log-prob of the "
            "gold answer, or the first answer token's probability (V-SEAM's original).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a table."),
        click.option(
            "--shard",
            default=None,
            metavar="i/n|auto",
            help="Data-parallel: compute only shards k with k % n == i-1 (1-based i) of every sharded stage, keep "
            "their files in OUT_DIR/.checkpoints and write no table; then `hones-nn merge` this command. 'auto': "
            "i/n from RANK/WORLD_SIZE (torchrun, accelerate launch) or LOCAL_RANK/LOCAL_WORLD_SIZE.",
        ),
        click.option(
            "--merge-only",
            is_flag=True,
            default=False,
            help="Compute nothing: reduce the table from the shard files of --shard runs in OUT_DIR/.checkpoints "
            "(a missing shard is an error naming it). `hones-nn merge CMD ...` is the same.",
        ),
        click.option(
            "--shard-size",
            type=click.IntRange(min=1),
            default=None,
            help="Examples per checkpointed shard (default: the method's own, 64). Part of the run key: resume "
            "and merge with the same value.",
        ),
        click.option(
            "--allow-degenerate",
            is_flag=True,
            default=False,
            help="Run on when the base utility is at its floor (0) or every head scores 0; such tables mean "
            "nothing (the prompt probably does not fit the model: check with `hones-nn evaluate --show 5`).",
        ),
        lock_wait_option,
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


def _check_output_early(out, out_dir, default_name: str) -> None:
    """The table's path checked before the model loads (a 7B load takes minutes): an
    existing directory or a folder that cannot be written is a clear error in seconds.
    The runner checks again and takes the lock when it writes."""
    from pathlib import Path

    from hones_nn.utils.io import check_output_path

    check_output_path(Path(out) if out else Path(out_dir) / default_name, "--out" if out else "--out-dir")


def _shards_written(result, as_json: bool) -> bool:
    """A --shard run's report (no table): say which shards are done and how to merge."""
    from hones_nn.runner.pipeline import ShardsWritten

    if not isinstance(result, ShardsWritten):
        return False
    if as_json:
        emit_json(
            {
                "shard": list(result.shard),
                "stage": result.stage,
                "folder": str(result.folder),
                "done": result.done,
                "missing": result.missing,
                "n_shards": result.n_shards,
            }
        )
    else:
        for line in result.lines():
            click.echo(line)
    return True


def _summary(frame, top: int = 10) -> list[dict]:
    return frame.head(top).to_dict("records")


@click.command("heads")
@task_option
@model_options
@data_options
@common_run_options
@click.option(
    "--caption-corpus",
    is_flag=True,
    help="Caption only: score a head by the drop of corpus BLEU-4 (reference code) instead of the mean "
    "per-example drop of sentence BLEU-4.",
)
@click.option(
    "--out",
    default=None,
    help="Output Parquet (default OUT_DIR/TASK.heads.parquet; with --screen atp, TASK.heads-atp.parquet).",
)
@click.option(
    "--screen",
    type=click.Choice(["none", "atp"]),
    default="none",
    show_default=True,
    help="atp: attribution-patching pre-screen (one forward + one backward per example estimates every "
    "head's drop to first order), then only the top --verify-top heads are scored exactly.",
)
@click.option(
    "--verify-top",
    type=int,
    default=None,
    help="With --screen atp: heads re-scored exactly (default 4 x K_h; 0 = screen only). Unverified heads "
    "keep their estimate and rank below all verified ones.",
)
@friendly_errors
@prompt_options
@remote_options
def heads_cmd(
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
    out_dir,
    seed,
    utility,
    as_json,
    caption_corpus,
    out,
    screen,
    verify_top,
    allow_degenerate,
    instructions,
    shard,
    merge_only,
    shard_size,
    lock_wait,
):
    """V-SEAM head localization: replace each head by the mean of the others.

    Score S_h = E_x[P(x) - P(x; theta_h)] on the discovery split, for all L x H heads,
    many (example, head) pairs per forward. Writes a Parquet table (layer, head, score,
    rank, base_utility, intervened_utility). Rerun the same command to resume.
    """
    import hones_nn as hn

    if verify_top is not None and screen != "atp":
        raise ValueError("--verify-top needs --screen atp")
    default_name = f"{task}.heads-atp.parquet" if screen == "atp" else f"{task}.heads.parquet"
    _check_output_early(out, out_dir, default_name)
    model = load(model_name, dtype, device, device_map, trust_remote_code)
    table = hn.heads(
        model,
        task,
        utility=utility,
        caption_corpus=caption_corpus,
        out=out,
        screen=None if screen == "none" else screen,
        verify_top=verify_top,
        **_run_options(
            data,
            limit,
            batch_size,
            skip_bad,
            reference_compat,
            out_dir,
            split,
            seed,
            as_json,
            instructions,
            allow_degenerate,
            shard,
            merge_only,
            shard_size,
            lock_wait,
        ),
    )
    if _shards_written(table, as_json):
        return
    meta = table.attrs
    rows = _summary(table)
    if as_json:
        rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]  # NaN
        emit_json(
            {
                "path": meta["path"],
                "task": task,
                "n_examples": meta["n_examples"],
                "base_utility": rows[0]["base_utility"],
                "top": rows,
                "screen": meta.get("screen"),
                "verified_heads": meta.get("verified_heads"),
            }
        )
        return
    screened = ""
    if meta.get("screen"):
        screened = f", AtP screen, {len(meta.get('verified_heads') or [])} heads verified exactly"
    click.echo(
        f"wrote {meta['path']}  ({meta['n_examples']} examples, utility {utility}{screened}, {meta['seconds']:.1f}s)"
    )
    print_table(rows, ["rank", "layer", "head", "score", "base_utility", "intervened_utility"])


def _budgets(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--budgets expects comma-separated head counts such as 1,2,4,8; got {value!r}") from None


@click.command("head-budget")
@task_option
@model_options
@data_options
@click.option("--split", default="discovery", show_default=True, help="Split the heads are scored and swept on.")
@click.option(
    "--out-dir",
    default="hones_runs",
    show_default=True,
    help="Where the curve (TASK.head-budget.json), the head table it reuses or writes and resumable checkpoints go.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--budgets",
    default=None,
    metavar="K1,K2,...",
    help="Head counts K to replace together (default: 1,2,3,4,6,8,12,16,24,32,48,64 up to the model's head "
    "count, and the head count itself when it is 64 or fewer).",
)
@click.option(
    "--utility",
    type=click.Choice(["metric", "prob"]),
    default="metric",
    show_default=True,
    help="What drops: the task metric of greedy generation (caption: corpus BLEU-4, as `evaluate`), or the "
    "first answer token's probability (fast). The head ranking uses the same utility.",
)
@click.option(
    "--heads",
    "heads_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="A V-SEAM head table giving the order; default OUT_DIR/TASK.heads.parquet when it matches, else computed.",
)
@click.option("--out", default=None, help="Output JSON (default OUT_DIR/TASK.head-budget.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the curve as JSON instead of a table.")
@click.option(
    "--allow-degenerate",
    is_flag=True,
    default=False,
    help="Run on when the base utility is at its floor (0) or every head scores 0 (the curve means nothing).",
)
@lock_wait_option
@friendly_errors
@prompt_options
@remote_options
def head_budget_cmd(
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
    out_dir,
    seed,
    budgets,
    utility,
    heads_path,
    out,
    as_json,
    allow_degenerate,
    lock_wait,
    instructions,
):
    """Choose HONES's head budget K_h as the paper does (appendix D.2).

    Replaces the top K V-SEAM heads together (each by the mean of the other heads of its
    layer) for each budget K, reads the relative drop of the task metric on the split,
    and reports the curve's elbow: where the drop stops rising steeply. Pass the largest
    elbow of your tasks to `hones-nn rank --top-heads` (`hones-nn plot head-budget` draws
    the curves and prints that budget). One evaluation of the split per budget.
    """
    import hones_nn as hn

    budget_list = _budgets(budgets)
    _check_output_early(out, out_dir, f"{task}.head-budget.json")
    model = load(model_name, dtype, device, device_map, trust_remote_code)
    result = hn.head_budget(
        model,
        task,
        budgets=budget_list,
        heads=heads_path,
        utility=utility,
        out=out,
        **_run_options(
            data,
            limit,
            batch_size,
            skip_bad,
            reference_compat,
            out_dir,
            split,
            seed,
            as_json,
            instructions,
            allow_degenerate,
            lock_wait=lock_wait,
        ),
    )
    if as_json:
        emit_json(result)
        return
    if result.get("dry_run"):
        click.echo(f"head budget ({task}): {len(result['budgets'])} budgets planned; a dry run has no curve")
        return
    reused = ", head table reused" if result.get("heads_reused") else ""
    click.echo(
        f"wrote {result['path']}  ({result['n_examples']} {result['split']} examples, {result['metric']} base "
        f"{result['base']:.4f}{reused}, {result['seconds']:.1f}s)"
    )
    rows = [
        {"K": k, "metric": u, "relative drop %": 100 * d}
        for k, u, d in zip(result["budgets"], result["utilities"], result["relative_drops"])
    ]
    print_table(rows, ["K", "metric", "relative drop %"])
    if result["elbow"] is None:
        click.echo(
            "no elbow: the drop never rises above 0, or still rises faster than linearly at the largest budget; "
            "try larger --budgets or more items (--limit)"
        )
    else:
        click.echo(f"elbow: K = {result['elbow']}  (use --top-heads {result['elbow']} with `hones-nn rank`)")


@click.command("rank")
@task_option
@click.option(
    "--method", required=True, type=click.Choice(_method_names()), help="Ranking method (see `hones-nn methods`)."
)
@model_options
@data_options
@common_run_options
@click.option(
    "--heads",
    "heads_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="A V-SEAM head table; computed first (and saved) when omitted.",
)
@click.option(
    "--top-heads",
    type=int,
    default=None,
    help="K_h heads guiding HONES (default: 30, or a quarter of the heads for tiny models; choose it for your "
    "model with `hones-nn head-budget`).",
)
@click.option("--out", default=None, help="Output Parquet (default OUT_DIR/TASK.METHOD.parquet).")
@click.option(
    "--option",
    "method_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A method option, repeatable (e.g. --option steps=50 for qrnca, --option positions=image for ap); "
    "values are parsed as JSON when they can be (numbers, true/false), else kept as text.",
)
@click.option(
    "--recompute-heads",
    is_flag=True,
    default=False,
    help="Recompute the head table even when OUT_DIR/TASK.heads.parquet was made with the same model, data, "
    "split, limit, utility and instruction (it is reused then, and the table's metadata says heads_reused).",
)
@friendly_errors
@prompt_options
@remote_options
def rank_cmd(
    task,
    method,
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
    out_dir,
    seed,
    utility,
    as_json,
    heads_path,
    top_heads,
    out,
    method_options,
    allow_degenerate,
    recompute_heads,
    instructions,
    shard,
    merge_only,
    shard_size,
    lock_wait,
):
    """Rank every FFN neuron of the language model for a task.

    Writes one row per neuron (layer, neuron, score, rank; rank 1 = most important,
    ties by lower layer then index) with the run's metadata. Mask the top ones with
    `hones-nn evaluate --task T --mask TABLE`.
    """
    import hones_nn as hn

    _check_output_early(out, out_dir, f"{task}.{method}.parquet")
    model = load(model_name, dtype, device, device_map, trust_remote_code)
    table = hn.rank(
        model,
        task,
        method,
        heads=heads_path,
        top_heads=top_heads,
        utility=utility,
        out=out,
        options=parse_options(method_options),
        recompute_heads=recompute_heads,
        **_run_options(
            data,
            limit,
            batch_size,
            skip_bad,
            reference_compat,
            out_dir,
            split,
            seed,
            as_json,
            instructions,
            allow_degenerate,
            shard,
            merge_only,
            shard_size,
            lock_wait,
        ),
    )
    if _shards_written(table, as_json):
        return
    meta = table.attrs
    rows = _summary(table)
    if as_json:
        emit_json(
            {
                "path": meta["path"],
                "task": task,
                "method": method,
                "n_examples": meta["n_examples"],
                "seconds": meta["seconds"],
                "top": rows,
            }
        )
        return
    reused = ", head table reused" if meta.get("heads_reused") else ""
    skipped = f", {meta['n_skipped']} item(s) skipped" if meta.get("n_skipped") else ""
    k_h = (meta.get("options") or {}).get("top_heads")
    guided = f", K_h = {k_h} (choose it with `hones-nn head-budget`)" if k_h else ""
    click.echo(
        f"wrote {meta['path']}  ({method}, {meta['n_examples']} examples{skipped}{reused}{guided}, "
        f"{meta['seconds']:.1f}s)"
    )
    print_table(rows, ["rank", "layer", "neuron", "score"], floatfmt="{:.6g}")


@click.command("methods")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--model",
    "model_name",
    default=None,
    help="Estimate passes and peak memory per example for this model, from its config only: a local "
    "folder or config.json, tiny-llava / tiny-random-ARCH, or a built-in hub id such as "
    "llava-hf/llava-1.5-7b-hf (no download).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Rows per forward, for the peak estimate.",
)
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"]))
@click.option(
    "--text-tokens",
    type=int,
    default=48,
    show_default=True,
    help="Prompt text + answer tokens per row, beside the image tokens.",
)
@click.option(
    "--top-heads", type=int, default=None, help="K_h (default: 30, or a quarter of the heads for tiny models)."
)
@click.option(
    "--utility",
    type=click.Choice(["metric", "logprob", "prob"]),
    default="metric",
    show_default=True,
    help="Head utility assumed for vseam / atp-screen (metric = greedy generation).",
)
@friendly_errors
def methods_cmd(as_json, model_name, batch_size, dtype, text_tokens, top_heads, utility):
    """List the registered methods: what each needs and costs per example.

    With --model, also the passes (rows) per example and the peak memory each method needs
    (weights + batch x per-row activations), estimated from the model config before anything runs.
    """
    from hones_nn.methods.base import METHODS, get_method

    get_method("hones")
    rows = [
        {
            "method": name,
            "kind": cls.kind,
            "site": cls.site,
            "needs": cls.needs,
            "cost per example": cls.cost,
            "summary": cls.summary,
            "target": cls.default_target or "-",
        }
        for name, cls in sorted(METHODS.items())
    ]
    for r in rows:  # what each method declares it needs, and how approximate methods approximate
        cls = METHODS[r["method"]]
        r["requires"] = (
            ", ".join(
                label
                for flag, label in (
                    (cls.needs_heads, "head table"),
                    (cls.needs_gradients, "gradients"),
                    (cls.needs_all_tasks, "all four tasks"),
                )
                if flag
            )
            or "-"
        )
        if cls.approximation:
            r["approximation"] = cls.approximation
    notes = [f"{r['method']} is approximate: {r['approximation']}." for r in rows if "approximation" in r]
    if model_name is not None:
        from hones_nn.runner.estimates import estimate_methods, human_bytes, model_shape

        shape = model_shape(model_name)
        estimates = {
            e.method: e
            for e in estimate_methods(
                shape, [r["method"] for r in rows], batch_size, dtype, text_tokens, top_heads, utility
            )
        }
        for r in rows:
            e = estimates[r["method"]]
            r.update(
                {
                    "rows per example": e.rows_per_example,
                    "passes": e.passes,
                    "pass kind": e.pass_kind,
                    "activations per row": e.activation_bytes_per_row,
                    "weights bytes": e.weights_bytes,
                    "peak bytes": e.peak_bytes,
                    "peak": human_bytes(e.peak_bytes),
                }
            )
        if as_json:
            emit_json(
                {
                    "model": model_name,
                    "source": shape.source,
                    "batch_size": batch_size,
                    "dtype": dtype,
                    "seq_len": shape.seq_len(text_tokens),
                    "shape": shape.__dict__,
                    "methods": rows,
                }
            )
            return
        click.echo(
            f"{model_name}: {shape.source}; {shape.num_layers} layers x {shape.num_heads} heads, d_ff "
            f"{shape.d_ff}, {shape.params / 1e9:.3g}B parameters "
            f"({human_bytes(shape.params * (4 if dtype == 'float32' else 2))} "
            f"in {dtype}); {shape.seq_len(text_tokens)} tokens per row ({shape.image_tokens} image + "
            f"{text_tokens} text); batch {batch_size}. Peak = weights + batch x activations per row "
            "(a conservative estimate, see hones_nn/runner/estimates.py)."
        )
        for r in rows:
            r["act/row"] = human_bytes(r["activations per row"])
        print_table(rows, ["method", "rows per example", "pass kind", "act/row", "peak", "passes"])
        for note in notes:
            click.echo(note)
        return
    if as_json:
        emit_json(rows)
        return
    print_table(rows, ["method", "kind", "requires", "target", "cost per example", "needs"])
    for note in notes:
        click.echo(note)
    from hones_nn.tasks.base import TARGET_MODES

    click.echo(
        "target: the paper default of the shared target option (--target in compare, --option target=... in "
        "rank): " + "; ".join(f"{k} = {v}" for k, v in TARGET_MODES.items()) + "."
    )


@click.command(
    "merge",
    # everything after COMMAND is that command's (`hones-nn merge heads --help`: the help of heads)
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False},
)
@click.argument("command")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def merge_cmd(ctx, command, args):
    """Merge the shard files of `--shard i/n` runs into the table of one process.

    \b
    hones-nn merge heads --task vqa --limit 64 --out-dir runs
    hones-nn merge rank --task vqa --method hones --heads runs/vqa.heads.parquet --out-dir runs
    hones-nn merge compare --tasks vqa --methods hones,ap --out-dir runs
    Give the command and the options of the shard runs, without --shard (the same options make the
    same run key, so the same shard files); it is `hones-nn COMMAND ... --merge-only`. Nothing is
    computed: a missing shard is an error that names it.
    """
    mergeable = ("heads", "rank", "compare")
    root = ctx.find_root().command
    sub = root.commands.get(command) if isinstance(root, click.Group) else None
    if command not in mergeable or sub is None:
        raise click.UsageError(f"hones-nn merge {command}: give one of {', '.join(mergeable)} and its options")
    if any(a == "--shard" or a.startswith("--shard=") for a in args):
        raise click.UsageError("hones-nn merge: drop --shard (give the options of the shard runs without it)")
    sub_ctx = sub.make_context(command, [*args, "--merge-only"], parent=ctx.parent)
    with sub_ctx:
        return sub.invoke(sub_ctx)


def register(cli: click.Group) -> None:
    for command in (heads_cmd, head_budget_cmd, rank_cmd, methods_cmd, merge_cmd):
        cli.add_command(command)
