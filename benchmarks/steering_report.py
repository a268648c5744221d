"""Markdown tables of benchmarks/steering_overlap.sh's outputs (steering, groups, lens).

python -m benchmarks.steering_report benchmarks/results/steering_overlap > RESULTS.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = ("vqa", "ocr", "caption", "retrieval")
ORDER = ("base", "fixed-amp", "grid", "rand-neuron", "no-kl", "ours")


def steering(out: Path, folder: str = "steer", what: str = "the top 1%") -> list[str]:
    """One table per steering run of the script: `steer` (each task's top 1%) or
    `steer-dominant` (each task's dominant shared group, the paper's choice)."""
    reports = [(task, out / folder / task / "report.json") for task in TASKS]
    reports = [(task, path) for task, path in reports if path.exists()]
    if not reports:
        return []
    lines = [
        "",
        f"### Steering {what} (test split; scales learned on dev with the reference hyper-parameters)",
        "",
        "| task | metric | neurons | test n | " + " | ".join(ORDER) + " | ours: max abs(delta), optimizer steps |",
        "|---|---|---|---|" + "---|" * (len(ORDER) + 1),
    ]
    boot, side = [], []
    for task, path in reports:
        r = json.loads(path.read_text())
        metric = {c["condition"]: c["metric"] for c in r["conditions"]}
        trained = r["training"].get("ours", {})
        chosen = r.get("neurons", {})
        neurons = f"{chosen['group']} ({chosen['k']})" if "group" in chosen else str(chosen.get("k", "-"))
        lines.append(
            f"| {task} | {r['metric_name']} | {neurons} | {r['test']['n']} | "
            + " | ".join(f"{metric[c]:.4f}" if c in metric else "-" for c in ORDER)
            + f" | {trained.get('delta_abs_max', float('nan')):.4f}, {trained.get('steps')} |"
        )
        for b in r["bootstrap"]["comparisons"]:
            boot.append(
                f"| {task} | {b['baseline']} | {b['observed']:+.4f} | [{b['ci_low']:+.4f}, {b['ci_high']:+.4f}] | "
                f"{b['p_one_sided']:.3f} | {b['stars']} |"
            )
        for o in r["other_tasks"]:
            if "error" in o:
                side.append(f"| {task} | {o['task']} | error: {o['error']} | | |")
            else:
                side.append(
                    f"| {task} | {o['task']} ({o['metric_name']}, n={o['n']}) | {o['base']:.4f} | "
                    f"{o['steered']:.4f} | {o['change']:+.4f} |"
                )
    lines += [
        "",
        "Paired bootstrap (1,000 resamples) of ours minus each condition, p = P(gain <= 0):",
        "",
        "| task | vs | gain | 95% CI | p | |",
        "|---|---|---|---|---|---|",
        *boot,
    ]
    lines += [
        "",
        "The other tasks under each task's learned scales:",
        "",
        "| steered for | other task | base | steered | change |",
        "|---|---|---|---|---|",
        *side,
    ]
    return lines


def groups(out: Path) -> list[str]:
    path = out / "overlap" / "overlap.json"
    if not path.exists():
        return []
    from hones_nn.evaluation.overlap import paper_table

    doc = json.loads(path.read_text())
    rows = doc["results"]
    table = paper_table(rows, list(TASKS))
    cols = list(table[0].keys())
    lines = [
        "",
        "### Cross-task groups of the four HONES top-1% sets (relative drop %, test split)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table]
    lines += [
        "",
        "Dominant salient group per task (largest drop among the shared groups holding the task), "
        "with its matched random control:",
        "",
    ]
    for task, d in doc["dominant"].items():
        if d:
            rnd = d.get("random_drop")
            lines.append(
                f"- {task}: {d['name']} ({d['size']} neurons): drop {100 * d['relative_drop']:.2f}%"
                + (f", random same size {100 * rnd:.2f}%" if rnd is not None else "")
            )
        else:
            lines.append(f"- {task}: no shared group holds this task")
    return lines


def variant(out: Path) -> list[str]:
    """The script's sensitivity run (VQA, 10 epochs at lr 5e-3), when it ran."""
    path = out / "variant" / "vqa.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    metric = {c["condition"]: c["metric"] for c in r["conditions"]}
    trained = r["training"].get("ours", {})
    hp = r["hyperparameters"]
    boot = {b["baseline"]: b for b in r["bootstrap"]["comparisons"]}
    return [
        "",
        f"### Sensitivity (not the default): VQA scales trained {hp['epochs']} epochs at lr {hp['lr']:g}",
        "",
        "| task | test n | " + " | ".join(ORDER) + " | ours: max abs(delta), mean delta |",
        "|---|---|" + "---|" * (len(ORDER) + 1),
        f"| vqa | {r['test']['n']} | "
        + " | ".join(f"{metric[c]:.4f}" if c in metric else "-" for c in ORDER)
        + f" | {trained.get('delta_abs_max', float('nan')):.4f}, {trained.get('delta_mean', float('nan')):+.4f} |",
        "",
        "Ours minus each condition (paired bootstrap, p = P(gain <= 0)): "
        + "; ".join(
            f"{name} {b['observed']:+.4f} (p {b['p_one_sided']:.3f}, {b['stars']})" for name, b in boot.items()
        ),
    ]


def main(out: str) -> None:
    root = Path(out)
    sections = steering(root) + variant(root) + groups(root)
    sections += steering(root, "steer-dominant", "each task's dominant shared group")
    print("\n".join(sections).lstrip("\n"))  # each section opens with a blank line


if __name__ == "__main__":
    main(sys.argv[1])
