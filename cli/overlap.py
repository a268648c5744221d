"""`hones-nn overlap` (cross-task neuron groups, Tables 10/11) and `hones-nn lens` (MLP logit lens, Fig. 4/9)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hones_nn.cli.common import (
    current_remote,
    data_options,
    emit_json,
    friendly_errors,
    guards_output,
    load,
    model_options,
    print_table,
    remote_options,
    task_option,
)


def _split_paths(values) -> list[str]:
    out = []
    for value in values:
        out.extend(p for p in str(value).split(",") if p)
    return out


@click.command("overlap", short_help="Cross-task neuron groups masked on every task (Tables 10/11).")
@click.option(
    "--scores",
    "scores",
    multiple=True,
    metavar="TABLE",
    help="Neuron score tables, one per task (the task is read from each table). Give them as "
    "--scores A B C D, --scores A --scores B ..., or comma-separated.",
)
@click.argument("more_scores", nargs=-1, metavar="[TABLE]...")
@click.option(
    "--top-ratio",
    type=float,
    default=0.01,
    show_default=True,
    help="Each task's top set: this fraction of all neurons.",
)
@model_options
@data_options
@click.option("--split", default="test", show_default=True, help="Split every group is masked on.")
@click.option(
    "--random-draws", type=int, default=10, show_default=True, help="Random sets per matched control (seeded)."
)
@click.option(
    "--random-for",
    type=click.Choice(["all", "dominant", "none"]),
    default="all",
    show_default=True,
    help="Which cells get a matched random control: every masked cell, only each task's dominant group "
    "(the paper's single 'Random (same size)' row; cheaper), or none.",
)
@click.option(
    "--cells",
    type=click.Choice(["all", "members"]),
    default="all",
    show_default=True,
    help="Mask every group on every task, or (the paper's '–' cells) mask a shared group only on its own tasks.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="First seed of the random draws.")
@click.option(
    "--out-dir",
    "out_dir",
    default="hones_runs/overlap",
    show_default=True,
    help="Folder for overlap.parquet, overlap.json and groups/<group>.json.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@friendly_errors
@remote_options
@guards_output("out_dir", "--out-dir", "overlap.parquet")
def overlap_cmd(
    scores,
    more_scores,
    top_ratio,
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
    random_draws,
    random_for,
    cells,
    seed,
    out_dir,
    as_json,
):
    """Cross-task neuron groups: mask each exclusive membership group on each task.

    \b
    From each task's top --top-ratio neurons (HONES 5.2, appendix E.1), every neuron of
    the union belongs to exactly one group, the set of tasks whose top set holds it:
    with four tasks 15 groups (4 task-specific, 6 pairs, 4 triples, 1 general).
    Each non-empty group is masked on each task's --split (empty groups are listed,
    never masked), with a matched random control (same size, mean of --random-draws
    seeded draws over all neurons). Prints Tables 10/11 (relative drop, %) and the
    random control, and names each task's dominant salient group: the shared group
    (pair, triple or general) CONTAINING the task with the largest drop (task-specific
    groups and shared groups without the task are excluded; see
    hones_nn.evaluation.overlap).

    \b
    Writes OUT/overlap.parquet (group, tasks, size, task, base, masked, relative_drop,
    random_drop, ...), OUT/overlap.json (groups with their neurons, dominant groups,
    all results) and OUT/groups/<group>.json (a neuron list per non-empty group, usable
    as `hones-nn lens --group FILE` and as a steering neuron file).
    """
    from hones_nn.engine.core import Engine
    from hones_nn.engine.tables import check_neuron_table_for, top_k_for_ratio
    from hones_nn.evaluation.overlap import (
        display,
        load_task_tables,
        membership_groups,
        overlap_evaluation,
        paper_table,
        random_matched_row,
        task_sets,
        write_overlap,
    )
    from hones_nn.tasks.task_data import prepare_task

    paths = _split_paths(scores) + _split_paths(more_scores)
    if not paths:
        raise ValueError(
            "give the tasks' neuron score tables: --scores vqa.parquet ocr.parquet caption.parquet "
            "retrieval.parquet (from `hones-nn rank`)"
        )
    top_k_for_ratio(1, top_ratio)  # validates the ratio before loading anything
    tables = load_task_tables(paths)
    tasks = list(tables)
    loaded = load(model_name, dtype, device, device_map, trust_remote_code)
    for table in tables.values():
        check_neuron_table_for(table, loaded)
    sets = task_sets(tables, top_ratio)
    groups = membership_groups(sets)
    progress = not as_json
    task_data = {
        t: prepare_task(
            loaded, t, data=data, split=split, limit=limit, skip_bad=skip_bad, reference_compat=reference_compat
        )
        for t in tasks
    }
    for t, td in task_data.items():
        if td.n == 0:
            raise ValueError(f"no {t} examples on split {split!r}")
    result = overlap_evaluation(
        Engine(loaded, remote=current_remote()),
        task_data,
        groups,
        draws=random_draws,
        seed=seed,
        random_for=random_for,
        cells=cells,
        batch_size=batch_size,
        progress=progress,
    )
    meta = {
        "model_id": loaded.model_id,
        "weights_hash": loaded.weights_hash,
        "top_ratio": top_ratio,
        "tasks": tasks,
        "split": split,
        "limit": limit,
        "data_dir": next(iter(task_data.values())).data_dir,
        "tables": {t: str(tab.path) for t, tab in tables.items()},
        "methods": {t: tab.meta.get("method") for t, tab in tables.items()},
        "k": {t: len(s) for t, s in sets.items()},
        "n": {t: td.n for t, td in task_data.items()},
        "union": len(set().union(*map(set, sets.values()))),
    }
    written = write_overlap(out_dir, result, meta)
    group_dir = Path(out_dir) / "groups"
    group_dir.mkdir(parents=True, exist_ok=True)
    group_files = {}
    for group in groups:
        if group.empty:
            continue
        path = group_dir / f"{group.key}.json"
        path.write_text(
            json.dumps(
                {
                    "group": group.key,
                    "name": group.name,
                    "tasks": list(group.tasks),
                    "model_id": loaded.model_id,
                    "weights_hash": loaded.weights_hash,
                    "top_ratio": top_ratio,
                    "neurons": [list(n) for n in group.neurons],
                }
            )
            + "\n"
        )
        group_files[group.key] = str(path)
    if as_json:
        from hones_nn.evaluation.overlap import json_safe

        emit_json(
            json_safe(
                {
                    **meta,
                    "groups": [{k: v for k, v in g.as_json().items() if k != "neurons"} for g in groups],
                    "dominant": result.dominant,
                    "results": result.rows,
                    "files": {k: str(v) for k, v in written.items()},
                    "group_files": group_files,
                }
            )
        )
        return
    for t, td in task_data.items():
        if td.skipped:
            click.echo(f"{t}: skipped {len(td.skipped)} bad item(s)")
    click.echo(
        f"top-{100 * top_ratio:g}% sets of {', '.join(display(t) for t in tasks)} on {loaded.model_id}: "
        + ", ".join(f"{display(t)} {len(s)}" for t, s in sets.items())
        + f" neurons; union {meta['union']}; {sum(not g.empty for g in groups)} of {len(groups)} groups "
        "non-empty"
    )
    bases = {r["task"]: r["base"] for r in result.rows}
    click.echo(
        f"masked on {split}: "
        + ", ".join(f"{display(t)} n={td.n} (base {td.task.metric_name} {bases[t]:.4f})" for t, td in task_data.items())
    )
    columns = ["kind", "group", "size"] + [display(t) for t in tasks]
    click.echo("")
    click.echo(
        "Relative drop (%) when masking each group (Tables 10/11; 'empty': no neuron, not masked; '–': not evaluated)"
    )
    table_rows = paper_table(result.rows, tasks, "relative_drop")
    if random_for != "none":
        table_rows.append(random_matched_row(result.rows, result.dominant, tasks))
    print_table(table_rows, columns)
    if random_for == "all":
        click.echo("")
        click.echo(f"Random control (%): the same number of neurons drawn uniformly, mean of {random_draws} draws")
        print_table(paper_table(result.rows, tasks, "random_drop"), columns)
    click.echo("")
    click.echo("Dominant salient group per task (largest drop among the non-empty shared groups containing the task):")
    for t in tasks:
        dom = result.dominant[t]
        if dom is None:
            click.echo(f"  {display(t)}: none (no non-empty shared group contains {display(t)})")
            continue
        rnd = dom.get("random_drop")
        rnd_text = f", random same size {100 * rnd:.2f}%" if rnd is not None and rnd == rnd else ""
        click.echo(
            f"  {display(t)}: {dom['name']} ({dom['size']} neurons): drop {100 * dom['relative_drop']:.2f}%{rnd_text}"
        )
    click.echo("")
    click.echo(f"wrote {written['parquet']}, {written['json']} and {len(group_files)} group file(s) in {group_dir}")


# ------------------------------------------------------------------ lens


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None


def _pairs_from_json(data, path) -> list[tuple[int, int]] | None:
    """A neuron list (list of [layer, neuron] / {layer, neuron}, or an object with 'neurons'); None if not one."""
    if isinstance(data, dict) and "neurons" in data and data.get("kind") != "overlap":
        data = data["neurons"]
    if not isinstance(data, list):
        return None
    out = []
    for k, v in enumerate(data):
        if isinstance(v, dict) and "layer" in v and "neuron" in v:
            out.append((int(v["layer"]), int(v["neuron"])))
        elif isinstance(v, (list, tuple)) and len(v) == 2:
            out.append((int(v[0]), int(v[1])))
        else:
            raise ValueError(f"{path}: entry {k} {v!r} is not a [layer, neuron] pair")
    return out


def resolve_group(spec: str, task: str, groups_file: str | None, top_ratio: float, loaded) -> tuple[str, list]:
    """(display name, neurons) of one --group value (see `hones-nn lens --help`)."""
    from hones_nn.engine.tables import read_neuron_table
    from hones_nn.evaluation.overlap import find_group, read_groups

    path = Path(spec)
    if path.suffix == ".parquet" and path.exists():
        table = read_neuron_table(path, loaded, "a --group given as a table")
        label = f"{table.meta.get('task')}.{table.meta.get('method')} top-{100 * top_ratio:g}%"
        return label, table.top_ratio(top_ratio)
    name = None
    if path.suffix == ".json" and path.exists():
        data = _read_json(path)
        if not (isinstance(data, dict) and data.get("kind") == "overlap"):
            pairs = _pairs_from_json(data, path)
            if pairs is None:
                raise ValueError(f"{path} is neither a neuron list nor an overlap.json")
            _check_model(data, path, loaded)
            label = data.get("name") if isinstance(data, dict) and data.get("name") else path.stem
            return label, pairs
        raise ValueError(
            f"{path} is an overlap.json with {len(data['groups'])} groups: name one, "
            f"e.g. --group {path}:dominant or --group {path}:{data['groups'][0]['key']}"
        )
    if ":" in spec and Path(spec.rsplit(":", 1)[0]).exists():
        file, name = spec.rsplit(":", 1)
    elif groups_file is not None:
        file, name = groups_file, spec
    else:
        raise ValueError(
            f"--group {spec!r}: not a file; to name a group give --groups OVERLAP.json "
            f"(from `hones-nn overlap`) or write FILE:NAME"
        )
    groups, doc = read_groups(file)
    _check_model(doc, file, loaded)
    if name.strip().lower() == "dominant":
        dom = (doc.get("dominant") or {}).get(task)
        if not dom:
            raise ValueError(f"{file} names no dominant group for task {task!r}")
        name = dom["group"]
    group = find_group(groups, name)
    if group.empty:
        raise ValueError(f"group {group.name} of {file} is empty: nothing to mask")
    return group.name, group.neurons


def _check_model(doc, path, loaded) -> None:
    if not isinstance(doc, dict):
        return
    wh, mid = doc.get("weights_hash"), doc.get("model_id")
    if wh and loaded.weights_hash and wh != loaded.weights_hash:
        if mid == loaded.model_id:
            raise ValueError(
                f"{path} was made on other weights of {mid!r} (weights {wh}, now {loaded.weights_hash}); "
                "recompute the tables and groups for these weights"
            )
        raise ValueError(
            f"{path} was made on model {mid!r} (weights {wh}), not {loaded.model_id!r} "
            f"(weights {loaded.weights_hash}); pass the same --model"
        )
    if not (wh and loaded.weights_hash) and mid and mid != loaded.model_id:
        raise ValueError(f"{path} was made on model {mid!r}, not {loaded.model_id!r}; pass the same --model")


def _tok(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


@click.command("lens", short_help="MLP logit lens of neuron groups, clean vs masked (Fig. 4/9).")
@task_option
@click.option(
    "--group",
    "group_specs",
    multiple=True,
    required=True,
    metavar="FILE_OR_NAME",
    help="A neuron group to mask, repeatable: a group name of --groups (e.g. vqa+retrieval, "
    "'VQA-specific', general, dominant), OVERLAP.json:NAME, a neuron list JSON (OUT/groups/*.json of "
    "`hones-nn overlap`, a list of [layer, neuron]), or a neuron score table (its top --top-ratio).",
)
@click.option(
    "--groups",
    "groups_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="The overlap.json of `hones-nn overlap` that group names refer to.",
)
@click.option("--top-ratio", type=float, default=0.01, show_default=True, help="For a score table given as --group.")
@click.option(
    "--norm",
    type=click.Choice(["final", "frozen", "none"]),
    default="final",
    show_default=True,
    help="final: W_U final_norm(mlp_out), the standard logit lens (Neo et al. 2025); frozen: the final "
    "norm with the clean run's RMS at T (linear, DLA units); none: W_U mlp_out.",
)
@click.option("--top-k", type=int, default=5, show_default=True, help="Tokens listed per layer.")
@click.option(
    "--target",
    type=click.Choice(["first", "all", "idf"]),
    default="first",
    show_default=True,
    help="Target tokens of the 'target Δ' column (the shared target option of hones/dla/llm-knowledge): the "
    "first gold token, all gold tokens, or HONES's IDF-weighted references (captions).",
)
@model_options
@data_options
@click.option("--split", default="test", show_default=True)
@click.option("--out", default=None, help="Also write the JSON report to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of tables.")
@friendly_errors
@remote_options
@guards_output("out", "--out")
def lens_cmd(
    task,
    group_specs,
    groups_file,
    top_ratio,
    norm,
    top_k,
    target,
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
    out,
    as_json,
):
    """MLP logit lens of neuron groups (HONES 5.2, appendix E.4, Fig. 4/9).

    \b
    Per layer l, the MLP block's output at the last prompt position T is projected to
    the vocabulary (--norm), in the clean forward and in a forward with the group
    masked; Delta logit = clean - masked, averaged over the examples (the task's
    HONES prompts; retrieval: the positive candidate). Lists per layer the --top-k
    tokens whose logit falls most (what the group promotes), and the Delta of each
    example's target token (the first gold token). Use --limit 1 for a single case.
    """
    from hones_nn.engine.core import Engine
    from hones_nn.evaluation.logit_lens import logit_lens
    from hones_nn.tasks.task_data import prepare_task

    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    loaded = load(model_name, dtype, device, device_map, trust_remote_code)
    groups = {}
    for spec in group_specs:
        name, neurons = resolve_group(spec, task, groups_file, top_ratio, loaded)
        while name in groups:
            name += "'"
        groups[name] = neurons
    td = prepare_task(
        loaded, task, data=data, split=split, limit=limit, skip_bad=skip_bad, reference_compat=reference_compat
    )
    report = logit_lens(
        Engine(loaded, remote=current_remote()),
        td,
        groups,
        norm=norm,
        batch_size=batch_size,
        progress=not as_json,
        target=target,
    )
    doc = {**report.as_json(top_k), "model": loaded.model_id, "split": split, "target": target}
    if out:
        from hones_nn.utils.io import atomic_write_json

        atomic_write_json(out, doc)
    if as_json:
        emit_json(doc)
        return
    click.echo(
        f"MLP logit lens on {task} ({split}, {report.n} examples, model {loaded.model_id}, norm {norm}, "
        f"target {target}); "
        "Delta = clean - masked logit at T, positive: the group promotes the token"
    )
    for name in groups:
        click.echo("")
        click.echo(f"group {name} ({len(groups[name])} neurons)")
        rows = []
        target_delta = report.target_delta(name)
        for layer, tops in enumerate(report.top_tokens(name, top_k)):
            falls = ", ".join(f"{_tok(t['token'])} {t['delta']:+.3f}" for t in tops) or "(no token falls)"
            rows.append({"layer": layer, "target Δ": float(target_delta[layer]), f"top {top_k} falls (token Δ)": falls})
        print_table(rows, ["layer", "target Δ", f"top {top_k} falls (token Δ)"], floatfmt="{:+.3f}")
    if out:
        click.echo(f"\nwrote {out}")


def register(cli: click.Group) -> None:
    for command in (overlap_cmd, lens_cmd):
        cli.add_command(command)
