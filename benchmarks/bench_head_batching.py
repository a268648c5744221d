"""Batched V-SEAM head localization vs the reference code's one-head-per-forward loop.

Both sides score the same examples of the task's discovery split under the same
conditions (clean + every (layer, head) of the language model, or the first --heads):

  batched    hones_nn.engine.sweep.sweep: rows are (example, condition) pairs, up to
             --batch-size rows per nnsight trace, each row with its own head replaced
             (HeadMeanReplacement)
  reference  the reference code's loop: one example and one head per forward, the head
             replaced by a plain torch forward-pre-hook on o_proj (benchmarks/_hooks.py,
             independent of hones_nn.interventions); each example is encoded once

for two utilities:

  logprob    teacher-forced sum log p(gold answer tokens), EOS excluded (one forward each)
  metric     the task metric of greedy generation (Engine.generate vs model.generate)

The scores must agree (np.testing.assert_allclose; the JSON is written first, then a
mismatch fails the run). Reported: speed-up = reference time / batched time.
"""

from __future__ import annotations

import contextlib
import sys
import time

from benchmarks import _common as C

NAME = "head_batching"


def parse_args():
    p = C.base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--logprob-examples", type=int, default=None, help="examples scored with the logprob utility")
    p.add_argument("--metric-examples", type=int, default=None, help="examples scored with the metric utility")
    p.add_argument("--heads", type=int, default=None, help="use only the first N heads (default: all L*H)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward of the batched sweep")
    p.add_argument("--utilities", default="logprob,metric", help="comma-separated subset of logprob,metric")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the score check")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance of the score check")
    args = p.parse_args()
    q = args.quick
    args.logprob_examples = args.logprob_examples or (2 if q else 24)
    args.metric_examples = args.metric_examples or (1 if q else 10)
    args.repeats = args.repeats or (1 if q else 2)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.utilities = [u for u in args.utilities.split(",") if u]
    bad = set(args.utilities) - {"logprob", "metric"}
    if bad:
        p.error(f"unknown utilities {sorted(bad)}")
    return args


def main() -> int:
    args = parse_args()
    started, machine = C.begin(args)

    import numpy as np
    import torch

    from benchmarks._hooks import one_head_hook
    from hones_nn.engine.core import Engine
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.engine.sweep import all_heads, sweep
    from hones_nn.tasks.task_data import prepare_task

    loaded, model, adapter, sizes = C.load(args.model, args.device)
    n_needed = max(
        args.logprob_examples if "logprob" in args.utilities else 0,
        args.metric_examples if "metric" in args.utilities else 0,
    )
    td = prepare_task(loaded, args.task, data=args.data, split="discovery", limit=n_needed)
    if not td.task.generative:
        raise SystemExit(
            f"task {args.task!r} is not generative; this benchmark compares generative utilities "
            "(use vqa, ocr or caption)"
        )
    engine = Engine(loaded)
    tok = engine.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    heads = all_heads(sizes.num_layers, sizes.num_heads)[: args.heads or None]
    conditions = [None] + heads
    C.freeze_heap()

    def hook_for(cond):
        if cond is None:
            return contextlib.nullcontext()
        return one_head_hook(model, adapter, cond[0], cond[1], sizes.num_heads)

    def encode_one(item, with_answer: bool):
        enc = encode_prompts(
            loaded, td.images, item.prompts[:1], with_answers=with_answer, reference_compat=td.task.reference_compat
        )
        inputs = {k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()}
        return enc, inputs

    @torch.no_grad()
    def reference_logprob(ids, conds):
        out = np.zeros((len(ids), len(conds)))
        for i, item_id in enumerate(ids):
            enc, inputs = encode_one(td.items[item_id], with_answer=True)
            n_answer = len(enc.answer_ids[0])  # answer tokens + EOS, at the end of the row
            seq = inputs["input_ids"][0]
            targets = seq[len(seq) - n_answer : len(seq) - 1]  # the answer tokens, EOS dropped
            for c, cond in enumerate(conds):
                with hook_for(cond):
                    logits = model(**inputs).logits[0].float()
                logprobs = torch.log_softmax(logits[len(seq) - n_answer - 1 : len(seq) - 2], dim=-1)
                out[i, c] = float(logprobs.gather(-1, targets[:, None]).sum())
        return out

    @torch.no_grad()
    def reference_metric(ids, conds):
        out = np.zeros((len(ids), len(conds)))
        for i, item_id in enumerate(ids):
            item = td.items[item_id]
            _, inputs = encode_one(item, with_answer=False)
            width = inputs["input_ids"].shape[1]
            for c, cond in enumerate(conds):
                with hook_for(cond):
                    generated = model.generate(
                        **inputs,
                        max_new_tokens=engine.max_new_tokens,
                        do_sample=False,
                        num_beams=1,
                        repetition_penalty=1.0,
                        pad_token_id=pad,
                        eos_token_id=eos,
                    )
                row = generated[0, width:].tolist()
                if eos in row:
                    row = row[: row.index(eos)]
                out[i, c] = td.task.utility(item, [engine.decode(row)])
        return out

    print(
        f"[head_batching] model={args.model} task={args.task} threads={torch.get_num_threads()} "
        f"heads={len(heads)} (+ clean) batch_size={args.batch_size} repeats={args.repeats}"
    )
    results, summary, failures, checks = {}, [], [], {}
    for utility in args.utilities:
        n = args.logprob_examples if utility == "logprob" else args.metric_examples
        ids = list(range(n))
        reference = reference_logprob if utility == "logprob" else reference_metric

        def batched(ids=ids, utility=utility):
            return sweep(engine, td, ids, conditions, utility=utility, batch_size=args.batch_size, mode="mean")

        def ref(ids=ids, reference=reference):
            return reference(ids, conditions)

        if args.warmup:  # small warmup of both code paths (first example, first 3 conditions)
            for _ in range(args.warmup):
                sweep(engine, td, ids[:1], conditions[:3], utility=utility, batch_size=args.batch_size)
                reference(ids[:1], conditions[:3])
        r = C.compare({"batched": batched, "reference": ref}, args.repeats, 0)
        a, b = np.asarray(r["batched"]["value"]), np.asarray(r["reference"]["value"])
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        checks[utility] = (a, b)
        ok = bool(np.allclose(a, b, atol=args.atol, rtol=args.rtol))
        n_mismatch = int((~np.isclose(a, b, atol=args.atol, rtol=args.rtol)).sum())
        rows = n * len(conditions)
        t_b, t_r = r["batched"]["median_s"], r["reference"]["median_s"]
        n_forwards_batched = -(-rows // args.batch_size)
        results[utility] = {
            "examples": n,
            "conditions": len(conditions),
            "rows": rows,
            "forwards_or_generations": {"batched": n_forwards_batched, "reference": rows},
            "batched_s": t_b,
            "reference_s": t_r,
            "times_s": {k: v["times_s"] for k, v in r.items()},
            "speedup": C.ratio(t_r, t_b),
            "ms_per_row": {"batched": C.ms(t_b / rows), "reference": C.ms(t_r / rows)},
            "max_abs_diff": diff,
            "mismatches": n_mismatch,
            "allclose": ok,
            "atol": args.atol,
            "rtol": args.rtol,
            "mean_utility": {"batched_clean": float(a[:, 0].mean()), "reference_clean": float(b[:, 0].mean())},
        }
        summary.append(
            {
                "what": f"{utility}: {n} examples x {len(conditions)} conditions = {rows} rows "
                f"(reference / batched, B={args.batch_size})",
                "a_ms": C.ms(t_r),
                "b_ms": C.ms(t_b),
                "ratio": C.ratio(t_r, t_b),
                "note": f"scores allclose: {ok} (max |diff| {diff:.2e})",
            }
        )
        if not ok:
            failures.append(f"{utility}: {n_mismatch} of {a.size} scores differ (max |diff| {diff:.3e})")

    print("\nHead localization: reference loop (1 head x 1 example per forward) vs batched sweep")
    C.print_table(
        [
            [
                u,
                v["examples"],
                v["conditions"],
                v["rows"],
                f"{v['forwards_or_generations']['reference']} / {v['forwards_or_generations']['batched']}",
                f"{v['reference_s']:.2f}",
                f"{v['batched_s']:.2f}",
                f"{v['ms_per_row']['reference']:.1f}",
                f"{v['ms_per_row']['batched']:.1f}",
                f"{v['speedup']:.2f}x",
                f"{v['max_abs_diff']:.1e}",
                "yes" if v["allclose"] else "NO",
            ]
            for u, v in results.items()
        ],
        [
            "utility",
            "examples",
            "conditions",
            "rows",
            "passes ref/batched",
            "ref s",
            "batched s",
            "ref ms/row",
            "batched ms/row",
            "speed-up",
            "max|diff|",
            "allclose",
        ],
    )

    settings = {
        "task": args.task,
        "split": "discovery",
        "logprob_examples": args.logprob_examples,
        "metric_examples": args.metric_examples,
        "heads": len(heads),
        "batch_size": args.batch_size,
        "utilities": args.utilities,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "max_new_tokens": engine.max_new_tokens,
        "data": args.data or "synthetic (default)",
    }
    notes = [
        "speed-up = reference time / batched time (same examples, heads and utility)",
        "reference: one example, one head per forward (or generation), torch pre-hook on o_proj; "
        "each example encoded once (favours the reference); batched includes encoding every batch",
        "mean replacement: head h's o_proj-input slice <- mean of the other heads' slices, every position",
    ]
    path = C.write_result(
        NAME, args, settings, results, summary, machine, started, notes + failures, C.model_info(loaded)
    )
    print(f"\nwrote {path} ({time.perf_counter() - started:.1f} s)")
    if failures:
        print("SCORE CHECK FAILED: " + "; ".join(failures))
    for utility, (a, b) in checks.items():  # raises with numpy's report on a mismatch
        np.testing.assert_allclose(
            a, b, atol=args.atol, rtol=args.rtol, err_msg=f"{utility}: batched sweep vs reference loop"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
