"""What an nnsight trace costs over a plain Hugging Face call, on the same batch.

Batches are the processor-batched, left-padded encodings the library uses (first B
prompts of the task's discovery split). Per batch size, all variants run interleaved,
after warmup; medians are compared:

Forward (one pass over the prompt):
  hf          model(**inputs) under no_grad                      (baseline)
  nn_empty    envoy.trace(**inputs) with an empty body
  nn_logits   trace saving lm_head.output[:, -1]
  nn_engine   Engine.decision_scores (the library's retrieval path, no intervention)
  hf_hook     model(**inputs) + torch pre-hooks doing a per-row head mean replacement
  nn_interv   trace doing the same replacement through HeadMeanReplacement (the V-SEAM path)

Generation (greedy, Engine's kwargs; max_new_tokens = Engine's 24 by default):
  natural     Engine.generate vs model.generate, stopping at EOS as in real runs
  forced      both forced to run N steps (generation_config.min_new_tokens = N), clean and
              with the head intervention (Engine: re-applied inside tracer.iter[:] at
              every step; HF: hooks), to expose per-step costs.

Reported: overhead (ms) = median(nnsight) - median(HF) and ratio = median(nnsight) / median(HF).
The per-step generation overhead is estimated from the difference between the forced
and natural runs: [(nn - hf)_forced - (nn - hf)_natural] / (steps_forced - steps_natural).
"""

from __future__ import annotations

import sys
import time

from benchmarks import _common as C

NAME = "trace_overhead"


def parse_args():
    p = C.base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--batch-sizes", default=None, help="comma-separated forward batch sizes (default 1,8,32,64)")
    p.add_argument(
        "--gen-batch-sizes",
        default=None,
        help="comma-separated generation batch sizes (default: the forward ones); '' skips generation",
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length cap (default Engine's 24)")
    p.add_argument("--gen-repeats", type=int, default=None, help="timed repeats of generation variants")
    p.add_argument(
        "--no-scale-repeats",
        action="store_true",
        help="same repeats at every batch size (default: small batches, being cheap and relatively "
        "noisier, get more repeats: max(R, min(cap*R, round(8R / B))), cap 8 forward, 4 generation)",
    )
    args = p.parse_args()
    quick = args.quick
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8" if quick else "1,8,32,64")).split(",") if b]
    gen = args.gen_batch_sizes if args.gen_batch_sizes is not None else ",".join(map(str, args.batch_sizes))
    args.gen_batch_sizes = [int(b) for b in gen.split(",") if b]
    args.repeats = args.repeats or (3 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.gen_repeats = args.gen_repeats or (2 if quick else 3)
    return args


def main() -> int:
    args = parse_args()
    started, machine = C.begin(args)

    import torch

    from benchmarks._hooks import row_heads_hooks
    from hones_nn.engine.core import MAX_NEW_TOKENS, Engine
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.interventions.base import apply_edits
    from hones_nn.interventions.heads import HeadMeanReplacement
    from hones_nn.models.loading import load_model
    from hones_nn.tasks.task_data import prepare_task

    loaded = load_model(args.model)
    sizes = loaded.adapter.sizes(loaded.model)
    need = max(args.batch_sizes + args.gen_batch_sizes)
    td = prepare_task(loaded, args.task, data=args.data, split="discovery", limit=need)
    if td.n < need:
        raise SystemExit(f"the discovery split has {td.n} {args.task} items, fewer than batch size {need}")
    engine = Engine(loaded, max_new_tokens=args.max_new_tokens or MAX_NEW_TOKENS)
    model, envoy, adapter = loaded.model, engine.envoy, loaded.adapter
    tok = engine.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    n_steps = engine.max_new_tokens
    C.freeze_heap()

    def batch(bs):
        enc = encode_prompts(
            loaded, td.images, [td.items[i].prompts[0] for i in range(bs)], reference_compat=td.task.reference_compat
        )
        return {k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()}

    def reps(base, bs, cap=8):
        return base if args.no_scale_repeats else max(base, min(cap * base, round(8 * base / bs)))

    def assignments(bs):  # one (layer, head) per row, cycling over all heads
        heads = [(layer, h) for layer in range(sizes.num_layers) for h in range(sizes.num_heads)]
        return [heads[r % len(heads)] for r in range(bs)]

    # ------------------------------------------------------------ forward
    forward_rows, results_fwd = [], {}
    print(
        f"[trace_overhead] model={args.model} task={args.task} threads={torch.get_num_threads()} "
        f"repeats={args.repeats} (x up to 8 for small batches) warmup={args.warmup}"
    )
    for bs in args.batch_sizes:
        inputs = batch(bs)
        assign = assignments(bs)
        interv = HeadMeanReplacement(assign, sizes.num_heads)

        @torch.no_grad()
        def hf():
            return model(**inputs).logits[:, -1].clone()

        @torch.no_grad()
        def nn_empty():
            with envoy.trace(**inputs):
                pass

        @torch.no_grad()
        def nn_logits():
            with envoy.trace(**inputs):
                out = adapter.lm_head(envoy).output[:, -1].save()
            return out

        def nn_engine():
            return engine.decision_scores(inputs)

        @torch.no_grad()
        def hf_hook():
            with row_heads_hooks(model, adapter, assign, sizes.num_heads):
                return model(**inputs).logits[:, -1].clone()

        @torch.no_grad()
        def nn_interv():
            with envoy.trace(**inputs):
                apply_edits(envoy, adapter, interv.edits(bs))
                out = adapter.lm_head(envoy).output[:, -1].save()
            return out

        r = C.compare(
            {
                "hf": hf,
                "nn_empty": nn_empty,
                "nn_logits": nn_logits,
                "nn_engine": nn_engine,
                "hf_hook": hf_hook,
                "nn_interv": nn_interv,
            },
            reps(args.repeats, bs),
            args.warmup,
        )
        # sanity: the traces compute what the plain calls compute
        same_clean = torch.allclose(r["nn_logits"]["value"], r["hf"]["value"], atol=1e-4, rtol=1e-4)
        same_interv = torch.allclose(r["nn_interv"]["value"], r["hf_hook"]["value"], atol=1e-4, rtol=1e-4)
        med = {k: v["median_s"] for k, v in r.items()}
        mins = {k: v["min_s"] for k, v in r.items()}
        results_fwd[str(bs)] = {
            "seq_len": int(inputs["input_ids"].shape[1]),
            "repeats": reps(args.repeats, bs),
            "median_s": med,
            "times_s": {k: v["times_s"] for k, v in r.items()},
            "logits_match_hf": bool(same_clean),
            "intervened_logits_match_hooks": bool(same_interv),
        }
        for variant, base in (("nn_empty", "hf"), ("nn_logits", "hf"), ("nn_engine", "hf"), ("nn_interv", "hf_hook")):
            forward_rows.append(
                {
                    "batch": bs,
                    "variant": variant,
                    "baseline": base,
                    "a_ms": C.ms(med[variant]),
                    "b_ms": C.ms(med[base]),
                    "overhead_ms": C.ms(med[variant] - med[base]),
                    "ratio": C.ratio(med[variant], med[base]),
                    "ratio_min": C.ratio(mins[variant], mins[base]),
                }
            )
        if not (same_clean and same_interv):
            print(
                f"  WARNING batch {bs}: nnsight and plain results differ (clean {same_clean}, intervened {same_interv})"
            )

    print("\nForward: nnsight trace vs plain HF forward (median ms; ratio = nnsight / HF)")
    C.print_table(
        [
            [
                r["batch"],
                f"{r['variant']} vs {r['baseline']}",
                f"{r['a_ms']:.1f}",
                f"{r['b_ms']:.1f}",
                f"{r['overhead_ms']:+.1f}",
                f"{r['ratio']:.3f}",
                f"{r['ratio_min']:.3f}",
            ]
            for r in forward_rows
        ],
        ["batch", "variant", "nnsight ms", "HF ms", "overhead ms", "ratio", "ratio(min)"],
    )

    # ------------------------------------------------------------ generation
    gen_rows, results_gen = [], {}
    gen_kwargs = dict(
        max_new_tokens=n_steps, do_sample=False, num_beams=1, repetition_penalty=1.0, pad_token_id=pad, eos_token_id=eos
    )
    for bs in args.gen_batch_sizes:
        inputs = batch(bs)
        width = inputs["input_ids"].shape[1]
        assign = assignments(bs)
        interv = HeadMeanReplacement(assign, sizes.num_heads)

        @torch.no_grad()
        def hf_gen():
            return model.generate(**inputs, **gen_kwargs)

        def nn_gen():
            return engine.generate(inputs)

        @torch.no_grad()
        def hf_gen_hook():
            with row_heads_hooks(model, adapter, assign, sizes.num_heads):
                return model.generate(**inputs, **gen_kwargs)

        def nn_gen_interv():
            return engine.generate(inputs, interv)

        entry = {}
        saved_min = model.generation_config.min_new_tokens
        for mode in ("natural", "forced"):
            model.generation_config.min_new_tokens = n_steps if mode == "forced" else saved_min
            engine.min_new_tokens = n_steps if mode == "forced" else 0  # Engine enforces its own greedy config
            try:
                fns = {"hf": hf_gen, "nn": nn_gen}
                if mode == "forced":
                    fns.update({"hf_hook": hf_gen_hook, "nn_interv": nn_gen_interv})
                r = C.compare(fns, reps(args.gen_repeats, bs, cap=4), args.warmup)
            finally:
                model.generation_config.min_new_tokens = saved_min
                engine.min_new_tokens = 0
            steps = int(r["hf"]["value"].shape[1] - width)
            med = {k: v["median_s"] for k, v in r.items()}
            mins = {k: v["min_s"] for k, v in r.items()}
            info = {
                "steps": steps,
                "repeats": reps(args.gen_repeats, bs, cap=4),
                "median_s": med,
                "times_s": {k: v["times_s"] for k, v in r.items()},
            }
            if mode == "natural":
                # Engine cuts each row at EOS; HF's rows continue with padding after EOS
                hf_ids = []
                for row in r["hf"]["value"][:, width:].tolist():
                    hf_ids.append(row[: row.index(eos)] if eos in row else row)
                info["tokens_match_hf"] = hf_ids == r["nn"]["value"]
                if not info["tokens_match_hf"]:
                    print(f"  WARNING generation batch {bs}: Engine.generate tokens differ from model.generate")
            entry[mode] = info
            pairs = [("nn", "hf")] + ([("nn_interv", "hf_hook")] if mode == "forced" else [])
            for variant, base in pairs:
                gen_rows.append(
                    {
                        "batch": bs,
                        "mode": mode,
                        "steps": steps,
                        "variant": "Engine.generate" + (" + head intervention" if variant == "nn_interv" else ""),
                        "baseline": "model.generate" + (" + hooks" if base == "hf_hook" else ""),
                        "a_ms": C.ms(med[variant]),
                        "b_ms": C.ms(med[base]),
                        "overhead_ms": C.ms(med[variant] - med[base]),
                        "ratio": C.ratio(med[variant], med[base]),
                        "overhead_ms_per_step": C.ms((med[variant] - med[base]) / max(1, steps)),
                        "ratio_min": C.ratio(mins[variant], mins[base]),
                    }
                )
        nat, frc = entry["natural"], entry["forced"]
        extra_steps = frc["steps"] - nat["steps"]
        if extra_steps > 0:
            d_forced = frc["median_s"]["nn"] - frc["median_s"]["hf"]
            d_natural = nat["median_s"]["nn"] - nat["median_s"]["hf"]
            entry["per_step_overhead_ms_differential"] = C.ms((d_forced - d_natural) / extra_steps)
            entry["hf_ms_per_step_differential"] = C.ms((frc["median_s"]["hf"] - nat["median_s"]["hf"]) / extra_steps)
        results_gen[str(bs)] = entry

    if gen_rows:
        print(
            "\nGeneration: Engine.generate (nnsight, per-step loop) vs model.generate (median ms; ratio = nnsight / HF)"
        )
        C.print_table(
            [
                [
                    r["batch"],
                    r["mode"],
                    r["steps"],
                    r["variant"] + " vs " + r["baseline"],
                    f"{r['a_ms']:.1f}",
                    f"{r['b_ms']:.1f}",
                    f"{r['overhead_ms']:+.1f}",
                    f"{r['overhead_ms_per_step']:+.2f}",
                    f"{r['ratio']:.3f}",
                    f"{r['ratio_min']:.3f}",
                ]
                for r in gen_rows
            ],
            [
                "batch",
                "mode",
                "steps",
                "variant",
                "nnsight ms",
                "HF ms",
                "overhead ms",
                "per step",
                "ratio",
                "ratio(min)",
            ],
        )
        for bs, e in results_gen.items():
            if "per_step_overhead_ms_differential" in e:
                print(
                    f"  batch {bs}: per-step nnsight overhead (forced - natural) = "
                    f"{e['per_step_overhead_ms_differential']:+.2f} ms/step; HF step = "
                    f"{e['hf_ms_per_step_differential']:.2f} ms/step"
                )

    summary = []
    for r in forward_rows:
        summary.append(
            {
                "what": f"forward B={r['batch']}: {r['variant']} / {r['baseline']}",
                "a_ms": r["a_ms"],
                "b_ms": r["b_ms"],
                "overhead_ms": r["overhead_ms"],
                "ratio": r["ratio"],
                "ratio_min": r["ratio_min"],
            }
        )
    for r in gen_rows:
        summary.append(
            {
                "what": f"generate B={r['batch']} {r['mode']} ({r['steps']} steps): {r['variant']} / {r['baseline']}",
                "a_ms": r["a_ms"],
                "b_ms": r["b_ms"],
                "overhead_ms": r["overhead_ms"],
                "ratio": r["ratio"],
                "ratio_min": r["ratio_min"],
                "note": f"{r['overhead_ms_per_step']:+.2f} ms/step",
            }
        )
    settings = {
        "task": args.task,
        "split": "discovery",
        "batch_sizes": args.batch_sizes,
        "gen_batch_sizes": args.gen_batch_sizes,
        "max_new_tokens": n_steps,
        "repeats": args.repeats,
        "gen_repeats": args.gen_repeats,
        "scale_repeats": not args.no_scale_repeats,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "data": args.data or "synthetic (default)",
    }
    notes = [
        "ratio = median nnsight time / median plain HF time on the same encoded batch, variants interleaved",
        "nn_interv vs hf_hook: the same per-row head mean replacement (row r -> head r mod L*H)",
        "forced generation sets model.generation_config.min_new_tokens = max_new_tokens for both sides",
    ]
    path = C.write_result(
        NAME,
        args,
        settings,
        {"forward": results_fwd, "generation": results_gen, "forward_rows": forward_rows, "generation_rows": gen_rows},
        summary,
        machine,
        started,
        notes,
        C.model_info(loaded),
    )
    print(f"\nwrote {path} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
