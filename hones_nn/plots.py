"""Figures of the HONES paper from hones-nn's files (needs matplotlib: ``pip install hones-nn[plot]``).

* :func:`plot_layers`: the layer distribution of each task's top neurons (Fig. 2), from
  neuron score tables;
* :func:`plot_heads`: head-importance heatmaps, layers x heads (Fig. 5/6), from head tables;
* :func:`plot_groups`: relative drops of the cross-task neuron groups (Fig. 3), from
  ``overlap.parquet`` (``hones-nn overlap``);
* :func:`plot_steering`: steering results per task (Table 3 as bars), from the
  ``report.json`` of ``hones-nn steer`` (one per task) or a simple JSON (formats in
  :func:`read_steering_report`).

Every figure is drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas, never
through pyplot, so it is headless and leaves the caller's matplotlib backend alone. It is
saved once per format (``formats=("png", "svg")``) as ``PREFIX.png`` / ``PREFIX.svg``
with a fixed size: ``size`` inches x ``dpi`` (PNG pixels = round(w * dpi) x round(h * dpi);
constrained layout, no tight bounding box, so the size is exact).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FORMATS = ("png", "svg", "pdf")
TASK_COLOURS = {"vqa": "#1f77b4", "ocr": "#ff7f0e", "caption": "#2ca02c", "retrieval": "#d62728"}
KIND_COLOURS = {
    "specific": "#9ecae1",
    "pair": "#3182bd",
    "triple": "#08519c",
    "general": "#6a51a3",
    "random": "#bdbdbd",
}
DEFAULT_SIZE = (8.0, 4.5)
DEFAULT_DPI = 150


class MissingPlotExtra(ImportError):
    """matplotlib is not installed."""


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in the tests
        raise MissingPlotExtra("plotting needs matplotlib, an optional extra: pip install hones-nn[plot]") from exc
    return Figure, FigureCanvasAgg


def new_figure(size=DEFAULT_SIZE, dpi: int = DEFAULT_DPI):
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=tuple(size), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f for f in formats.replace(" ", "").split(",") if f]
    out = tuple(dict.fromkeys(f.lower().lstrip(".") for f in formats))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ValueError(f"unknown figure format(s) {', '.join(bad) or '(none)'}; choose among {', '.join(FORMATS)}")
    return out


def save(fig, out_prefix: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """``PREFIX.FORMAT`` for each format (a suffix of the prefix that is a format is dropped)."""
    prefix = Path(out_prefix)
    if prefix.suffix.lstrip(".").lower() in FORMATS:
        prefix = prefix.with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in parse_formats(formats):
        path = prefix.parent / f"{prefix.name}.{fmt}"
        fig.savefig(path, format=fmt, dpi=fig.dpi, facecolor="white")
        paths.append(path)
    return paths


def _task_label(task: str | None) -> str:
    from hones_nn.evaluation.overlap import display

    return display(task) if task else "?"


def _series_labels(tables) -> list[str]:
    """Task names; with the method (and then the file name) added where they would repeat."""
    labels = [_task_label(t.meta.get("task")) for t in tables]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} ({t.meta.get('method', '?')})" for lab, t in zip(labels, tables)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} [{Path(t.path).stem}]" for lab, t in zip(labels, tables)]
    return labels


def _model_of(tables) -> str:
    models = sorted({str(t.meta.get("model_id", "?")) for t in tables})
    return ", ".join(models)


def _int_ticks(ax, n: int, axis: str = "x", max_ticks: int = 17) -> None:
    step = max(1, math.ceil(n / max_ticks))
    ticks = list(range(0, n, step))
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks)


# ------------------------------------------------------------------ Fig. 2: layer distribution


def layer_counts(table, top_ratio: float = 0.01) -> np.ndarray:
    """Number of the table's top-ratio neurons in each layer."""
    layers = table.shape[0]
    counts = np.zeros(layers, dtype=int)
    for layer, _ in table.top_ratio(top_ratio):
        counts[layer] += 1
    return counts


def plot_layers(
    tables,
    out_prefix,
    top_ratio: float = 0.01,
    formats=("png", "svg"),
    size=DEFAULT_SIZE,
    dpi: int = DEFAULT_DPI,
    style: str = "auto",
    percent: bool = False,
    title: str | None = None,
):
    """Per layer, how many of each table's top-ratio neurons it holds (one series per table)."""
    if not tables:
        raise ValueError("give at least one neuron score table")
    for t in tables:
        if t.kind != "neurons":
            raise ValueError(f"{t.path} is a {t.kind} table; `plot layers` needs neuron tables (`hones-nn rank`)")
    shapes = {tuple(t.shape) for t in tables}
    if len({s[0] for s in shapes}) > 1:
        raise ValueError(f"the tables have different numbers of layers ({sorted(shapes)}): plot one model at a time")
    layers = tables[0].shape[0]
    if style == "auto":
        style = "bar" if layers * len(tables) <= 48 else "line"
    if style not in ("bar", "line"):
        raise ValueError(f"style={style!r}; choose auto, bar or line")
    fig = new_figure(size, dpi)
    ax = fig.add_subplot()
    x = np.arange(layers)
    labels = _series_labels(tables)
    width = 0.8 / len(tables)
    k_total = None
    for j, (table, label) in enumerate(zip(tables, labels)):
        counts = layer_counts(table, top_ratio)
        k_total = int(counts.sum())
        values = 100.0 * counts / max(1, counts.sum()) if percent else counts
        colour = TASK_COLOURS.get(table.meta.get("task")) if len(set(labels)) == len(tables) else None
        if style == "bar":
            ax.bar(
                x - 0.4 + width * (j + 0.5),
                values,
                width=width,
                label=label,
                color=colour,
                edgecolor="white",
                linewidth=0.5,
            )
        else:
            ax.plot(x, values, marker="o", markersize=3.5, linewidth=1.6, label=label, color=colour)
    ax.set_xlabel("layer")
    ax.set_ylabel(
        f"share of top-{100 * top_ratio:g}% neurons (%)" if percent else f"number of top-{100 * top_ratio:g}% neurons"
    )
    _int_ticks(ax, layers)
    ax.set_xlim(-0.6, layers - 0.4)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(title="task", frameon=False, fontsize="small", loc="best")
    methods = sorted({str(t.meta.get("method", "?")) for t in tables})
    ax.set_title(
        title
        or f"Layer distribution of the top-{100 * top_ratio:g}% neurons\n"
        f"{', '.join(methods)} on {_model_of(tables)}, k = {k_total} per task",
        fontsize="medium",
    )
    return save(fig, out_prefix, formats)


# ------------------------------------------------------------------ Fig. 5/6: head heatmaps


def plot_heads(
    tables,
    out_prefix,
    formats=("png", "svg"),
    size=None,
    dpi: int = DEFAULT_DPI,
    mark_top: int = 0,
    shared_scale: bool = False,
    title: str | None = None,
):
    """One heatmap per head table: layers (rows, layer 0 on top) x heads, diverging colours
    centred on 0 (V-SEAM scores are signed), a colour bar per panel (or one shared scale)."""
    if not tables:
        raise ValueError("give at least one head score table")
    for t in tables:
        if t.kind != "heads":
            raise ValueError(f"{t.path} is a {t.kind} table; `plot heads` needs head tables (`hones-nn heads`)")
    n = len(tables)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    if size is None:
        size = (3.6 * cols + 0.6, 3.4 * rows + 0.5)
    fig = new_figure(size, dpi)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    labels = _series_labels(tables)
    vmax_all = max(float(np.abs(t.matrix()).max()) for t in tables) or 1.0
    for ax, table, label in zip(axes, tables, labels):
        m = table.matrix()
        vmax = vmax_all if shared_scale else (float(np.abs(m).max()) or 1.0)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        layers, heads = m.shape
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        _int_ticks(ax, heads, "x", 9)
        _int_ticks(ax, layers, "y", 17)
        ax.set_title(label, fontsize="medium")
        if mark_top:
            k = min(mark_top, layers * heads)
            top = table.top(k)
            ax.scatter(
                [h for _, h in top],
                [layer for layer, _ in top],
                s=max(4, 160 / max(layers, heads)),
                facecolors="none",
                edgecolors="black",
                linewidths=0.8,
            )
            ax.set_title(f"{label}  (o: top {k} heads)", fontsize="medium")
        if not shared_scale:
            bar = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
            bar.set_label("head score $S_h$ (utility drop)", fontsize="small")
            bar.ax.tick_params(labelsize="x-small")
    for ax in axes[n:]:
        ax.set_visible(False)
    if shared_scale:
        bar = fig.colorbar(im, ax=list(axes[:n]), shrink=0.9, pad=0.02)
        bar.set_label("head score $S_h$ (utility drop)", fontsize="small")
    fig.suptitle(title or f"V-SEAM head importance ({_model_of(tables)})", fontsize="medium")
    return save(fig, out_prefix, formats)


# ------------------------------------------------------------------ Fig. 3: group drops


def _rows_frame(rows):
    out = []
    for r in rows:
        r = dict(r)
        for key in ("relative_drop", "random_drop", "masked", "base"):
            if r.get(key) is None:
                r[key] = float("nan")
        out.append(r)
    return out


def _short(name: str) -> str:
    return name.replace("Retrieval", "Ret").replace("Caption", "Cap").replace("-specific", "-only")


def plot_groups(
    rows,
    out_prefix,
    formats=("png", "svg"),
    mode: str = "summary",
    size=None,
    dpi: int = DEFAULT_DPI,
    title: str | None = None,
):
    """Relative drops of the cross-task groups (rows of ``overlap.parquet``).

    ``mode="summary"`` (Fig. 3): per task, its own task-specific group, the most damaging
    pair and triple containing the task, the general group, and the random control
    matched to the task's dominant group (mean of the draws), each bar labelled with its
    group. ``mode="full"``: one panel per task with every group (Tables 10/11 as bars),
    the matched random control as a black tick on each bar.
    """
    from hones_nn.evaluation.overlap import dominant_groups, order_tasks

    rows = _rows_frame(rows)
    if not rows:
        raise ValueError("the overlap file has no rows")
    tasks = list(order_tasks(r["task"] for r in rows))
    if mode == "summary":
        return _plot_groups_summary(
            rows, tasks, dominant_groups(rows, tasks), out_prefix, formats, size or (9.0, 4.8), dpi, title
        )
    if mode == "full":
        return _plot_groups_full(rows, tasks, out_prefix, formats, size, dpi, title)
    raise ValueError(f"mode={mode!r}; choose summary or full")


def _best(rows, task, n_tasks):
    cells = [
        r
        for r in rows
        if r["task"] == task
        and r["n_tasks"] == n_tasks
        and r["size"] > 0
        and task in r["tasks"].split("+")
        and math.isfinite(r["relative_drop"])
    ]
    return max(cells, key=lambda r: r["relative_drop"], default=None)


def _plot_groups_summary(rows, tasks, dominant, out_prefix, formats, size, dpi, title):
    from hones_nn.evaluation.overlap import display

    n_all = max(r["n_tasks"] for r in rows)
    slots = [
        ("Specific", "specific"),
        ("Pair", "pair"),
        ("Triple", "triple"),
        ("General", "general"),
        ("Random (matched)", "random"),
    ]
    if n_all < 4:
        slots = [s for s in slots if not (s[1] == "triple" and n_all < 3)]
    fig = new_figure(size, dpi)
    ax = fig.add_subplot()
    width = 0.8 / len(slots)
    x = np.arange(len(tasks))
    top = 0.0
    bottom = 0.0
    for j, (_label, kind) in enumerate(slots):
        for i, task in enumerate(tasks):
            cell = None
            if kind == "specific":
                cell = next((r for r in rows if r["task"] == task and r["group"] == task), None)
            elif kind == "pair":
                cell = _best(rows, task, 2)
            elif kind == "triple" and n_all >= 4:
                cell = _best(rows, task, 3)
            elif kind == "general":
                cell = next((r for r in rows if r["task"] == task and r["n_tasks"] == n_all), None)
            xpos = x[i] - 0.4 + width * (j + 0.5)
            if kind == "random":
                dom = dominant.get(task)
                value = dom["random_drop"] if dom and dom.get("random_drop") is not None else float("nan")
                note = f"k={dom['size']}" if dom else "n/a"
            elif cell is None or cell["size"] == 0:
                value, note = float("nan"), "empty"
            else:
                value = cell["relative_drop"]
                note = _short(cell["name"])
            value = float(value) if value is not None else float("nan")
            if math.isfinite(value):
                pct = 100 * value
                ax.bar(
                    xpos,
                    pct,
                    width=width * 0.92,
                    color=KIND_COLOURS[kind],
                    edgecolor="black",
                    linewidth=0.4,
                    hatch="//" if kind == "random" else None,
                )
                top, bottom = max(top, pct), min(bottom, pct)
                ax.text(xpos, max(pct, 0), f" {note}: {pct:.1f}", rotation=90, ha="center", va="bottom", fontsize=6.5)
            else:
                ax.text(xpos, 0, f" {note}", rotation=90, ha="center", va="bottom", fontsize=6.5, color="grey")
    from matplotlib.patches import Patch

    handles = [
        Patch(
            facecolor=KIND_COLOURS[kind],
            edgecolor="black",
            linewidth=0.4,
            hatch="//" if kind == "random" else None,
            label=label,
        )
        for label, kind in slots
    ]
    ax.axhline(0, color="black", linewidth=0.6)
    span = max(top - bottom, 1.0)
    ax.set_ylim(bottom - 0.05 * span if bottom < 0 else 0, top + 0.5 * span)
    ax.set_xticks(x)
    ax.set_xticklabels([display(t) for t in tasks])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("relative performance drop (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(handles=handles, ncol=len(slots), loc="upper center", fontsize="small", frameon=False)
    ax.set_title(
        title or "Masking cross-task neuron groups (best pair / triple containing the task)", fontsize="medium"
    )
    return save(fig, out_prefix, formats)


def _plot_groups_full(rows, tasks, out_prefix, formats, size, dpi, title):
    from hones_nn.evaluation.overlap import display

    order = list(dict.fromkeys(r["group"] for r in rows))
    names = {r["group"]: r["name"] for r in rows}
    kinds = {r["group"]: r["kind"] for r in rows}
    sizes_ = {r["group"]: r["size"] for r in rows}
    cols = min(len(tasks), 2)
    nrows = math.ceil(len(tasks) / cols)
    if size is None:
        size = (5.2 * cols, 0.32 * len(order) * nrows + 1.2)
    fig = new_figure(size, dpi)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).reshape(-1)
    y = np.arange(len(order))
    for ax, task in zip(axes, tasks):
        cells = {r["group"]: r for r in rows if r["task"] == task}
        for k, key in enumerate(order):
            r = cells.get(key)
            if r is None or r["status"] != "masked" or not math.isfinite(r["relative_drop"]):
                note = "empty" if r is not None and r["status"] == "empty" else "–"
                ax.text(0, k, f" {note}", va="center", ha="left", fontsize=7, color="grey")
                continue
            pct = 100 * r["relative_drop"]
            ax.barh(k, pct, color=KIND_COLOURS.get(kinds[key], "#999999"), edgecolor="black", linewidth=0.3)
            ax.text(
                pct,
                k,
                f" {pct:.1f} ",
                va="center",
                ha="left" if pct >= 0 else "right",
                fontsize=6.5,
            )
            if math.isfinite(r["random_drop"]):
                rnd = 100 * r["random_drop"]
                ax.plot([rnd, rnd], [k - 0.4, k + 0.4], color="black", linewidth=1.6)
        ax.axvline(0, color="black", linewidth=0.6)
        values = [
            100 * v
            for r in cells.values()
            for v in (r["relative_drop"], r["random_drop"])
            if r["status"] == "masked" and math.isfinite(v)
        ]
        lo, hi = min([0.0, *values]), max([0.0, *values])
        pad = max(hi - lo, 1.0) * 0.12  # room for the value labels
        ax.set_xlim(lo - pad if lo < 0 else 0, hi + pad + (6 * pad if hi - lo < 1e-9 else 0))
        ax.set_yticks(y)
        ax.set_yticklabels([f"{names[g]} ({sizes_[g]})" for g in order], fontsize=7)
        ax.set_ylim(len(order) - 0.5, -0.6)
        ax.set_xlabel("relative drop (%)")
        ax.set_title(f"evaluated on {display(task)}", fontsize="medium")
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=KIND_COLOURS[k], label=k) for k in ("specific", "pair", "triple", "general")]
    handles.append(Line2D([0], [0], color="black", linewidth=1.6, label="random (same size)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize="small", frameon=False)
    fig.suptitle(title or "Masking each cross-task neuron group (group size in brackets)", fontsize="medium")
    return save(fig, out_prefix, formats)


# ------------------------------------------------------------------ steering


NAME_KEYS = ("name", "condition", "method", "label")
METRIC_KEYS = ("metric", "test_metric", "value", "score")


def _record(entry: dict, where: str) -> dict:
    name = next((entry[k] for k in NAME_KEYS if k in entry), None)
    metric = next((entry[k] for k in METRIC_KEYS if k in entry), None)
    if name is None or metric is None:
        raise ValueError(
            f"{where}: each entry needs a name ({'/'.join(NAME_KEYS)}) and a metric "
            f"({'/'.join(METRIC_KEYS)}); got keys {sorted(entry)}"
        )
    err = entry.get("std", entry.get("sd"))
    ci = entry.get("ci")
    return {
        "name": str(name),
        "metric": float(metric),
        "std": None if err is None else float(err),
        "ci": None if ci is None else [float(ci[0]), float(ci[1])],
        "metric_name": entry.get("metric_name"),
    }


# the condition names of `hones-nn steer` reports, as the paper's Table 3 labels them
STEER_LABELS = {
    "base": "Base",
    "fixed-amp": "Fixed-Amp",
    "grid": "Grid-Search",
    "rand-neuron": "RandNeuron",
    "no-kl": "Ours w/o KL",
    "ours": "Ours",
    "zero-shot": "Ours (zero-shot)",
}


def _steer_report(data: dict) -> dict[str, list[dict]] | None:
    """The records of a `hones-nn steer` report.json / relearn-report.json; None for other JSON."""
    metric_name = data.get("metric_name")
    if isinstance(data.get("conditions"), list) and "task" in data:
        return {
            str(data["task"]): [
                {
                    "name": STEER_LABELS.get(c["condition"], c["condition"]),
                    "metric": float(c["metric"]),
                    "std": None,
                    "ci": None,
                    "metric_name": metric_name,
                }
                for c in data["conditions"]
            ]
        }
    if data.get("mode") == "relearn" and isinstance(data.get("summary"), list) and "task" in data:
        return {
            str(data["task"]): [
                {
                    "name": STEER_LABELS.get(c["condition"], c["condition"]),
                    "metric": float(c["metric_mean"]),
                    "std": float(c.get("metric_sd") or 0.0),
                    "ci": None,
                    "metric_name": metric_name,
                }
                for c in data["summary"]
            ]
        }
    return None


def read_steering_report(source) -> dict[str, list[dict]]:
    """{task: [{"name", "metric", "std", "ci", "metric_name"}, ...]} from steering JSON.

    Accepted (``source`` a path, the loaded JSON, or a list of paths merged task by task):

    * the ``report.json`` of ``hones-nn steer`` (one task: its ``conditions`` base,
      fixed-amp, grid, rand-neuron, no-kl, ours, labelled as the paper's Table 3), or its
      ``relearn-report.json`` (mean +- SD over the repeats, drawn as error bars);
    * a list of records ``{"task": "vqa", "name": "Ours", "metric": 0.673}``;
    * an object per task: ``{"vqa": [{"name": "Base", "metric": 0.652}, ...], "ocr": [...]}``;
    * either of those two under a key ``"tasks"`` or ``"results"`` of an object (other keys ignored);
    * a list of records without ``"task"`` (one task, plotted untitled).

    Aliases: the name may be given as name / condition / method / label, the metric as
    metric / test_metric / value / score. Optional per record: ``"std"`` (or ``"sd"``) or
    ``"ci"`` ([low, high]) for an error bar, ``"metric_name"`` for the y label. A condition
    named "base" (any case) is drawn grey, as the reference.
    """
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, (str, Path)) for s in source):
        merged: dict[str, list[dict]] = {}
        for one in source:
            for task, entries in read_steering_report(one).items():
                if task in merged:
                    raise ValueError(
                        f"task {task!r} appears in two steering reports ({one} and an earlier one); "
                        "plot them separately"
                    )
                merged[task] = entries
        return merged
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"steering report {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from None
        where = str(path)
    else:
        data, where = source, "steering report"
    if isinstance(data, dict):
        steer = _steer_report(data)
        if steer is not None:
            return steer
        for key in ("tasks", "results"):
            if key in data and isinstance(data[key], (list, dict)):
                data = data[key]
                break
    out: dict[str, list[dict]] = {}
    if isinstance(data, list):
        for k, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: entry {k} is not an object")
            out.setdefault(str(entry.get("task", "")), []).append(_record(entry, f"{where} entry {k}"))
    elif isinstance(data, dict):
        for task, entries in data.items():
            if not isinstance(entries, list):
                raise ValueError(
                    f"{where}: {task!r} should map to a list of {{'name', 'metric'}} objects "
                    "(or give the report.json of `hones-nn steer`)"
                )
            out[str(task)] = [_record(e, f"{where} {task!r} entry {k}") for k, e in enumerate(entries)]
    else:
        raise ValueError(f"{where}: expected a JSON list or object (see `hones-nn plot steering --help`)")
    if not out or not any(out.values()):
        raise ValueError(f"{where} holds no results")
    return out


def plot_steering(
    report, out_prefix, formats=("png", "svg"), size=None, dpi: int = DEFAULT_DPI, title: str | None = None
):
    """One panel per task, one bar per condition (own y range per task: metrics differ in scale)."""
    from hones_nn.evaluation.overlap import display, order_tasks

    data = read_steering_report(report)
    tasks = list(order_tasks(data))
    n = len(tasks)
    n_cond = max(len(v) for v in data.values())
    cols = min(n, 4 if n_cond <= 4 else 2)
    nrows = math.ceil(n / cols)
    if size is None:
        size = (max(3.2, 0.6 * n_cond + 1.4) * cols, 3.6 * nrows + 0.4)
    fig = new_figure(size, dpi)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).reshape(-1)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    # one colour per condition name, the same in every panel; "Base" grey
    conditions = [c for c in dict.fromkeys(e["name"] for t in tasks for e in data[t]) if c.lower() != "base"]
    colour_of = {c: palette[k % len(palette)] for k, c in enumerate(conditions)}
    for ax, task in zip(axes, tasks):
        entries = data[task]
        names = [e["name"] for e in entries]
        values = np.array([e["metric"] for e in entries])
        colours = ["#bdbdbd" if nm.lower() == "base" else colour_of[nm] for nm in names]
        # error bars only where a record has one: [2, n] (down, up) offsets
        err = np.zeros((2, len(entries)))
        has_err = np.zeros(len(entries), dtype=bool)
        for k, (v, e) in enumerate(zip(values, entries)):
            if e["ci"]:
                err[:, k] = [v - e["ci"][0], e["ci"][1] - v]
                has_err[k] = True
            elif e["std"] is not None:
                err[:, k] = e["std"]
                has_err[k] = True
        x = np.arange(len(entries))
        ax.bar(x, values, color=colours, edgecolor="black", linewidth=0.4)
        if has_err.any():
            ax.errorbar(
                x[has_err], values[has_err], yerr=err[:, has_err], fmt="none", ecolor="black", capsize=3, linewidth=1.0
            )
        lo, hi = float((values - err[0]).min()), float((values + err[1]).max())
        # a zoomed y axis: the differences are a few points of a metric near its base value (at
        # least one point of it, so equal bars do not blow rounding up into an offset axis)
        span = max(hi - lo, 1e-2 * max(abs(hi), 1.0))
        ax.set_ylim(max(0.0, lo - 0.6 * span) if lo >= 0 else lo - 0.6 * span, hi + 0.35 * span)
        ax.ticklabel_format(axis="y", useOffset=False)
        for xi, v, u in zip(x, values, values + err[1]):
            ax.text(xi, u + 0.02 * span, f"{v:.4f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels(
            names,
            rotation=35 if max(len(s) for s in names) > 6 else 0,
            ha="right" if max(len(s) for s in names) > 6 else "center",
            fontsize="small",
        )
        metric_name = next((e["metric_name"] for e in entries if e.get("metric_name")), None)
        ax.set_ylabel(f"test {metric_name}" if metric_name else "test metric")
        ax.set_title(display(task) if task else "", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title or "Neuron steering: test metric per condition (y axis zoomed per task)", fontsize="medium")
    return save(fig, out_prefix, formats)


def png_stats(path) -> dict:
    """Width, height and pixel standard deviation of a PNG (a check that a figure is not blank)."""
    _matplotlib()
    from matplotlib.image import imread

    img = imread(str(path))
    rgb = img[..., :3]
    colours = np.unique(rgb.reshape(-1, 3), axis=0).shape[0]
    return {"width": int(img.shape[1]), "height": int(img.shape[0]), "std": float(rgb.std()), "colours": int(colours)}


# ------------------------------------------------------------------ Fig. 7: head budget


def read_head_budgets(paths) -> list[dict]:
    """The curves of ``hones-nn head-budget`` (its TASK.head-budget.json files), checked."""
    if not paths:
        raise ValueError("give one or more TASK.head-budget.json files of `hones-nn head-budget`")
    curves = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
        missing = [k for k in ("task", "budgets", "relative_drops", "elbow") if k not in data]
        if not isinstance(data, dict) or missing:
            raise ValueError(f"{path}: not a `hones-nn head-budget` result (missing {', '.join(missing)})")
        curves.append({**data, "path": str(path)})
    return curves


def plot_head_budget(
    curves, out_prefix, formats=("png", "svg"), size=None, dpi: int = DEFAULT_DPI, title: str | None = None
):
    """Relative drop (%) against the head budget K, one line per task, its elbow circled and
    the unified budget (the largest elbow) dashed (the paper's Fig. 7)."""
    from hones_nn.methods.head_budget import unified_budget

    fig = new_figure(size or DEFAULT_SIZE, dpi)
    ax = fig.subplots()
    for curve in curves:
        budgets = np.array(curve["budgets"])
        drops = 100 * np.array(curve["relative_drops"], dtype=float)
        (line,) = ax.plot(budgets, drops, marker="o", markersize=3, label=_task_label(curve["task"]))
        if curve["elbow"] is not None:
            k = list(curve["budgets"]).index(curve["elbow"])
            ax.scatter([budgets[k]], [drops[k]], s=90, facecolors="none", edgecolors=line.get_color(), linewidths=1.5)
    unified = unified_budget([c["elbow"] for c in curves])
    if unified is not None:
        ax.axvline(unified, color="black", linestyle="--", linewidth=0.8, label=f"unified K_h = {unified}")
    ticks = sorted({int(b) for c in curves for b in c["budgets"]})
    if ticks[-1] / ticks[0] >= 16:  # budgets grow geometrically: a log axis, labelled with the budgets
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("head budget K (top V-SEAM heads replaced together)")
    ax.set_ylabel("relative drop of the task metric (%)")
    ax.legend(fontsize="small")
    models = sorted({str(c.get("model_id", "?")) for c in curves})
    fig.suptitle(title or f"Head budget ({', '.join(models)}); o: elbow", fontsize="medium")
    return save(fig, out_prefix, formats)
