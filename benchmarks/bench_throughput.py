"""Throughput of exact head localization and HONES attribution vs the plain forwards they need.

For each batch size B (rows per forward, 1..64), on the SAME rows and the same batches:

  heads (teacher-forced, --utility logprob): rows = (example, condition) pairs, conditions =
    clean + every head (V-SEAM's L*H + 1)
      sweep        hones_nn.engine.sweep.sweep (nnsight trace per batch, per-row head mean
                   replacement, log-prob read-out; each distinct prompt encoded once, and a
                   batch repeating the previous batch's prompts reuses its encoding)
      sweep_v0     the same with every row of every batch encoded (before this change)
      plain_fwd    model(**inputs) per batch, batches encoded beforehand   (the limit)
      plain_enc    encode every row + model(**inputs) per batch            (a plain loop)
  HONES: rows = (example, condition), conditions = clean + top K_h heads
      hones        hones_nn.methods.hones.contributions
      plain_fwd / plain_enc as above, over HONES's rows
  heads (greedy generation, --utility metric, the paper's default), --gen-batch-sizes:
      sweep_gen    sweep(..., utility="metric") (nnsight generation, intervention every step)
      hf_gen       model.generate on the pre-encoded batches (same greedy settings)

ratio = median time / median plain_fwd time (same number of passes, same rows);
nnsight overhead per trace = (median traced - median plain) / number of traces.
Memory: the activation peak of one batch of each kind, measured with the torch profiler
(profile_memory=True: running sum of CPU allocations - frees, operator granularity; weights
excluded), next to hones_nn.runner.estimates' estimate for the same rows and tokens; plus
the process's maxrss (resource.getrusage, includes weights and Python) at the end.
"""

from __future__ import annotations

import sys
import time

from benchmarks import _common as C

NAME = "throughput"


def parse_args():
    p = C.base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--batch-sizes", default=None, help="comma-separated rows per forward (default 1,2,4,8,16,32,64)")
    p.add_argument("--gen-batch-sizes", default=None, help="generation batch sizes (default 1,8,64; '' skips)")
    p.add_argument("--head-examples", type=int, default=None, help="examples of the head sweep (x (L*H + 1) rows)")
    p.add_argument("--hones-examples", type=int, default=None, help="examples of HONES (x (1 + K_h) rows)")
    p.add_argument("--gen-examples", type=int, default=None, help="examples of the generation sweep")
    args = p.parse_args()
    q = args.quick
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8" if q else "1,2,4,8,16,32,64")).split(",") if b]
    gen = args.gen_batch_sizes if args.gen_batch_sizes is not None else ("8" if q else "1,8,64")
    args.gen_batch_sizes = [int(b) for b in gen.split(",") if b]
    args.head_examples = args.head_examples or (1 if q else 2)
    args.hones_examples = args.hones_examples or (2 if q else 8)
    args.gen_examples = args.gen_examples or 1
    args.repeats = args.repeats or (1 if q else 3)
    args.warmup = args.warmup if args.warmup is not None else 1
    return args


def main() -> int:
    args = parse_args()
    started, machine = C.begin(args)

    import resource

    import numpy as np
    import torch

    import hones_nn.engine.sweep as sweep_module
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.engine.sweep import Row, all_heads, make_intervention, sweep, teacher_forced_scores
    from hones_nn.methods.base import default_top_heads
    from hones_nn.methods.hones import contributions, target_tokens
    from hones_nn.runner.estimates import activation_bytes, measure_peak_bytes, model_shape
    from hones_nn.runner.pipeline import Runner

    loaded, model, adapter, sizes = C.load(args.model, args.device)
    k = default_top_heads(sizes.num_layers, sizes.num_heads)
    n_items = max(args.head_examples, args.hones_examples, args.gen_examples)
    runner = Runner(loaded, out_dir="/tmp/hones-bench-throughput", progress=False, data=args.data, limit=n_items)
    ctx = runner.context(args.task, {})
    ctx.checkpoint_dir = None
    td, engine = ctx.td, ctx.engine
    if not td.task.generative:
        raise SystemExit("use a generative task (vqa, ocr, caption): the benchmark times teacher-forced rows")
    heads = all_heads(sizes.num_layers, sizes.num_heads)
    head_conds = [None] + heads
    hones_conds = [None] + heads[:: max(1, len(heads) // k)][:k]  # K_h heads spread over the layers
    targets = target_tokens(ctx, td.items, None)
    tok = engine.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    shape = model_shape(args.model)
    C.freeze_heap()

    def head_rows(n):
        return [Row(i, 0, c) for i in range(n) for c in range(len(head_conds))]

    def chunks_of(rows, bs):
        return [rows[s : s + bs] for s in range(0, len(rows), bs)]

    def encode(prompts, with_answers):
        enc = encode_prompts(
            loaded, td.images, prompts, with_answers=with_answers, reference_compat=td.task.reference_compat
        )
        return enc

    def plain_loop(batches_prompts, with_answers, pre=None):
        @torch.no_grad()
        def run():
            for b, prompts in enumerate(batches_prompts):
                inputs = pre[b] if pre is not None else encode(prompts, with_answers).inputs
                model(**inputs)

        return run

    original_encode_rows = sweep_module.encode_rows

    def every_row_encode(loaded_, images, prompts, cache=None, **kw):
        return encode_prompts(loaded_, images, prompts, **kw)

    print(
        f"[throughput] model={args.model} task={args.task} threads={torch.get_num_threads()} "
        f"batch sizes {args.batch_sizes} repeats={args.repeats}"
    )
    per_batch, summary = {}, []
    head_ids = list(range(args.head_examples))
    hrows = head_rows(args.head_examples)
    hones_ids = list(range(args.hones_examples))
    hones_rows = [(i, c) for i in hones_ids for c in range(len(hones_conds))]
    for bs in args.batch_sizes:
        # ---------------- heads, teacher-forced
        hb = [[td.items[r.item].prompts[0] for r in ch] for ch in chunks_of(hrows, bs)]
        hpre = [encode(p, True).inputs for p in hb]
        ob = [[td.task.attribution_prompt(td.items[i]) for i, _ in ch] for ch in chunks_of(hones_rows, bs)]
        opre = [encode(p, False).inputs for p in ob]
        ctx.batch_size = bs

        def sweep_now():
            return sweep(engine, td, head_ids, head_conds, utility="logprob", batch_size=bs)

        def sweep_v0():
            sweep_module.encode_rows = every_row_encode
            try:
                return sweep(engine, td, head_ids, head_conds, utility="logprob", batch_size=bs)
            finally:
                sweep_module.encode_rows = original_encode_rows

        def hones_now():
            return contributions(ctx, hones_ids, hones_conds, mode="mean", targets=[targets[i] for i in hones_ids])

        fns = {
            "sweep": sweep_now,
            "sweep_v0": sweep_v0,
            "heads_plain_fwd": plain_loop(hb, True, hpre),
            "heads_plain_enc": plain_loop(hb, True),
            "hones": hones_now,
            "hones_plain_fwd": plain_loop(ob, False, opre),
            "hones_plain_enc": plain_loop(ob, False),
        }
        r = C.compare(fns, args.repeats, args.warmup)
        same = bool(np.array_equal(r["sweep"]["value"], r["sweep_v0"]["value"]))
        med = {name: v["median_s"] for name, v in r.items()}
        n_head_traces, n_hones_traces = len(hb), len(ob)
        entry = {
            "head_rows": len(hrows),
            "head_traces": n_head_traces,
            "hones_rows": len(hones_rows),
            "hones_traces": n_hones_traces,
            "median_s": med,
            "times_s": {n: v["times_s"] for n, v in r.items()},
            "sweep_equals_sweep_v0": same,
            "ratios": {
                "heads/plain_fwd": C.ratio(med["sweep"], med["heads_plain_fwd"]),
                "heads/plain_enc": C.ratio(med["sweep"], med["heads_plain_enc"]),
                "heads_v0/plain_fwd": C.ratio(med["sweep_v0"], med["heads_plain_fwd"]),
                "heads_v0/heads": C.ratio(med["sweep_v0"], med["sweep"]),
                "hones/plain_fwd": C.ratio(med["hones"], med["hones_plain_fwd"]),
                "hones/plain_enc": C.ratio(med["hones"], med["hones_plain_enc"]),
            },
            "overhead_ms_per_trace": {
                "heads": C.ms((med["sweep"] - med["heads_plain_fwd"]) / n_head_traces),
                "hones": C.ms((med["hones"] - med["hones_plain_fwd"]) / n_hones_traces),
            },
            "rows_per_s": {
                "heads": len(hrows) / med["sweep"],
                "heads_plain_fwd": len(hrows) / med["heads_plain_fwd"],
                "hones": len(hones_rows) / med["hones"],
                "hones_plain_fwd": len(hones_rows) / med["hones_plain_fwd"],
            },
        }
        # ---------------- memory of one batch of each kind (rows of the first batch)
        p0, o0 = hb[0], ob[0]
        enc_a, enc_p = encode(p0, True), encode(o0, False)
        assign = make_intervention(head_conds, hrows[: len(p0)], sizes.num_heads, "mean")
        S_a, S_p = enc_a.inputs["input_ids"].shape[1], enc_p.inputs["input_ids"].shape[1]
        mem = {}
        n_mem = min(len(hones_ids), -(-bs // len(hones_conds)))  # examples filling one batch of bs rows
        for kind, fn, rows_, seq in (
            ("forward", plain_loop([o0], False, [enc_p.inputs]), len(o0), S_p),
            ("forward-logprob", lambda: teacher_forced_scores(engine, enc_a, assign, "logprob"), len(p0), S_a),
            (
                "hones-batch",
                lambda: contributions(
                    ctx, hones_ids[:n_mem], hones_conds, mode="mean", targets=[targets[i] for i in hones_ids[:n_mem]]
                ),
                min(bs, n_mem * len(hones_conds)),
                S_p,
            ),
        ):
            measured, _ = measure_peak_bytes(fn)
            est_kind = "forward" if kind == "hones-batch" else kind
            estimate = rows_ * activation_bytes(shape, est_kind, seq, 4)
            mem[kind] = {
                "rows": rows_,
                "tokens": seq,
                "measured_bytes": measured,
                "estimate_bytes": estimate,
                "estimate/measured": C.ratio(estimate, measured),
            }
        entry["memory"] = mem
        per_batch[str(bs)] = entry
        print(
            f"  B={bs:>2}: heads {entry['ratios']['heads/plain_fwd']:.3f} x plain fwd "
            f"(before: {entry['ratios']['heads_v0/plain_fwd']:.3f}, same scores {same}), HONES "
            f"{entry['ratios']['hones/plain_fwd']:.3f} x plain fwd; overhead/trace heads "
            f"{entry['overhead_ms_per_trace']['heads']:+.1f} ms, "
            f"hones {entry['overhead_ms_per_trace']['hones']:+.1f} ms;"
            f" peak forward-logprob {mem['forward-logprob']['measured_bytes'] / 2**20:.1f} MiB "
            f"(est {mem['forward-logprob']['estimate_bytes'] / 2**20:.1f})",
            flush=True,
        )
        summary.append(
            {
                "what": f"B={bs}: heads sweep (logprob) / plain forwards",
                "a_ms": C.ms(med["sweep"]),
                "b_ms": C.ms(med["heads_plain_fwd"]),
                "ratio": entry["ratios"]["heads/plain_fwd"],
            }
        )
        summary.append(
            {
                "what": f"B={bs}: HONES contributions / plain forwards",
                "a_ms": C.ms(med["hones"]),
                "b_ms": C.ms(med["hones_plain_fwd"]),
                "ratio": entry["ratios"]["hones/plain_fwd"],
            }
        )

    # ---------------- generation (the paper's metric utility)
    gen = {}
    gen_ids = list(range(args.gen_examples))
    grows = head_rows(args.gen_examples)
    greedy = dict(
        max_new_tokens=engine.max_new_tokens,
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    for bs in args.gen_batch_sizes:
        gb = [[td.items[r.item].prompts[0] for r in ch] for ch in chunks_of(grows, bs)]
        gpre = [encode(p, False).inputs for p in gb]

        def sweep_gen():
            return sweep(engine, td, gen_ids, head_conds, utility="metric", batch_size=bs)

        @torch.no_grad()
        def hf_gen():
            return [model.generate(**inputs, **greedy) for inputs in gpre]

        r = C.compare({"sweep_gen": sweep_gen, "hf_gen": hf_gen}, args.repeats, args.warmup)
        med = {name: v["median_s"] for name, v in r.items()}
        steps = [int(out.shape[1] - inputs["input_ids"].shape[1]) for out, inputs in zip(r["hf_gen"]["value"], gpre)]
        gen[str(bs)] = {
            "rows": len(grows),
            "traces": len(gb),
            "median_s": med,
            "times_s": {n: v["times_s"] for n, v in r.items()},
            "hf_steps_per_batch": steps,
            "ratio": C.ratio(med["sweep_gen"], med["hf_gen"]),
            "note": "HF generate runs clean (no intervention); the sweep intervenes on every row",
        }
        print(
            f"  generation B={bs:>2}: sweep(metric) {gen[str(bs)]['ratio']:.3f} x model.generate "
            f"({len(gb)} batches, HF steps {steps[:4]}{'...' if len(steps) > 4 else ''})",
            flush=True,
        )
        summary.append(
            {
                "what": f"B={bs}: heads sweep (metric, generation) / model.generate",
                "a_ms": C.ms(med["sweep_gen"]),
                "b_ms": C.ms(med["hf_gen"]),
                "ratio": gen[str(bs)]["ratio"],
            }
        )

    # nnsight overhead of one empty trace (B=1), explicitly
    inputs1 = encode([td.items[0].prompts[0]], False).inputs

    @torch.no_grad()
    def hf1():
        model(**inputs1)

    @torch.no_grad()
    def nn1():
        with engine.envoy.trace(**inputs1):
            pass

    r = C.compare({"hf": hf1, "nn_empty": nn1}, max(5, 3 * args.repeats), args.warmup)
    empty = {
        "hf_ms": C.ms(r["hf"]["median_s"]),
        "nn_empty_ms": C.ms(r["nn_empty"]["median_s"]),
        "overhead_ms": C.ms(r["nn_empty"]["median_s"] - r["hf"]["median_s"]),
    }
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = {
        "per_batch": per_batch,
        "generation": gen,
        "empty_trace_b1": empty,
        "maxrss_mib": maxrss_mib,
        "head_conditions": len(head_conds),
        "hones_conditions": len(hones_conds),
        "top_heads": k,
        "memory_method": "torch.profiler profile_memory=True: peak of the running sum of CPU allocations "
        "minus frees during one batch (weights excluded); maxrss: resource.getrusage",
    }
    settings = {
        "task": args.task,
        "split": "discovery",
        "batch_sizes": args.batch_sizes,
        "gen_batch_sizes": args.gen_batch_sizes,
        "head_examples": args.head_examples,
        "hones_examples": args.hones_examples,
        "gen_examples": args.gen_examples,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "data": args.data or "synthetic (default)",
    }
    notes = [
        "ratio = median time / median time of plain HF forwards over the same rows and batches (pre-encoded)",
        "sweep_v0 = the sweep encoding every row (before encode_rows); its scores must equal sweep's",
        f"empty nnsight trace at B=1: {empty['overhead_ms']:+.2f} ms over a plain forward",
    ]
    path = C.write_result(NAME, args, settings, results, summary, machine, started, notes, C.model_info(loaded))
    print(f"\nwrote {path} ({time.perf_counter() - started:.1f} s)")
    bad = [b for b, e in per_batch.items() if not e["sweep_equals_sweep_v0"]]
    if bad:
        raise SystemExit(f"sweep scores changed by encode_rows at batch sizes {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
