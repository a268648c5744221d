#!/usr/bin/env bash
# HONES top-1% masking vs a random control (5 seeds) on the synthetic test split, all four
# tasks, on the embedded tiny-llava-16k-sparse (the benchmarks' model; MODEL= for another).
#   bash benchmarks/hones_masking.sh [OUT_DIR]
#   MODEL=tiny-llava bash benchmarks/hones_masking.sh benchmarks/results/hones_masking  (any model name or folder)
#   TOP_HEADS=K HEADS_DIR=DIR ...: K_h = K (e.g. from benchmarks/head_budget.sh), the V-SEAM
#   tables of DIR reused (same model, items and utility) instead of computed again
# (a train-embedded model's own benchmark, e.g. synthetic-v2 for llava-16k, is the default data)
# Localization (V-SEAM heads with the generation metric, then HONES) runs on the first 160
# discovery images (40 for retrieval, whose every query is 50 candidate forwards under each
# of the 33 conditions) to fit a 2-core CPU; masking uses the whole test split (300 images),
# except retrieval: its first 100 test queries (7 evaluations x 100 x 50 candidates).
#   LOC_LIMIT=80 LOC_RLIMIT=20 TEST_LIMIT=150 TEST_RLIMIT=50 ...: smaller samples (half size)
set -euo pipefail
out="${1:-benchmarks/results/hones_masking_16k_sparse}"
mkdir -p "$out"
model=(--model "${MODEL:-tiny-llava-16k-sparse}")
top_heads=(); [ -n "${TOP_HEADS:-}" ] && top_heads=(--top-heads "$TOP_HEADS")
for task in ${TASKS:-vqa ocr caption retrieval}; do
  limit=(--limit ${LOC_LIMIT:-160}); [ "$task" = retrieval ] && limit=(--limit ${LOC_RLIMIT:-40})
  test_limit=(); [ -n "${TEST_LIMIT:-}" ] && test_limit=(--limit "$TEST_LIMIT")
  [ "$task" = retrieval ] && test_limit=(--limit ${TEST_RLIMIT:-100})
  heads=(); [ -n "${HEADS_DIR:-}" ] && heads=(--heads "$HEADS_DIR/$task.heads.parquet")
  start=$(date +%s)
  # a finished ranking is kept (rerunning the script resumes where it stopped)
  [ -s "$out/$task.rank.json" ] && [ -f "$out/$task.hones.parquet" ] || \
    hones-nn rank --task "$task" "${model[@]}" --method hones "${top_heads[@]}" "${heads[@]}" --out-dir "$out" --batch-size 64 "${limit[@]}" --json > "$out/$task.rank.json"
  [ -s "$out/$task.masking.json" ] && continue
  hones-nn evaluate --task "$task" "${model[@]}" --mask "$out/$task.hones.parquet" --random-control --seeds 5 --batch-size 64 "${test_limit[@]}" \
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
