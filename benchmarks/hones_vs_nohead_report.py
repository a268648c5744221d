"""Markdown table of benchmarks/hones_vs_nohead.sh's outputs: HONES's top 1% beside NoHead's.

python -m benchmarks.hones_vs_nohead_report HONES_TABLES_DIR NOHEAD_DIR > RESULTS.md

NoHead's score of a neuron is its mean contribution E_x c = E_x z(T) <W_down[:, i], u_y> over
the same discovery items, so it also tells the sign of what each HONES neuron writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

TASKS = ("vqa", "ocr", "caption", "retrieval")


def _scores(path: Path) -> dict[tuple[int, int], tuple[float, int]]:
    table = pq.read_table(path, columns=["layer", "neuron", "score", "rank"]).to_pydict()
    columns = (table["layer"], table["neuron"], table["score"], table["rank"])
    return {(layer, neuron): (score, rank) for layer, neuron, score, rank in zip(*columns, strict=True)}


def row(tables: Path, out: Path, task: str) -> str:
    hones = _scores(tables / f"{task}.hones.parquet")
    nohead = _scores(out / f"{task}.hones-nohead.parquet")
    k = round(0.01 * len(hones))
    top = [key for key, (_, rank) in hones.items() if rank <= k]
    nohead_top = [key for key, (_, rank) in nohead.items() if rank <= k]
    mean_c = [nohead[key][0] for key in top]
    masked = json.loads((tables / f"{task}.masking.json").read_text())
    masked_nohead = json.loads((out / f"{task}.nohead.masking.json").read_text())
    control = masked["random"]
    cells = [
        task,
        str(masked["n"]),
        f"{sum(c < 0 for c in mean_c)}/{k}",
        f"{sum(mean_c):+.1f}",
        f"{sum(nohead[key][0] for key in nohead_top):+.1f}",
        f"{len(set(top) & set(nohead_top))}/{k}",
        f"{100 * masked['relative_drop']:.2f}%",
        f"{100 * masked_nohead['relative_drop']:.2f}%",
        f"{100 * control['mean_relative_drop']:.2f}% ± {100 * control['std_relative_drop']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main(tables: Path, out: Path) -> None:
    print(
        "| task | test n | HONES top 1% with E_x c < 0 | HONES top 1%: sum of E_x c | NoHead top 1%: sum of E_x c "
        "| shared | HONES drop | NoHead drop | random drop (mean ± std) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for task in TASKS:
        print(row(tables, out, task))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
