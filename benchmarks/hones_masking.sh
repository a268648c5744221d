#!/usr/bin/env bash
# HONES top-1% masking vs a random control (5 seeds) on the synthetic test split, all four
# tasks, on the embedded tiny-llava: the issue-3 acceptance figures.
#   bash benchmarks/hones_masking.sh [OUT_DIR]
# Retrieval's V-SEAM runs on the first 200 discovery queries (each query is 50 candidate
# forwards under each of the 33 conditions); the other tasks use the whole discovery split.
set -euo pipefail
out="${1:-benchmarks/results/hones_masking}"
mkdir -p "$out"
for task in vqa ocr caption retrieval; do
  limit=(); [ "$task" = retrieval ] && limit=(--limit 200)
  start=$(date +%s)
  hones-nn rank --task "$task" --method hones --out-dir "$out" --batch-size 64 "${limit[@]}" --json > "$out/$task.rank.json"
  hones-nn evaluate --task "$task" --mask "$out/$task.hones.parquet" --random-control --seeds 5 --batch-size 64 \
    --json > "$out/$task.masking.json"
  echo "$task: $(( $(date +%s) - start )) s"
done
python - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for task in ("vqa", "ocr", "caption", "retrieval"):
    m = json.loads((out / f"{task}.masking.json").read_text())
    r = m["random"]
    rows.append(f"| {task} | {m['metric_name']} | {m['n']} | {m['base_metric']:.4f} | {m['masked_metric']:.4f} | "
                f"{100 * m['relative_drop']:.2f}% | {100 * r['mean_relative_drop']:.2f}% ± {100 * r['std_relative_drop']:.2f} |")
table = ("| task | metric | test n | base | HONES top-1% masked | HONES drop | random drop (5 seeds, mean ± std) |\n"
         "|---|---|---|---|---|---|---|\n" + "\n".join(rows))
(out / "RESULTS.md").write_text(table + "\n")
print(table)
PY
