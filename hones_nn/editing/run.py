"""`hones-nn edit`: find the edit prompts, select neurons, solve, and measure the edit.

Success (held-out split, images whose clean caption contains the source token): the
edited caption contains the target token and not the source (``success``), and it is
exactly the clean caption with every source token replaced by the target
(``exact``). Specificity: (a) on held-out images whose clean caption does not contain
the source, the fraction of edited captions identical to the clean ones; (b) other
tasks' metrics (default VQA and OCR) with and without the edit on the held-out split.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from hones_nn.editing.edit import (
    applied,
    caption_prompt,
    find_edit_prompts,
    generate_captions,
    margin_of,
    read_edit_prompts,
    select_neurons,
    single_token_id,
    solve_edit,
)


def caption_effect(
    engine, dataset, images, edit, source_id: int, target_id: int, limit: int, batch_size: int, progress: bool
) -> dict:
    loaded = engine.loaded
    records = dataset.with_format(None).select_columns(["image_id"])
    n = min(limit, len(records))
    prompts = [caption_prompt(loaded, records[r]["image_id"], r) for r in range(n)]
    clean = generate_captions(engine, images, prompts, batch_size, progress, "held-out captions (clean)")
    with applied(loaded, edit):
        edited = generate_captions(engine, images, prompts, batch_size, progress, "held-out captions (edited)")
    with_source = [(c, e) for c, e in zip(clean, edited) if source_id in c]
    without = [(c, e) for c, e in zip(clean, edited) if source_id not in c]

    def swap(ids):
        return [target_id if t == source_id else t for t in ids]

    tok = loaded.tokenizer
    examples = [
        {"clean": tok.decode(c, skip_special_tokens=True), "edited": tok.decode(e, skip_special_tokens=True)}
        for c, e in (with_source[:3] + without[:2])
    ]

    def rate(values):
        return float(np.mean(values)) if values else float("nan")

    return {
        "n_images": n,
        "n_with_source": len(with_source),
        "success": rate([target_id in e and source_id not in e for _, e in with_source]),
        "exact": rate([e == swap(c) for c, e in with_source]),
        "n_without_source": len(without),
        "unchanged_without_source": rate([e == c for c, e in without]),
        "examples": examples,
    }


def task_effect(engine, loaded, edit, task: str, data, split: str, limit: int, batch_size: int, progress: bool) -> dict:
    from hones_nn.evaluation.evaluate import evaluate
    from hones_nn.tasks.task_data import prepare_task

    td = prepare_task(loaded, task, data=data, split=split, limit=limit)
    base = evaluate(engine, td, batch_size=batch_size, progress=progress, desc=f"{task} base")
    with applied(loaded, edit):
        after = evaluate(engine, td, batch_size=batch_size, progress=progress, desc=f"{task} edited")
    changed = float(np.mean([a != b for a, b in zip(base.utilities, after.utilities)]))
    out = {
        "task": task,
        "metric_name": base.metric_name,
        "n": td.n,
        "base": base.metric,
        "edited": after.metric,
        "change": after.metric - base.metric,
        "items_changed": changed,
    }
    if td.task.asks_questions:  # accuracy per question type
        from hones_nn.concepts.modulate import per_type

        out["per_type_base"] = per_type(td, base.utilities)
        out["per_type_edited"] = per_type(td, after.utilities)
    return out


def run_edit(
    loaded,
    engine,
    data,
    source: str,
    target: str,
    neurons: str = "pan:20",
    top_k: int = 20,
    margin: float = 2.0,
    aggregate: str = "max",
    split: str = "discovery",
    limit: int = 40,
    eval_split: str = "test",
    eval_limit: int = 100,
    spec_tasks=("vqa", "ocr"),
    spec_limit: int = 100,
    batch_size: int = 32,
    progress: bool = True,
):
    from hones_nn.data import resolve_benchmark
    from hones_nn.data.dataset import load_split
    from hones_nn.tasks.base import ImageSource

    started = time.time()
    tok = loaded.tokenizer
    source_id = single_token_id(tok, source, "--source")
    target_id = single_token_id(tok, target, "--target")
    if source_id == target_id:
        raise ValueError(f"--source {source!r} and --target {target!r} are the same token")
    root = resolve_benchmark(data, default=getattr(loaded, "benchmark", None))
    dataset = load_split(root, split)
    images = ImageSource(dataset)
    prompts, scanned = find_edit_prompts(engine, dataset, images, source_id, limit, batch_size, progress)
    if not prompts:
        raise ValueError(
            f"--source {source!r}: the model never says it in the clean captions of the {scanned} "
            f"images of split {split!r}; choose a word the captions contain"
        )
    readout = read_edit_prompts(engine, images, prompts, batch_size)
    chosen, description = select_neurons(loaded, neurons, source, top_k, readout, source_id)
    edit, info = solve_edit(loaded, readout, chosen, source_id, target_id, margin, aggregate)
    # measured margins on the edit prompts, with the edit in the weights
    with applied(loaded, edit):
        after = read_edit_prompts(engine, images, prompts, batch_size)
    adapter = loaded.adapter
    norm = adapter.final_norm(loaded.model)
    gamma = norm.weight.detach().double().cpu()
    W_U = adapter.lm_head(loaded.model).weight.detach().double().cpu()
    u = gamma * (W_U[target_id] - W_U[source_id])
    measured = margin_of(after.h, u, info["eps"])
    logit_margin = (after.logits[:, target_id] - after.logits[:, source_id]).double()
    info.update(
        margin_measured=measured.tolist(),
        logit_margin_measured=logit_margin.tolist(),
        edit_prompts_top1_target=float((after.logits.argmax(-1) == target_id).float().mean()),
    )
    meta = {
        "source": source,
        "target": target,
        "source_id": source_id,
        "target_id": target_id,
        "neurons_spec": neurons,
        "neurons": description,
        "k": len(chosen),
        "margin": margin,
        "aggregate": aggregate,
        "c": info["c"],
        "model_id": loaded.model_id,
        "weights_hash": loaded.weights_hash,
        "edit_split": split,
        "n_edit_prompts": len(prompts),
        "site": "W_down columns (z = input of down_proj)",
    }
    edit.meta = meta
    eval_set = load_split(root, eval_split)
    captions = caption_effect(
        engine, eval_set, ImageSource(eval_set), edit, source_id, target_id, eval_limit, batch_size, progress
    )
    tasks = [
        task_effect(engine, loaded, edit, t, data, eval_split, spec_limit, batch_size, progress)
        for t in tqdm(list(spec_tasks), desc="specificity tasks", disable=not progress, leave=False)
    ]
    layers = sorted({a for a, _ in chosen})
    report = {
        "meta": meta,
        "neurons": [list(n) for n in chosen],
        "layers": layers,
        "solve": info,
        "edit_prompts": {
            "n": len(prompts),
            "scanned": scanned,
            "mean_margin_before": float(np.mean(info["margin_before"])),
            "mean_margin_predicted": float(np.mean(info["margin_predicted"])),
            "mean_margin_measured": float(measured.mean()),
            "top1_target": info["edit_prompts_top1_target"],
        },
        "held_out_captions": captions,
        "other_tasks": tasks,
        "seconds": round(time.time() - started, 1),
    }
    return edit, report
