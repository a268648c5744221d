"""HONES attribution vs the same number of plain forwards on the same inputs.

HONES needs (1 + K_h) forwards per example (clean + each of the top K_h heads replaced),
reading z(T) of every layer and projecting it on W_down^T u_y. This benchmark times, on
the same rows (example, condition) batched --batch-size at a time:

  hones        hones_nn.methods.hones.contributions (nnsight trace per batch; encodes each batch)
  plain_enc    encode_prompts + model(**inputs) per batch, no intervention, nothing read  (baseline)
  plain_fwd    model(**inputs) only, batches encoded beforehand
  hooks        encode_prompts + model(**inputs) with torch hooks doing the same head
               replacement and the same z(T) projection (checks hones' numbers: allclose)
  rank         Runner.rank(task, "hones", heads=<table>) end to end (data preparation,
               target directions, contributions, shards, Parquet table)

The head table is given: --heads-table PATH, or (default) a synthetic table of seeded
random scores written for this model and task, so no V-SEAM run is needed.
Reported: ratio = time / plain_enc time (and / plain_fwd).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _common as C

NAME = "hones_attribution"


def parse_args():
    p = C.base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--examples", type=int, default=None, help="discovery examples attributed")
    p.add_argument("--top-heads", type=int, default=None, help="K_h (default: the Runner's default for the model)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward (the Runner's default is 32)")
    p.add_argument(
        "--heads-table", default=None, help="a V-SEAM head table (Parquet) to use instead of a synthetic one"
    )
    p.add_argument("--skip-rank", action="store_true", help="do not time Runner.rank end to end")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the hooks cross-check")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance of the hooks cross-check")
    args = p.parse_args()
    q = args.quick
    args.examples = args.examples or (8 if q else 48)
    args.repeats = args.repeats or (1 if q else 3)
    args.warmup = args.warmup if args.warmup is not None else 1
    return args


def main() -> int:
    args = parse_args()
    started, machine = C.begin(args)

    import numpy as np
    import torch

    from benchmarks._hooks import read_down_proj_inputs, row_heads_hooks
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.engine.tables import read_table, write_head_table
    from hones_nn.methods.base import default_top_heads
    from hones_nn.methods.hones import contributions, select_heads, target_directions, target_tokens
    from hones_nn.runner.pipeline import Runner
    from hones_nn.tasks.targets import caption_idf

    loaded, model, adapter, sizes = C.load(args.model, args.device)
    k = args.top_heads or default_top_heads(sizes.num_layers, sizes.num_heads)
    tmp = tempfile.TemporaryDirectory(prefix="hones-bench-")
    tmpdir = Path(tmp.name)

    if args.heads_table:
        table = read_table(args.heads_table)
        table_source = str(args.heads_table)
    else:
        rng = np.random.default_rng(0)
        scores = rng.normal(size=(sizes.num_layers, sizes.num_heads))
        path = write_head_table(
            tmpdir / "heads.parquet",
            scores,
            0.0,
            np.zeros_like(scores),
            {
                "model_id": loaded.model_id,
                "weights_hash": loaded.weights_hash,
                "task": args.task,
                "method": "synthetic-benchmark",
            },
        )
        table = read_table(path)
        table_source = "synthetic: N(0, 1) scores, numpy seed 0"

    runner = Runner(
        loaded,
        out_dir=tmpdir / "runs",
        batch_size=args.batch_size,
        progress=False,
        data=args.data,
        split="discovery",
        limit=args.examples,
    )
    ctx = runner.context(args.task, {"top_heads": k, "heads_table": table})
    ctx.checkpoint_dir = None  # contributions() alone: no shard files
    heads, weights = select_heads(ctx, table, k, random_heads=False)
    conditions = [None] + list(heads)
    idf = caption_idf(ctx.engine.tokenizer, ctx.td.items) if ctx.td.task.name == "caption" else None
    u = target_directions(ctx, ctx.td.items, idf)
    targets = target_tokens(ctx, ctx.td.items, idf)
    ids = list(range(ctx.td.n))
    engine = ctx.engine
    rows = [(i, c) for i in ids for c in range(len(conditions))]
    chunks = [rows[s : s + args.batch_size] for s in range(0, len(rows), args.batch_size)]
    proj = torch.stack(
        [u @ adapter.down_proj(model, layer).weight.detach().float().cpu() for layer in range(sizes.num_layers)]
    )  # [L, n, d_ff]

    def encode_chunk(chunk):
        prompts = [ctx.td.task.attribution_prompt(ctx.td.items[i]) for i, _ in chunk]
        enc = encode_prompts(loaded, ctx.td.images, prompts, reference_compat=ctx.td.task.reference_compat)
        return {k_: v.to(engine.device) if torch.is_tensor(v) else v for k_, v in enc.inputs.items()}

    pre_encoded = [encode_chunk(chunk) for chunk in chunks]
    C.freeze_heap()

    def hones(ids=ids):
        return contributions(ctx, ids, conditions, mode="mean", targets=[targets[i] for i in ids])

    @torch.no_grad()
    def plain_enc():
        for chunk in chunks:
            model(**encode_chunk(chunk))

    @torch.no_grad()
    def plain_fwd():
        for inputs in pre_encoded:
            model(**inputs)

    @torch.no_grad()
    def hooks(chunks=chunks, n=len(ids)):
        out = torch.zeros(n, len(conditions), sizes.num_layers, sizes.d_ff, dtype=torch.float64)
        for chunk in chunks:
            inputs = encode_chunk(chunk)
            row_proj = proj[:, [i for i, _ in chunk]]
            store = {}
            with (
                row_heads_hooks(model, adapter, [conditions[c] for _, c in chunk], sizes.num_heads),
                read_down_proj_inputs(
                    model, adapter, sizes.num_layers, store, lambda layer, z: (z[:, -1].float() * row_proj[layer]).cpu()
                ),
            ):
                model(**inputs)
            c = torch.stack([store[layer] for layer in range(sizes.num_layers)], dim=1)
            for (i, cond), value in zip(chunk, c):
                out[i, cond] = value.double()
        return out

    rank_count = [0]

    def rank():
        rank_count[0] += 1
        return runner.rank(args.task, "hones", heads=table, top_heads=k, out=tmpdir / f"rank-{rank_count[0]}.parquet")

    fns = {"hones": hones, "plain_enc": plain_enc, "plain_fwd": plain_fwd, "hooks": hooks}
    if not args.skip_rank:
        fns["rank"] = rank
    print(
        f"[hones_attribution] model={args.model} task={args.task} threads={torch.get_num_threads()} "
        f"examples={len(ids)} K_h={len(heads)} rows={len(rows)} batches={len(chunks)} "
        f"batch_size={args.batch_size} repeats={args.repeats}"
    )
    if args.warmup:  # warm every path on one batch's worth of work (the Runner once, small)
        few = ids[: max(1, args.batch_size // len(conditions))]
        for _ in range(args.warmup):
            hones(few)
            plain_fwd_one = pre_encoded[0]
            with torch.no_grad():
                model(**plain_fwd_one)
            hooks([c for c in chunks[:1]], len(ids))
    r = C.compare(fns, args.repeats, 0)

    c_hones, c_hooks = r["hones"]["value"], r["hooks"]["value"]
    diff = float((c_hones - c_hooks).abs().max())
    ok = bool(torch.allclose(c_hones, c_hooks, atol=args.atol, rtol=args.rtol))
    # the head replacement must change something (else the cross-check proves little)
    effect = float((c_hones[:, 1:] - c_hones[:, :1]).abs().max()) if len(conditions) > 1 else 0.0
    med = {name: v["median_s"] for name, v in r.items()}
    per_example = {name: C.ms(t / len(ids)) for name, t in med.items()}
    results = {
        "examples": len(ids),
        "top_heads": len(heads),
        "heads": [list(h) for h in heads],
        "conditions": len(conditions),
        "rows": len(rows),
        "batches": len(chunks),
        "median_s": med,
        "times_s": {n: v["times_s"] for n, v in r.items()},
        "ms_per_example": per_example,
        "hooks_allclose": ok,
        "hooks_max_abs_diff": diff,
        "max_abs_effect_of_head_replacement": effect,
        "ratios": {
            "hones/plain_enc": C.ratio(med["hones"], med["plain_enc"]),
            "hones/plain_fwd": C.ratio(med["hones"], med["plain_fwd"]),
            "hooks/plain_enc": C.ratio(med["hooks"], med["plain_enc"]),
            "hones/hooks": C.ratio(med["hones"], med["hooks"]),
            "plain_enc/plain_fwd": C.ratio(med["plain_enc"], med["plain_fwd"]),
        },
        "head_table": table_source,
    }
    if "rank" in med:
        results["ratios"]["rank/plain_enc"] = C.ratio(med["rank"], med["plain_enc"])
        results["ratios"]["rank/hones"] = C.ratio(med["rank"], med["hones"])

    labels = {
        "hones": "contributions() (nnsight)",
        "plain_enc": "plain HF forwards + encode",
        "plain_fwd": "plain HF forwards (pre-encoded)",
        "hooks": "torch hooks, same computation",
        "rank": "Runner.rank(..., 'hones') end to end",
    }
    print(
        f"\nHONES attribution: {len(ids)} examples x (1 + K_h={len(heads)}) = {len(rows)} rows, "
        f"{len(chunks)} forwards of <= {args.batch_size} rows"
    )
    C.print_table(
        [
            [
                labels[name],
                f"{t:.2f}",
                f"{per_example[name]:.1f}",
                f"{C.ratio(t, med['plain_enc']):.3f}",
                f"{C.ratio(t, med['plain_fwd']):.3f}",
            ]
            for name, t in med.items()
        ],
        ["variant", "median s", "ms/example", "/ plain+encode", "/ plain fwd"],
    )
    print(
        f"  hooks vs contributions(): allclose={ok} (max |diff| {diff:.2e}); "
        f"max |c(head replaced) - c(clean)| = {effect:.2e}"
    )

    summary = [
        {
            "what": f"{labels[name]} / plain HF forwards + encode",
            "a_ms": C.ms(med[name]),
            "b_ms": C.ms(med["plain_enc"]),
            "ratio": C.ratio(med[name], med["plain_enc"]),
        }
        for name in med
        if name != "plain_enc"
    ]
    summary.append(
        {
            "what": "contributions() (nnsight) / torch hooks (same computation)",
            "a_ms": C.ms(med["hones"]),
            "b_ms": C.ms(med["hooks"]),
            "ratio": C.ratio(med["hones"], med["hooks"]),
            "note": f"allclose: {ok} (max |diff| {diff:.1e})",
        }
    )
    settings = {
        "task": args.task,
        "split": "discovery",
        "examples": len(ids),
        "top_heads": len(heads),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "head_table": table_source,
        "data": args.data or "synthetic (default)",
    }
    notes = [
        "ratio = median time / median time of plain HF forwards (+ encoding) over the same rows and batches",
        "rows = (example, condition) pairs, condition = clean or one of the top K_h heads mean-replaced",
    ]
    path = C.write_result(NAME, args, settings, results, summary, machine, started, notes, C.model_info(loaded))
    print(f"\nwrote {path} ({time.perf_counter() - started:.1f} s)")
    tmp.cleanup()
    if not ok:
        torch.testing.assert_close(c_hones, c_hooks, atol=args.atol, rtol=args.rtol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
