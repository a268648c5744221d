"""The official code's loop structure against hones-nn, same model, items and heads.

The reference loop (docs/reference-code-behaviour.md), re-created with plain Hugging Face
calls and torch hooks (benchmarks/_hooks.py), batch 1, one thread:

  heads    for each condition (clean, then every (layer, head)): a forward-pre-hook on
           that layer's o_proj replacing the head by the mean of the others; for each
           item: one ``generate`` (greedy, 24 new tokens) of its prompt, or, for
           retrieval, one forward per candidate (logit(" Yes") - logit(" No") at T);
           S_h = E_x[U(x) - U(x; theta_h)] with the task metric
  neurons  for the top K_h heads of that table: one forward of the item's prompt per
           condition (clean + every top head), reading z(T) of every layer; the
           importance combined by HONES's rule

hones-nn: ``sweep`` (V-SEAM's batched (item, head) rows, retrieval's shared prefix) and
HONES's plan + shard + reduce (no passes for heads with S_h <= 0), on the same items.

Both sides' numbers are compared (head utilities, importance) and must be equal (within
float noise); ratios are reference time / hones-nn time, per stage, measured in this run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmarks import _common as C

NAME = "reference_loop"


def parse_args():
    p = C.base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--tasks", default="vqa,retrieval", help="comma-separated tasks")
    p.add_argument("--modes", default="paper,compat", help="paper, compat (--reference-compat) or both")
    p.add_argument("--items", type=int, default=None, help="discovery items per task")
    p.add_argument("--batch-size", type=int, default=64, help="hones-nn rows per forward")
    args = p.parse_args()
    args.items = args.items or 1  # the reference retrieval loop is 50 x (L*H + 1) forwards per item
    return args


def main() -> int:
    args = parse_args()
    started, machine = C.begin(args)

    import numpy as np
    import torch

    from benchmarks._hooks import one_head_hook, read_down_proj_inputs
    from hones_nn.engine.encoding import to_device
    from hones_nn.engine.sweep import all_heads, sweep
    from hones_nn.engine.tables import read_table, write_head_table
    from hones_nn.methods.base import default_top_heads
    from hones_nn.methods.hones import Hones, target_directions
    from hones_nn.runner.pipeline import Runner
    from hones_nn.tasks.base import clean_generation
    from hones_nn.tasks.retrieval import decision_token_ids

    loaded, model, adapter, sizes = C.load(args.model, args.device)
    tokenizer = loaded.processor.tokenizer
    L, H = sizes.num_layers, sizes.num_heads
    k = default_top_heads(L, H)
    heads_all = all_heads(L, H)
    tmp = tempfile.TemporaryDirectory(prefix="hones-bench-")
    tmpdir = Path(tmp.name)

    def ref_utility(td, item, compat):
        """U(x) of one item under whatever hook is active: batch 1, HF calls only."""
        task = td.task
        outputs = []
        for prompt in item.prompts:
            enc = adapter.encode(
                loaded.processor, [td.images[prompt.image_index]], [prompt.user_text], reference_compat=compat
            )
            inputs = to_device(enc.inputs, model.device)
            if task.generative:
                out = model.generate(
                    **inputs,
                    max_new_tokens=24,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                ids = out[0, inputs["input_ids"].shape[1] :].tolist()
                if tokenizer.eos_token_id in ids:
                    ids = ids[: ids.index(tokenizer.eos_token_id)]
                outputs.append(clean_generation(tokenizer.decode(ids, skip_special_tokens=True)))
            else:
                yes, no = decision_token_ids(tokenizer)
                logits = model(**inputs).logits[0, -1]
                outputs.append(float(logits[yes] - logits[no]))
        return task.utility(item, outputs)

    @torch.no_grad()
    def ref_heads(td, compat):
        u = np.zeros((td.n, 1 + len(heads_all)))
        for c, cond in enumerate([None, *heads_all]):
            for i, item in enumerate(td.items):
                if cond is None:
                    u[i, c] = ref_utility(td, item, compat)
                else:
                    with one_head_hook(model, adapter, cond[0], cond[1], H):
                        u[i, c] = ref_utility(td, item, compat)
        return u

    @torch.no_grad()
    def ref_neurons(td, heads, weights, u_dirs, compat):
        proj = torch.stack([u_dirs @ adapter.down_proj(model, layer).weight.float() for layer in range(L)])  # [L, n, F]
        c = torch.zeros(td.n, 1 + len(heads), L, sizes.d_ff, dtype=torch.float64)
        for h, cond in enumerate([None, *heads]):
            for i, item in enumerate(td.items):
                prompt = td.task.attribution_prompt(item)
                enc = adapter.encode(
                    loaded.processor, [td.images[prompt.image_index]], [prompt.user_text], reference_compat=compat
                )
                inputs = to_device(enc.inputs, model.device)
                store: dict = {}
                with read_down_proj_inputs(model, adapter, L, store):
                    if cond is None:
                        model(**inputs)
                    else:
                        with one_head_hook(model, adapter, cond[0], cond[1], H):
                            model(**inputs)
                for layer in range(L):
                    c[i, h, layer] = (store[layer][0].float() * proj[layer, i]).double().cpu()
        w = np.asarray(weights)
        keep = w > 0
        if not keep.any():
            return c[:, 0].mean(0).numpy()
        if compat:
            m = c.mean(0).numpy()
            diffs = np.stack([np.maximum(0.0, m[0] - m[h + 1]) for h in range(len(heads))])
        else:
            diffs = np.stack([(c[:, 0] - c[:, h + 1]).clamp_min(0).mean(0).numpy() for h in range(len(heads))])
        for h, (layer, _) in enumerate(heads):
            diffs[h, :layer] = 0.0
        return (w[keep, None, None] * diffs[keep]).sum(0) / w[keep].sum()

    rows, results, summary = [], {}, []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        compat = mode == "compat"
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            runner = Runner(
                loaded,
                out_dir=tmpdir / f"{mode}-{task}",
                batch_size=args.batch_size,
                progress=False,
                data=args.data,
                split="discovery",
                limit=args.items,
                reference_compat=compat,
            )
            ctx = runner.context(task, {})
            ctx.checkpoint_dir = None
            td = ctx.td
            ids = list(range(td.n))
            # ---- heads
            t_ref_h, u_ref = C.timed(lambda: ref_heads(td, compat))
            t_hn_h, u_hn = C.timed(
                lambda: sweep(ctx.engine, td, ids, [None, *heads_all], utility="metric", batch_size=args.batch_size)
            )
            heads_equal = bool(np.allclose(u_ref, u_hn, rtol=1e-5, atol=1e-5))
            scores = (u_hn[:, :1] - u_hn[:, 1:]).mean(0).reshape(L, H)
            table = read_table(
                write_head_table(
                    tmpdir / f"{mode}-{task}.heads.parquet",
                    scores,
                    float(u_hn[:, 0].mean()),
                    u_hn[:, 1:].mean(0).reshape(L, H),
                    {"method": "vseam", "task": task, "model_id": loaded.model_id, "weights_hash": loaded.weights_hash},
                )
            )
            # ---- neurons
            ctx.options = {"top_heads": k, "heads_table": table}
            method = Hones()
            plan = method.plan(ctx)
            heads, weights = plan.state["heads"], plan.state["weights"]
            u_dirs = target_directions(ctx, td.items, td.task.direction_context(tokenizer, td.items))
            t_ref_n, imp_ref = C.timed(lambda: ref_neurons(td, heads, weights, u_dirs, compat))
            t_hn_n, result = C.timed(lambda: method.reduce(ctx, [method.shard(ctx, ids, plan)], plan))
            imp_hn = result.scores
            scale = float(np.abs(imp_ref).max()) or 1.0
            neurons_diff = float(np.abs(imp_ref - imp_hn).max() / scale)
            neurons_equal = neurons_diff < 1e-4
            positive = int(sum(w > 0 for w in weights))
            key = f"{mode}/{task}"
            n = td.n
            results[key] = {
                "items": n,
                "heads_conditions": 1 + len(heads_all),
                "top_heads": len(heads),
                "positive_heads": positive,
                "reference_heads_s": t_ref_h,
                "hones_nn_heads_s": t_hn_h,
                "reference_neurons_s": t_ref_n,
                "hones_nn_neurons_s": t_hn_n,
                "heads_ratio": C.ratio(t_ref_h, t_hn_h),
                "neurons_ratio": C.ratio(t_ref_n, t_hn_n),
                "total_ratio": C.ratio(t_ref_h + t_ref_n, t_hn_h + t_hn_n),
                "head_utilities_max_abs_diff": float(np.abs(u_ref - u_hn).max()),
                "head_utilities_equal": heads_equal,
                "importance_max_rel_diff": neurons_diff,
                "importance_equal": neurons_equal,
            }
            r = results[key]
            summary.append(
                {
                    "what": f"{key}: heads + neurons per discovery item",
                    "ratio": r["total_ratio"],
                    "a_ms": C.ms((t_ref_h + t_ref_n) / n),
                    "b_ms": C.ms((t_hn_h + t_hn_n) / n),
                    "note": f"heads {r['heads_ratio']:.2f}x, neurons {r['neurons_ratio']:.2f}x; "
                    f"equal: heads {heads_equal}, neurons {neurons_equal}",
                }
            )
            rows.append(
                [
                    key,
                    n,
                    f"{t_ref_h / n:.2f} -> {t_hn_h / n:.2f}",
                    f"{r['heads_ratio']:.2f}x",
                    f"{t_ref_n / n:.3f} -> {t_hn_n / n:.3f}",
                    f"{r['neurons_ratio']:.2f}x",
                    f"{r['total_ratio']:.2f}x",
                    "yes" if heads_equal and neurons_equal else "NO",
                ]
            )
    C.print_table(
        rows, ["mode/task", "items", "heads s/item (ref -> hn)", "x", "neurons s/item", "x", "total", "equal"]
    )
    path = C.write_result(
        NAME,
        args,
        {"items": args.items, "batch_size": args.batch_size, "top_heads": k, "tasks": args.tasks, "modes": args.modes},
        results,
        summary,
        machine,
        started,
        notes=[
            "reference: plain HF generate / forward, batch 1, one head hook at a time (benchmarks/_hooks.py)",
            "hones-nn: engine.sweep (batched rows, retrieval shared prefix) + HONES plan/shard/reduce",
        ],
        model=C.model_info(loaded),
    )
    print(f"wrote {path}")
    ok = all(r["head_utilities_equal"] and r["importance_equal"] for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
