"""Cost per instance as the work grows: discovery items, retrieval candidates, heads.

Each axis runs the same hones-nn call at growing sizes, everything else fixed, and
reports the time per unit (per item, per candidate, per head condition) with its ratio
to the smallest size's. A flat line (ratio about 1, or below as batches fill) means the
cost grows linearly with the work, with no per-run overhead that a large run repeats.

  items       V-SEAM over every head (the paper's metric utility, VQA) on n discovery
              items, per item; HONES's neuron stage on the same items, per (item, pass)
              row (its passes, 1 + the heads with S_h > 0, depend on the items)
  candidates  retrieval evaluation (shared prefix) of one query with its first c
              candidates, against the plain path (a whole prompt per candidate)
  heads       V-SEAM's teacher-forced sweep of 4 VQA items under the clean run and the
              first h heads
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from benchmarks import _common as C

NAME = "scaling"


def parse_args():
    p = C.base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--items", default="1,2,4,8,16", help="discovery item counts (items axis)")
    p.add_argument("--candidates", default="5,10,25,50", help="candidates per query (candidates axis)")
    p.add_argument("--heads", default="1,8,16,32", help="head conditions (heads axis)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward")
    args = p.parse_args()
    if args.quick:
        args.items, args.candidates, args.heads = "1,2", "5,10", "1,8"
    return args


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    args = parse_args()
    started, machine = C.begin(args)
    import numpy as np

    from hones_nn.engine.core import Engine
    from hones_nn.engine.sweep import all_heads, sweep
    from hones_nn.engine.tables import read_table, write_head_table
    from hones_nn.methods.base import default_top_heads
    from hones_nn.methods.hones import Hones
    from hones_nn.runner.pipeline import Runner
    from hones_nn.tasks.task_data import prepare_task

    loaded, model, adapter, sizes = C.load(args.model, args.device)
    L, H = sizes.num_layers, sizes.num_heads
    heads_all = all_heads(L, H)
    k = default_top_heads(L, H)
    tmp = Path(tempfile.mkdtemp(prefix="hones-scaling-"))
    results: dict = {"items": [], "candidates": [], "heads": []}
    rows = []

    def record(axis, size, unit, seconds, per, base, extra=None):
        entry = {"size": size, "seconds": seconds, "per_unit_s": per, "ratio_to_smallest": per / base, **(extra or {})}
        results[axis].append(entry)
        rows.append([axis, size, unit, f"{seconds:.2f}", f"{per * 1000:.1f}", f"{per / base:.2f}"])
        print(rows[-1], flush=True)

    # ---- items: V-SEAM (metric) and HONES neurons per discovery item
    base_h = base_n = None
    for n in _sizes(args.items):
        runner = Runner(
            loaded, out_dir=tmp / f"items{n}", batch_size=args.batch_size, progress=False, split="discovery", limit=n
        )
        ctx = runner.context("vqa", {})
        ctx.checkpoint_dir = None
        ids = list(range(ctx.td.n))
        t_h, u = C.timed(lambda ctx=ctx, ids=ids: sweep(ctx.engine, ctx.td, ids, [None, *heads_all], "metric", 64))
        table = write_head_table(
            tmp / f"items{n}.heads.parquet",
            (u[:, :1] - u[:, 1:]).mean(0).reshape(L, H),
            float(u[:, 0].mean()),
            u[:, 1:].mean(0).reshape(L, H),
            {"method": "vseam", "task": "vqa", "model_id": loaded.model_id, "weights_hash": loaded.weights_hash},
        )
        ctx.options = {"top_heads": k, "heads_table": read_table(table)}
        method = Hones()
        plan = method.plan(ctx)
        t_n, _ = C.timed(lambda ctx=ctx, ids=ids, plan=plan: method.reduce(ctx, [method.shard(ctx, ids, plan)], plan))
        # HONES runs a pass per head with S_h > 0, a number that depends on the items: per (item, pass) row
        rows_n = n * len(plan.state["passes"])
        base_h = base_h or t_h / n
        base_n = base_n or t_n / rows_n
        record("items", n, "item (V-SEAM, all heads)", t_h, t_h / n, base_h)
        record(
            "items",
            n,
            "(item, pass) row (HONES neurons)",
            t_n,
            t_n / rows_n,
            base_n,
            {"stage": "hones", "passes_per_item": len(plan.state["passes"])},
        )

    # ---- candidates: retrieval evaluation of one query, shared prefix vs plain
    td = prepare_task(loaded, "retrieval", split="discovery", limit=1)
    item = td.items[0]
    engine = Engine(loaded)
    base_s = base_p = None
    for c in _sizes(args.candidates):
        short = [dataclasses.replace(item, prompts=item.prompts[:c])]
        t_s, shared = C.timed(
            lambda short=short: engine.run_task(td.task, short, td.images, batch_size=args.batch_size, progress=False)
        )
        t_p, plain = C.timed(
            lambda short=short: engine.run_task(
                td.task, short, td.images, batch_size=args.batch_size, progress=False, share_prefix=False
            )
        )
        diff = float(np.abs(np.array(shared[0]) - np.array(plain[0])).max())
        base_s = base_s or t_s / c
        base_p = base_p or t_p / c
        record("candidates", c, "candidate (shared prefix)", t_s, t_s / c, base_s, {"max_abs_diff": diff})
        record(
            "candidates",
            c,
            "candidate (plain)",
            t_p,
            t_p / c,
            base_p,
            {"stage": "plain", "plain_over_shared": t_p / t_s},
        )

    # ---- heads: teacher-forced sweep of 4 items under clean + h heads
    runner = Runner(
        loaded, out_dir=tmp / "heads", batch_size=args.batch_size, progress=False, split="discovery", limit=4
    )
    ctx = runner.context("vqa", {})
    ids = list(range(ctx.td.n))
    base = None
    for h in _sizes(args.heads):
        conds = [None, *heads_all[:: max(1, len(heads_all) // h)][:h]]
        t, _ = C.timed(lambda conds=conds: sweep(ctx.engine, ctx.td, ids, conds, "logprob", args.batch_size))
        per = t / (len(ids) * len(conds))
        base = base or per
        record("heads", h, "(item, condition) row, teacher-forced", t, per, base)

    C.print_table(rows, ["axis", "size", "unit", "seconds", "ms / unit", "vs smallest"])
    path = C.write_result(
        NAME,
        args,
        {"items": args.items, "candidates": args.candidates, "heads": args.heads, "batch_size": args.batch_size},
        results,
        [
            {"what": f"{axis} {e['size']}{' ' + e['stage'] if 'stage' in e else ''}", "ratio": e["ratio_to_smallest"]}
            for axis, entries in results.items()
            for e in entries
        ],
        machine,
        started,
        notes=["ratio = time per unit / time per unit at the smallest size (flat = about 1)"],
        model=C.model_info(loaded),
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
