#!/usr/bin/env bash
# Run the three benchmarks with their default settings, then write benchmarks/RESULTS.md.
#
#   bash benchmarks/run_all.sh                 # defaults (1 torch thread; each < 2 min on a quiet machine)
#   bash benchmarks/run_all.sh --threads 4     # extra arguments go to every benchmark
#   bash benchmarks/run_all.sh --quick         # smoke test
#
# Results: benchmarks/results/{trace_overhead,head_batching,hones_attribution}.json
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

for bench in trace_overhead head_batching hones_attribution; do
    echo "=== ${bench} ==="
    "${PYTHON}" "benchmarks/bench_${bench}.py" "$@"
    echo
done
"${PYTHON}" benchmarks/report.py
