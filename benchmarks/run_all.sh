#!/usr/bin/env bash
# Run the benchmarks with their default settings, then write benchmarks/RESULTS.md and the
# README's generated performance block.
#
#   bash benchmarks/run_all.sh                 # defaults (1 torch thread; ~15 min in all on 2 cores)
#   bash benchmarks/run_all.sh --threads 4     # extra arguments go to every benchmark
#   bash benchmarks/run_all.sh --quick         # smoke test
#
# Results: benchmarks/results/{reference_loop,real_size,scaling,throughput,head_screen,trace_overhead,head_batching,hones_attribution}.json
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
for bench in reference_loop real_size scaling throughput head_screen trace_overhead head_batching hones_attribution; do
    echo "=== ${bench} ==="
    "${PYTHON}" -m "benchmarks.bench_${bench}" "$@"
    echo
done
"${PYTHON}" -m benchmarks.report
