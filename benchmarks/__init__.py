"""The benchmarks, run as modules from the repository root: ``python -m benchmarks.bench_throughput``
(``bash benchmarks/run_all.sh`` runs them all, then ``python -m benchmarks.report``)."""
