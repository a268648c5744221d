#!/usr/bin/env bash
# HONES appendix D.2: the head budget K_h from the elbow of each task's curve (relative drop
# with the top K V-SEAM heads replaced together), on the same discovery items as
# hones_masking.sh (160 images; 40 retrieval queries), then the curves drawn and the unified
# budget (the largest elbow) printed.
#   bash benchmarks/head_budget.sh [OUT_DIR] [HEADS_DIR]   (tiny-llava-16k-sparse, the benchmarks' model)
#   MODEL=tiny-llava-16k bash benchmarks/head_budget.sh OUT_DIR benchmarks/results/hones_masking_16k
# HEADS_DIR: where hones_masking.sh wrote TASK.heads.parquet (reused; else computed in OUT_DIR).
set -euo pipefail
out="${1:-benchmarks/results/head_budget_16k_sparse}"
heads_dir="${2:-}"
mkdir -p "$out"
model=(--model "${MODEL:-tiny-llava-16k-sparse}")
for task in ${TASKS:-vqa ocr caption retrieval}; do
  limit=(--limit 160); [ "$task" = retrieval ] && limit=(--limit 40)
  heads=(); [ -n "$heads_dir" ] && heads=(--heads "$heads_dir/$task.heads.parquet")
  [ -s "$out/$task.head-budget.json" ] && continue
  start=$(date +%s)
  hones-nn head-budget --task "$task" "${model[@]}" "${heads[@]}" "${limit[@]}" --batch-size 64 --out-dir "$out" \
    --json > "$out/$task.head-budget.stdout.json"
  rm "$out/$task.head-budget.stdout.json"
  echo "$task: $(( $(date +%s) - start )) s"
done
hones-nn plot head-budget "$out"/{vqa,ocr,caption,retrieval}.head-budget.json --out "$out/head_budget" | tee "$out/RESULTS.txt"
