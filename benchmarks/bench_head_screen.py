"""Attribution-patching head screen vs exact V-SEAM: rank correlation, top-K_h recall, time.

For each model and task, on the same discovery examples:

  exact      Runner.heads(task, utility=U)                           (all L*H + 1 conditions)
  screen     Runner.heads(task, utility=U, screen="atp", verify_top=0) (1 forward + 1 backward)
  screened   Runner.heads(task, utility=U, screen="atp", verify_top=N) for N = 4 K_h and 2 K_h

Quality of the raw screen (first-order estimates of every head) against the exact scores:
Spearman rank correlation over all heads, and top-K_h recall = |top-K_h(screen) & top-K_h(exact)| / K_h.
Quality of the screened table: top-K_h recall of its ranks (verified heads carry exact scores).
Times are wall seconds of each Runner call (same process, one after the other; the model
is loaded once), so screened / exact is a ratio within one run.

Models: the embedded tiny-llava (utility logprob on vqa, ocr, caption, retrieval; utility
metric, the paper's greedy-generation default, on vqa and ocr) and the four tiny random
configs (vqa, logprob; their greedy outputs are noise, so metric is 0 everywhere).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common as C
from hones_nn.utils.stats import spearman

NAME = "head_screen"


def parse_args():
    p = C.base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--examples", type=int, default=None, help="discovery examples (tiny-llava, generative tasks)")
    p.add_argument("--retrieval-examples", type=int, default=None, help="retrieval queries (50 candidates each)")
    p.add_argument("--random-examples", type=int, default=None, help="examples for the tiny random configs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--skip-metric", action="store_true", help="skip the greedy-generation (metric) runs")
    args = p.parse_args()
    q = args.quick
    args.examples = args.examples or (4 if q else 32)
    args.retrieval_examples = args.retrieval_examples or (1 if q else 4)
    args.random_examples = args.random_examples or (2 if q else 16)
    return args


def top_set(matrix, k):
    import numpy as np

    flat = np.asarray(matrix, dtype=float).reshape(-1)
    order = np.argsort(-flat, kind="stable")[:k]
    return set(order.tolist())


def main() -> int:
    args = parse_args()
    started, machine = C.begin(args)

    import numpy as np
    import torch

    from hones_nn.embedded.tiny_random import TINY_ARCHITECTURES, build_tiny_random
    from hones_nn.methods.base import default_top_heads
    from hones_nn.models.loading import load_model
    from hones_nn.runner.pipeline import Runner

    tmp = tempfile.TemporaryDirectory(prefix="hones-bench-screen-")
    cases = []
    embedded = load_model(args.model)
    tasks = [("vqa", "logprob"), ("ocr", "logprob"), ("caption", "logprob"), ("retrieval", "logprob")]
    if not args.skip_metric:
        tasks += [("vqa", "metric"), ("ocr", "metric")]
    for task, utility in tasks:
        n = args.retrieval_examples if task == "retrieval" else args.examples
        cases.append((args.model, embedded, task, utility, n))
    for arch in TINY_ARCHITECTURES:
        cases.append((f"tiny-random-{arch}", build_tiny_random(arch), "vqa", "logprob", args.random_examples))
    C.freeze_heap()

    results, summary = [], []
    print(f"[head_screen] threads={torch.get_num_threads()} batch_size={args.batch_size}")
    for name, loaded, task, utility, n in cases:
        sizes = loaded.adapter.sizes(loaded.model)
        k = default_top_heads(sizes.num_layers, sizes.num_heads)
        out = Path(tmp.name) / f"{name}-{task}-{utility}"
        runner = Runner(loaded, out_dir=out, batch_size=args.batch_size, progress=False, data=args.data, limit=n)
        timed = {}
        t0 = time.perf_counter()
        exact = runner.heads(task, utility=utility, out=out / "exact.parquet")
        timed["exact"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        screen_only = runner.heads(task, utility=utility, screen="atp", verify_top=0, out=out / "screen.parquet")
        timed["screen"] = time.perf_counter() - t0
        screened = {}
        for mult in (4, 2):
            nv = min(mult * k, sizes.num_layers * sizes.num_heads)
            t0 = time.perf_counter()
            screened[mult] = runner.heads(
                task, utility=utility, screen="atp", verify_top=nv, out=out / f"screened{mult}.parquet"
            )
            timed[f"screened_{mult}k"] = time.perf_counter() - t0
        ex = exact.matrix()
        est = np.asarray(screen_only.meta["screen_scores"])
        exact_top = top_set(ex, k)
        row = {
            "model": name,
            "task": task,
            "utility": utility,
            "examples": exact.meta["n_examples"],
            "heads": sizes.num_layers * sizes.num_heads,
            "top_heads": k,
            "spearman_screen_vs_exact": spearman(est.reshape(-1), ex.reshape(-1)),
            "recall_at_k_screen": len(top_set(est, k) & exact_top) / k,
            "seconds": timed,
            "screened_over_exact_time": {m: C.ratio(timed[f"screened_{m}k"], timed["exact"]) for m in (4, 2)},
            "screen_over_exact_time": C.ratio(timed["screen"], timed["exact"]),
        }
        for mult, table in screened.items():
            top = {layer * sizes.num_heads + h for layer, h in table.top(k)}
            row[f"recall_at_k_screened_{mult}k"] = len(top & exact_top) / k
            row[f"verified_{mult}k"] = len(table.meta["verified_heads"])
            row[f"exact_top_k_within_verified_{mult}k"] = (
                len(exact_top & {layer * sizes.num_heads + h for layer, h in table.meta["verified_heads"]}) / k
            )
        results.append(row)
        print(
            f"  {name:<24} {task:<9} {utility:<7} n={row['examples']:<3} "
            f"spearman {row['spearman_screen_vs_exact']:+.3f}"
            f"  recall@{k} screen {row['recall_at_k_screen']:.2f}, screened(4K) {row['recall_at_k_screened_4k']:.2f},"
            f" screened(2K) {row['recall_at_k_screened_2k']:.2f}; time exact {timed['exact']:.1f}s, screen "
            f"{timed['screen']:.1f}s, screened 4K {timed['screened_4k']:.1f}s, 2K {timed['screened_2k']:.1f}s",
            flush=True,
        )
        summary.append(
            {
                "what": f"{name} {task} {utility}: screened(2K_h) / exact time",
                "a_ms": C.ms(timed["screened_2k"]),
                "b_ms": C.ms(timed["exact"]),
                "ratio": row["screened_over_exact_time"][2],
                "note": f"spearman {row['spearman_screen_vs_exact']:+.2f}, recall@K_h screen "
                f"{row['recall_at_k_screen']:.2f}, screened {row['recall_at_k_screened_2k']:.2f}",
            }
        )
    settings = {
        "examples": args.examples,
        "retrieval_examples": args.retrieval_examples,
        "random_examples": args.random_examples,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "data": args.data or "synthetic (default)",
        "task": "several",
    }
    notes = [
        "screen utility: teacher-forced log-prob of the gold answer (retrieval: Yes-No logit-diff margin), "
        "whatever --utility the exact scores use",
        "recall@K_h = |top-K_h(screen) & top-K_h(exact)| / K_h; K_h = default_top_heads (a quarter of the "
        "heads on tiny models)",
    ]
    path = C.write_result(
        NAME, args, settings, {"cases": results}, summary, machine, started, notes, C.model_info(embedded)
    )
    print(f"\nwrote {path} ({time.perf_counter() - started:.1f} s)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
