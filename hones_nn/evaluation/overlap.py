"""Cross-task neuron groups (HONES 5.2, appendix E.1, Tables 10/11, Fig. 3).

From the tasks' top-ratio neuron sets N_t (default top 1% of each task's score table),
every neuron of the union belongs to exactly one *exclusive membership group*: the set of
tasks whose top set holds it. With the four tasks that gives 2^4 - 1 = 15 groups, in the
paper's order: 4 task-specific (N_t minus the other sets), 6 pairs, 4 triples and the
general group (the intersection of all four). The groups partition the union.

Each non-empty group is masked (z_i <- 0 at every position, generation included, as
:func:`hones_nn.evaluation.evaluate.masked_evaluation`) on each task's split (default the
test split), giving relative drop = (base - masked) / base. Empty groups are reported as
empty and never masked (their drop is NaN, not 0). The random control of a (group, task)
cell masks the same number of neurons drawn uniformly over all L * d_ff neurons, mean of
``draws`` seeded draws (seeds seed .. seed + draws - 1, :func:`random_neurons`); the draws
depend only on the size, so groups of equal size share them.

Choices we made where the paper is silent or terse (written down here, and in the CLI help):

* ``cells="all"`` (default) masks every non-empty group on every task. The paper's tables
  leave the cells of a shared group on tasks outside the group empty ("–"): ``cells="members"``
  reproduces that layout (task-specific groups are still masked on every task, as in the
  paper): 44 instead of 60 masked cells with four tasks.
* ``random_for="all"`` (default) gives every evaluated cell its own matched random control;
  the paper reports one random control per task, matched to the size of the task's
  dominant group: ``random_for="dominant"`` does only that (cheaper on a 7B model).
* The *dominant salient group* of task t (appendix E.1: "the single most damaging
  shared-group ablation among Pair/Triple/General") is the non-empty group with the
  largest relative drop on t among the shared groups (two or more tasks) **that contain t**.
  Task-specific groups are excluded (the paper compares shared groups against them), and
  so are shared groups without t: their neurons are not in t's top set, so they cannot be
  "t's" salient neurons, and steering (4.3) draws t's neurons from this group. NaN drops
  (base metric 0) never win. When no shared group containing t is non-empty there is no
  dominant group (None); the JSON also names the most damaging group of any kind.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hones_nn.tasks.prompts import TASK_NAMES

DISPLAY = {"vqa": "VQA", "ocr": "OCR", "caption": "Caption", "retrieval": "Retrieval"}
KINDS = {1: "specific", 2: "pair", 3: "triple"}
CELLS = ("all", "members")
RANDOM_FOR = ("all", "dominant", "none")


def display(task: str) -> str:
    return DISPLAY.get(task, task)


def order_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    """The tasks in the paper's order (vqa, ocr, caption, retrieval), unknown ones after."""
    tasks = list(dict.fromkeys(tasks))
    known = [t for t in TASK_NAMES if t in tasks]
    return tuple(known + sorted(t for t in tasks if t not in TASK_NAMES))


@dataclass
class NeuronGroup:
    """The neurons in the top set of exactly ``tasks`` (and of no other task)."""

    tasks: tuple[str, ...]
    neurons: list[tuple[int, int]]
    n_tasks_total: int = 4

    @property
    def size(self) -> int:
        return len(self.neurons)

    @property
    def empty(self) -> bool:
        return not self.neurons

    @property
    def kind(self) -> str:
        if len(self.tasks) == self.n_tasks_total and self.n_tasks_total > 1:
            return "general"
        return KINDS.get(len(self.tasks), f"{len(self.tasks)}-way")

    @property
    def key(self) -> str:
        """Machine name: 'vqa', 'vqa+ocr', ... (the tasks joined by '+')."""
        return "+".join(self.tasks)

    @property
    def name(self) -> str:
        """The paper's label: 'VQA-specific', 'VQA+OCR', 'GENERAL'."""
        if self.kind == "general":
            return "GENERAL"
        if len(self.tasks) == 1:
            return f"{display(self.tasks[0])}-specific"
        return "+".join(display(t) for t in self.tasks)

    @property
    def shared(self) -> bool:
        return len(self.tasks) > 1

    def as_json(self) -> dict:
        return {
            "key": self.key,
            "name": self.name,
            "kind": self.kind,
            "tasks": list(self.tasks),
            "size": self.size,
            "neurons": [list(n) for n in self.neurons],
        }


def membership_groups(sets: Mapping[str, Iterable[tuple[int, int]]]) -> list[NeuronGroup]:
    """The 2^n - 1 exclusive membership groups of the tasks' neuron sets, empty ones included.

    Order: by the number of tasks, then lexicographically in the paper's task order
    (VQA, OCR, Caption, Retrieval), i.e. the rows of Tables 10/11. Neurons in each group
    are sorted (layer, index).
    """
    tasks = order_tasks(sets)
    if len(tasks) < 2:
        raise ValueError("cross-task groups need the neuron sets of at least two tasks")
    members = {t: {(int(layer), int(i)) for layer, i in sets[t]} for t in tasks}
    by_signature: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for neuron in set().union(*members.values()):
        signature = tuple(t for t in tasks if neuron in members[t])
        by_signature.setdefault(signature, []).append(neuron)
    groups = []
    for r in range(1, len(tasks) + 1):
        for combo in itertools.combinations(tasks, r):
            groups.append(NeuronGroup(combo, sorted(by_signature.get(combo, [])), len(tasks)))
    return groups


# ------------------------------------------------------------------ score tables


def check_same_model(tables: Sequence) -> None:
    """Refuse tables of different models (by weights hash where known, else model id) or shapes."""
    first = tables[0]
    for table in tables[1:]:
        a, b = first.meta, table.meta
        if a.get("weights_hash") and b.get("weights_hash"):
            same = a["weights_hash"] == b["weights_hash"]
        else:
            same = a.get("model_id") == b.get("model_id")
        if not same or tuple(first.shape) != tuple(table.shape):
            raise ValueError(
                f"the score tables come from different models: {first.path} from {a.get('model_id')!r} "
                f"(weights {a.get('weights_hash')}, shape {tuple(first.shape)}), {table.path} from "
                f"{b.get('model_id')!r} (weights {b.get('weights_hash')}, shape {tuple(table.shape)}); "
                "rank every task on the same model"
            )


def load_task_tables(paths: Sequence[str | Path]) -> dict:
    """{task: ScoreTable} from neuron tables, one per task (the task read from the metadata)."""
    from hones_nn.engine.tables import read_table

    tables = {}
    for path in paths:
        table = read_table(path)
        if table.kind != "neurons":
            raise ValueError(f"{path} is a {table.kind} table; cross-task groups need neuron tables (`hones-nn rank`)")
        task = table.meta.get("task")
        if not task:
            raise ValueError(f"{path} does not say its task (no hones_nn.task metadata)")
        if task in tables:
            raise ValueError(f"two tables for task {task!r}: {tables[task].path} and {path}; give one per task")
        tables[task] = table
    if len(tables) < 2:
        raise ValueError("give the neuron tables of at least two tasks (the paper uses vqa, ocr, caption, retrieval)")
    check_same_model(list(tables.values()))
    return {t: tables[t] for t in order_tasks(tables)}


def task_sets(tables: Mapping, top_ratio: float = 0.01) -> dict[str, list[tuple[int, int]]]:
    return {task: table.top_ratio(top_ratio) for task, table in tables.items()}


# ------------------------------------------------------------------ masking


@dataclass
class OverlapResult:
    groups: list[NeuronGroup]
    rows: list[dict]
    dominant: dict[str, dict | None]
    meta: dict = field(default_factory=dict)

    def group(self, key: str) -> NeuronGroup:
        return find_group(self.groups, key)


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def dominant_groups(rows: Sequence[dict], tasks: Sequence[str]) -> dict[str, dict | None]:
    """Per task, the dominant salient group (see the module docstring) and the most damaging group of any kind."""
    out: dict[str, dict | None] = {}
    for task in tasks:
        cells = [r for r in rows if r["task"] == task and r["size"] > 0 and _finite(r["relative_drop"])]
        eligible = [r for r in cells if r["n_tasks"] > 1 and task in r["tasks"].split("+")]
        # ties: max() keeps the first maximum, i.e. the group earlier in the table order (fewer tasks first)
        best = max(eligible, key=lambda r: r["relative_drop"], default=None)
        anyk = max(cells, key=lambda r: r["relative_drop"], default=None)
        out[task] = (
            None
            if best is None
            else {
                "group": best["group"],
                "name": best["name"],
                "size": best["size"],
                "relative_drop": best["relative_drop"],
                "random_drop": best["random_drop"],
                "largest_any": None
                if anyk is None
                else {"group": anyk["group"], "name": anyk["name"], "relative_drop": anyk["relative_drop"]},
            }
        )
    return out


def overlap_evaluation(
    engine,
    task_data: Mapping,
    groups: Sequence[NeuronGroup],
    draws: int = 10,
    seed: int = 0,
    random_for: str = "all",
    cells: str = "all",
    batch_size: int = 32,
    progress: bool = True,
) -> OverlapResult:
    """Mask every non-empty group on every task's data (``task_data``: {task: TaskData}).

    Returns one row per (group, task) with group, name, kind, tasks, n_tasks, size, task,
    metric, n, base, masked, relative_drop, random_drop, random_std, random_draws, status
    ("masked" | "empty" | "skipped": a shared group outside the task with ``cells="members"``).
    """
    from hones_nn.evaluation.evaluate import evaluate, random_neurons, relative_drop
    from hones_nn.interventions.neurons import NeuronMask

    if cells not in CELLS:
        raise ValueError(f"cells={cells!r}; choose one of {', '.join(CELLS)}")
    if random_for not in RANDOM_FOR:
        raise ValueError(f"random_for={random_for!r}; choose one of {', '.join(RANDOM_FOR)}")
    if random_for != "none" and draws < 1:
        raise ValueError(f"--random-draws must be at least 1 (got {draws}), or use --random-for none")
    from tqdm.auto import tqdm

    sizes = engine.adapter.sizes(engine.model)
    num_layers, d_ff = sizes.num_layers, sizes.d_ff
    rows: list[dict] = []
    random_cache: dict[tuple[str, int], list[float]] = {}

    def evaluated(task: str, group: NeuronGroup) -> bool:
        return not group.empty and not (cells == "members" and group.shared and task not in group.tasks)

    # one progress bar over every evaluation of the run (base, groups, random draws)
    total = 0
    for task in task_data:
        masked_sizes = {g.size for g in groups if evaluated(task, g)}
        total += 1 + sum(evaluated(task, g) for g in groups)
        total += draws * (len(masked_sizes) if random_for == "all" else int(random_for == "dominant"))
    bar = tqdm(total=total, desc="overlap", disable=not progress, leave=False)

    def run(td, intervention, what: str):
        bar.set_postfix_str(what)
        result = evaluate(engine, td, intervention, batch_size=batch_size, progress=False)
        bar.update(1)
        return result.metric

    def random_drops(task: str, td, base: float, k: int) -> list[float]:
        if (task, k) not in random_cache:
            drops = []
            for s in range(seed, seed + draws):
                masked = run(td, NeuronMask(random_neurons(num_layers, d_ff, k, s)), f"{task} random k={k} seed {s}")
                drops.append(relative_drop(base, masked))
            random_cache[(task, k)] = drops
        return random_cache[(task, k)]

    for task, td in task_data.items():
        base = run(td, None, f"{task} base")
        for group in groups:
            row = {
                "group": group.key,
                "name": group.name,
                "kind": group.kind,
                "tasks": group.key,
                "n_tasks": len(group.tasks),
                "size": group.size,
                "task": task,
                "metric": td.task.metric_name,
                "n": td.n,
                "base": float(base),
                "masked": float("nan"),
                "relative_drop": float("nan"),
                "random_drop": float("nan"),
                "random_std": float("nan"),
                "random_draws": 0,
            }
            if group.empty:
                row["status"] = "empty"
            elif not evaluated(task, group):
                row["status"] = "skipped"
            else:
                masked = run(td, NeuronMask(group.neurons), f"{task} mask {group.key}")
                row.update(status="masked", masked=float(masked), relative_drop=float(relative_drop(base, masked)))
                if random_for == "all":
                    drops = random_drops(task, td, base, group.size)
                    row.update(
                        random_drop=float(np.mean(drops)), random_std=float(np.std(drops)), random_draws=len(drops)
                    )
            rows.append(row)
        if random_for == "dominant":
            dom = dominant_groups([r for r in rows if r["task"] == task], [task])[task]
            if dom is not None:
                drops = random_drops(task, td, base, dom["size"])
                for row in rows:
                    if row["task"] == task and row["group"] == dom["group"]:
                        row.update(
                            random_drop=float(np.mean(drops)), random_std=float(np.std(drops)), random_draws=len(drops)
                        )
    bar.close()
    tasks = list(task_data)
    return OverlapResult(
        list(groups),
        rows,
        dominant_groups(rows, tasks),
        {"random_for": random_for, "cells": cells, "random_draws": draws, "seed": seed},
    )


# ------------------------------------------------------------------ files


def write_overlap(out_dir: str | Path, result: OverlapResult, meta: dict) -> dict[str, Path]:
    """``overlap.parquet`` (one row per group x task) and ``overlap.json`` (groups with neurons, dominant groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hones_nn.utils.io import atomic_write_with

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full_meta = {**meta, **result.meta}
    columns = [
        "group",
        "name",
        "kind",
        "tasks",
        "n_tasks",
        "size",
        "task",
        "metric",
        "n",
        "base",
        "masked",
        "relative_drop",
        "random_drop",
        "random_std",
        "random_draws",
        "status",
    ]
    table = pa.Table.from_pylist([{c: r[c] for c in columns} for r in result.rows])
    table = table.replace_schema_metadata(
        {b"hones_nn.kind": b'"overlap"', b"hones_nn.meta": json.dumps(full_meta, default=str).encode()}
    )
    parquet = atomic_write_with(out_dir / "overlap.parquet", lambda p: pq.write_table(table, p))
    doc = {
        "kind": "overlap",
        **full_meta,
        "groups": [g.as_json() for g in result.groups],
        "dominant": result.dominant,
        "results": result.rows,
    }
    text = compact_pairs(json.dumps(json_safe(doc), indent=2, default=_json_default, allow_nan=False)) + "\n"
    path_json = atomic_write_with(out_dir / "overlap.json", lambda p: Path(p).write_text(text))
    return {"parquet": parquet, "json": path_json}


_PAIR = re.compile(r"\[\s*(-?\d+),\s*(-?\d+)\s*\]")


def compact_pairs(text: str) -> str:
    """[layer, neuron] pairs of an indented JSON text on one line each."""
    return _PAIR.sub(r"[\1, \2]", text)


def json_safe(obj):
    """NaN / inf become null (strict JSON), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return str(obj)


def read_overlap_rows(path: str | Path) -> list[dict]:
    """The rows of an ``overlap.parquet`` (or the ``results`` of an ``overlap.json``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; make it with `hones-nn overlap`")
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        if doc.get("kind") != "overlap":
            raise ValueError(f"{path} is not an overlap JSON from `hones-nn overlap`")
        return doc["results"]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if (table.schema.metadata or {}).get(b"hones_nn.kind") != b'"overlap"':
        raise ValueError(f"{path} is not an overlap.parquet from `hones-nn overlap`")
    return table.to_pylist()


def _norm_name(name: str) -> str:
    return name.strip().lower().replace(" ", "").replace("&", "+").replace("-specific", "").replace("_", "+")


def find_group(groups: Sequence[NeuronGroup], name: str) -> NeuronGroup:
    """A group by key ('vqa+ocr'), paper label ('VQA+OCR', 'VQA-specific', 'GENERAL'), or 'general'."""
    wanted = _norm_name(name)
    for group in groups:
        aliases = {_norm_name(group.key), _norm_name(group.name)}
        if group.kind == "general":
            aliases.add("general")
        if wanted in aliases:
            return group
        # the same task set in any order
        if set(wanted.split("+")) == set(group.tasks):
            return group
    known = ", ".join(g.name for g in groups)
    raise ValueError(f"no neuron group {name!r}; groups are: {known} (or 'dominant' with --task)")


def read_groups(path: str | Path) -> tuple[list[NeuronGroup], dict]:
    """(groups, the whole JSON document) of an ``overlap.json``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; make it with `hones-nn overlap --out-dir DIR`")
    doc = json.loads(path.read_text())
    if doc.get("kind") != "overlap" or "groups" not in doc:
        raise ValueError(f"{path} is not an overlap.json from `hones-nn overlap`")
    n_total = len({t for g in doc["groups"] for t in g["tasks"]})
    groups = [NeuronGroup(tuple(g["tasks"]), [tuple(n) for n in g["neurons"]], n_total) for g in doc["groups"]]
    return groups, doc


# ------------------------------------------------------------------ text tables


def _pct(x) -> str:
    return f"{100 * x:.2f}" if _finite(x) else "nan"


def paper_table(result_rows: Sequence[dict], tasks: Sequence[str], value: str = "relative_drop") -> list[dict]:
    """Tables 10/11 as rows for :func:`hones_nn.cli.common.print_table`: one row per group,
    one column per task, relative drops in percent; 'empty' for empty groups, '–' for
    cells not evaluated (``cells="members"``, or no random control)."""
    order: list[str] = []
    by_key: dict[tuple[str, str], dict] = {}
    for r in result_rows:
        if r["group"] not in order:
            order.append(r["group"])
        by_key[(r["group"], r["task"])] = r
    out = []
    for key in order:
        first = next(r for r in result_rows if r["group"] == key)
        row = {"kind": first["kind"], "group": first["name"], "size": first["size"]}
        for task in tasks:
            r = by_key.get((key, task))
            if r is None:
                row[display(task)] = ""
            elif r["status"] == "empty":
                row[display(task)] = "empty"
            elif r["status"] == "skipped" or (value == "random_drop" and not _finite(r[value])):
                row[display(task)] = "–"
            else:
                row[display(task)] = _pct(r[value])
        out.append(row)
    return out


def random_matched_row(result_rows: Sequence[dict], dominant: Mapping, tasks: Sequence[str]) -> dict:
    """The paper's last row: per task the random control matched to the dominant group's size."""
    row = {"kind": "random", "group": "Random (matched to dominant)", "size": ""}
    for task in tasks:
        dom = dominant.get(task)
        row[display(task)] = (
            "–"
            if dom is None or not _finite(dom.get("random_drop"))
            else f"{_pct(dom['random_drop'])} (k={dom['size']})"
        )
    return row
