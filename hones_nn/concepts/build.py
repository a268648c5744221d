"""`hones-nn fuzzy build`: perturb, caption, contrast, and write the fuzzy sets.

Cost: one clean caption generation per distinct image, one perturbed generation per
(concept, image) pair, one more per pair for the random-patch control (optional), and
two prompt forwards per interrogative (question, declarative) pair.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hones_nn.concepts.catalog import concept_images, parse_concepts
from hones_nn.concepts.fuzzy import (
    SETS_FILE,
    declarative,
    fuzzy_membership,
    q_set_name,
    write_sets,
)
from hones_nn.concepts.perturb import (
    PatchNoise,
    caption_check,
    generate_recording,
    patch_grid,
    patch_mask,
    random_patch_mask,
    summarize_checks,
)
from hones_nn.engine.core import MAX_NEW_TOKENS
from hones_nn.engine.encoding import encode_prompts
from hones_nn.tasks.base import ImageSource, Prompt, clean_generation
from hones_nn.tasks.prompts import instruction
from hones_nn.utils.io import atomic_write_json, atomic_write_with


def pair_seed(seed: int, *parts) -> int:
    return zlib.crc32(repr((seed, *parts)).encode())


def _chunks(seq, size):
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


@torch.no_grad()
def text_token_means(loaded, envoy, images, prompts: list[Prompt]) -> torch.Tensor:
    """Mean z over the text tokens (not image, not padding) of each prompt: [B, L, d_ff]."""
    adapter = loaded.adapter
    enc = encode_prompts(loaded, images, prompts)
    L = loaded.sizes.num_layers
    image_id = loaded.sizes.image_token_id
    text = (enc.attention_mask.bool() & (enc.input_ids != image_id)).float()  # [B, S]
    with envoy.trace(**enc.inputs):
        zs = list().save()
        for layer in range(L):
            zs.append(adapter.down_proj(envoy, layer).input.float().cpu())
    z = torch.stack(list(zs), dim=1)  # [B, L, S, F]
    weights = text / text.sum(1, keepdim=True)
    return torch.einsum("blsf,bs->blf", z, weights)


def build_fuzzy_sets(
    loaded,
    dataset,
    data_dir: str,
    split: str,
    out: str | Path,
    concepts: str | None = None,
    limit: int = 40,
    q_limit: int = 100,
    questions: bool = True,
    top_n: int = 100,
    keep_ratio: float = 0.2,
    noise_std: float | None = None,
    threshold: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int = MAX_NEW_TOKENS,
    random_control: bool = True,
    progress: bool = True,
) -> dict:
    from nnsight import NNsight

    started = time.time()
    out = Path(out)
    names = parse_concepts(concepts, dataset, split)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1 image per concept, got {limit}")
    grid = patch_grid(loaded)
    hidden = int(loaded.model.config.vision_config.hidden_size)
    sizes = loaded.sizes
    L, F = sizes.num_layers, sizes.d_ff
    envoy = NNsight(loaded.model)
    images = ImageSource(dataset)
    caption_text = instruction(loaded.family, "caption")
    tok = loaded.tokenizer

    per_concept = {c: concept_images(dataset, c, limit=limit, split=split) for c in names}
    rows = sorted({ci.row for cs in per_concept.values() for ci in cs})
    image_ids = dataset.with_format(None).select_columns(["image_id"])

    def prompts_for(row_list):
        return [Prompt(image_ids[r]["image_id"], r, caption_text, None) for r in row_list]

    # clean captions and activations, once per image
    clean_caption, clean_acts = {}, {}
    bar = tqdm(total=len(rows), desc="clean captions", disable=not progress, leave=False)
    for chunk in _chunks(rows, batch_size):
        enc = encode_prompts(loaded, images, prompts_for(chunk))
        gen = generate_recording(loaded, envoy, enc.inputs, max_new_tokens=max_new_tokens)
        for r, ids, acts in zip(chunk, gen.tokens, gen.mean_acts):
            clean_caption[r] = clean_generation(tok.decode(ids, skip_special_tokens=True))
            clean_acts[r] = acts.reshape(-1).double().numpy()
        bar.update(len(chunk))
    bar.close()

    # perturbed (and random-control) generations, per (concept, image) pair
    jobs = [(c, ci, patch_mask(ci.mask, grid, threshold)) for c in names for ci in per_concept[c]]
    deltas = {c: [] for c in names}
    records = []
    bar = tqdm(
        total=len(jobs) * (2 if random_control else 1), desc="perturbed captions", disable=not progress, leave=False
    )
    for chunk in _chunks(jobs, batch_size):
        enc = encode_prompts(loaded, images, prompts_for([ci.row for _, ci, _ in chunk]))
        masks = torch.stack([m for _, _, m in chunk])
        seeds = [pair_seed(seed, c, ci.row) for c, ci, _ in chunk]
        gen = generate_recording(
            loaded, envoy, enc.inputs, PatchNoise(masks, seeds, hidden, noise_std), max_new_tokens=max_new_tokens
        )
        bar.update(len(chunk))
        if random_control:
            random_masks = torch.stack([random_patch_mask(int(m.sum()), grid, s) for (_, _, m), s in zip(chunk, seeds)])
            gen_random = generate_recording(
                loaded,
                envoy,
                enc.inputs,
                PatchNoise(random_masks, seeds, hidden, noise_std),
                max_new_tokens=max_new_tokens,
            )
            bar.update(len(chunk))
        for k, (c, ci, m) in enumerate(chunk):
            perturbed = clean_generation(tok.decode(gen.tokens[k], skip_special_tokens=True))
            deltas[c].append(clean_acts[ci.row] - gen.mean_acts[k].reshape(-1).double().numpy())
            record = {
                "concept": c,
                "row": ci.row,
                "image_id": ci.image_id,
                "n_patches": int(m.sum()),
                "clean": clean_caption[ci.row],
                "perturbed": perturbed,
                "check": caption_check(clean_caption[ci.row], perturbed, c, ci.other_words),
            }
            if random_control:
                randomized = clean_generation(tok.decode(gen_random.tokens[k], skip_special_tokens=True))
                record["random"] = randomized
                record["random_check"] = caption_check(clean_caption[ci.row], randomized, c, ci.other_words)
            records.append(record)
    bar.close()

    sets = {}
    summary = {}
    for c in names:
        m = fuzzy_membership(np.stack(deltas[c]), top_n=top_n, keep_ratio=keep_ratio)
        sets[c] = ("visual", m)
        mine = [r for r in records if r["concept"] == c]
        summary[c] = {
            "n_images": len(mine),
            "mean_patches": float(np.mean([r["n_patches"] for r in mine])),
            "semantic": summarize_checks([r["check"] for r in mine]),
            "union_size": int(m.neurons.size),
            "set_size": int(m.in_set.sum()),
            "theta": m.theta,
        }
        if random_control:
            summary[c]["random"] = summarize_checks([r["random_check"] for r in mine])

    q_report = {}
    if questions:
        q_report = _interrogative_sets(
            loaded, envoy, dataset, images, split, q_limit, top_n, keep_ratio, batch_size, progress, sets
        )

    meta = {
        "model_id": loaded.model_id,
        "weights_hash": loaded.weights_hash,
        "shape": [L, F],
        "data": str(data_dir),
        "split": split,
        "concepts": names,
        "images_per_concept": limit,
        "q_limit": q_limit,
        "top_n": top_n,
        "keep_ratio": keep_ratio,
        "noise_std": noise_std if noise_std is not None else "per-image std",
        "patch_threshold": threshold,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "site": "z = input of down_proj",
        "set_sizes": {n: int(m.in_set.sum()) for n, (_, m) in sets.items()},
    }
    write_sets(out / SETS_FILE, sets, F, meta)
    from safetensors.numpy import save_file

    atomic_write_with(
        out / "deltas.safetensors",
        lambda tmp: save_file(
            {c: np.stack(deltas[c]).astype(np.float32) for c in names}, tmp, metadata={"shape": f"{L}x{F}"}
        ),
    )
    report = {
        "meta": meta,
        "perturbation": summary,
        "interrogative": q_report,
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_json(out / "perturbation.json", {**report, "pairs": records})
    return report


def _interrogative_sets(
    loaded, envoy, dataset, images, split, q_limit, top_n, keep_ratio, batch_size, progress, sets
) -> dict:
    if "vqa" not in dataset.column_names:
        raise ValueError(f"split {split!r} has no vqa field, so no question/declarative pairs; pass --no-questions")
    records = dataset.with_format(None).select_columns(["image_id", "vqa"])
    pairs: dict[str, list[tuple[int, str, str, str]]] = {}
    skipped = 0
    for row in range(len(records)):
        qa = records[row]["vqa"] or {}
        question, answer = (qa.get("question") or "").strip(), (qa.get("answer") or "").strip()
        if not question or not answer:
            continue
        made = declarative(question, answer)
        if made is None:
            skipped += 1
            continue
        word, sentence = made
        group = pairs.setdefault(word, [])
        if len(group) < q_limit:
            group.append((row, records[row]["image_id"], question, sentence))
    if not pairs:
        raise ValueError(
            f"no VQA question of split {split!r} matches a declarative rule "
            "(hones_nn.concepts.fuzzy.DECLARATIVE_RULES); pass --no-questions"
        )
    report = {"skipped_questions": skipped}
    total = sum(len(g) for g in pairs.values())
    bar = tqdm(total=total, desc="question/declarative pairs", disable=not progress, leave=False)
    for word, group in pairs.items():
        deltas = []
        for chunk in _chunks(group, batch_size):
            asked = [Prompt(i, r, instruction(loaded.family, "vqa", question=q), None) for r, i, q, _ in chunk]
            told = [Prompt(i, r, instruction(loaded.family, "vqa", question=d), None) for r, i, _, d in chunk]
            a = text_token_means(loaded, envoy, images, asked)
            b = text_token_means(loaded, envoy, images, told)
            deltas += list((a - b).reshape(len(chunk), -1).double().numpy())
            bar.update(len(chunk))
        m = fuzzy_membership(np.stack(deltas), top_n=top_n, keep_ratio=keep_ratio)
        sets[q_set_name(word)] = ("interrogative", m)
        report[q_set_name(word)] = {
            "n_pairs": len(group),
            "union_size": int(m.neurons.size),
            "set_size": int(m.in_set.sum()),
            "example": {"question": group[0][2], "declarative": group[0][3]},
        }
    bar.close()
    return report
