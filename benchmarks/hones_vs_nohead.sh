#!/usr/bin/env bash
# HONES against its NoHead ablation (rank by the mean contribution E_x c, no heads) on the
# discovery and test items of benchmarks/hones_masking.sh: which of HONES's top 1% write
# against the target on average (E_x c < 0, so masking them helps it), how much the two top
# 1% sets share, and what masking NoHead's top 1% costs beside HONES's.
#   bash benchmarks/hones_vs_nohead.sh [HONES_TABLES_DIR] [OUT_DIR]   (tiny-llava-16k-sparse, the benchmarks' model)
#   MODEL=tiny-llava-16k bash benchmarks/hones_vs_nohead.sh TABLES_DIR OUT_DIR  (the tables' model)
# HONES_TABLES_DIR: the output of benchmarks/hones_masking.sh ({task}.hones.parquet and
# {task}.masking.json). Each step is skipped when its output exists (resumable).
set -euo pipefail
tables="${1:-benchmarks/results/hones_masking_16k_sparse}"
out="${2:-benchmarks/results/hones_vs_nohead_16k_sparse}"
mkdir -p "$out"
model=(--model "${MODEL:-tiny-llava-16k-sparse}")
for task in ${TASKS:-vqa ocr caption retrieval}; do
  limit=(--limit 160); [ "$task" = retrieval ] && limit=(--limit 40)
  test_limit=(); [ "$task" = retrieval ] && test_limit=(--limit 100)
  [ -s "$out/$task.nohead.rank.json" ] || hones-nn rank --task "$task" "${model[@]}" --method hones-nohead \
    --out-dir "$out" --batch-size 64 "${limit[@]}" --json > "$out/$task.nohead.rank.json"
  [ -s "$out/$task.nohead.masking.json" ] || hones-nn evaluate --task "$task" "${model[@]}" \
    --mask "$out/$task.hones-nohead.parquet" --batch-size 64 "${test_limit[@]}" --json > "$out/$task.nohead.masking.json"
done
python -m benchmarks.hones_vs_nohead_report "$tables" "$out" > "$out/RESULTS.md"
cat "$out/RESULTS.md"
