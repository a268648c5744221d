"""The HONES engine against hand computation: head mean replacement, HONES contributions
and importance, neuron masking in generation, V-SEAM head scores, every recipe on every
tiny architecture, resumable shards, and the errors of bad inputs.

Every reference value here is computed WITHOUT nnsight and without the library's
intervention code: plain PyTorch forwards of the Hugging Face model with torch hooks
(``register_forward_pre_hook`` edits or records a module's input), inputs built from the
processor directly, unembedding / write-out rows read from the model's parameters by
their transformers attribute paths. One CPU thread, tiny models only.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

torch.set_num_threads(1)

from hones_nn.cli.main import cli  # noqa: E402
from hones_nn.embedded.tiny_random import TINY_ARCHITECTURES  # noqa: E402
from hones_nn.engine.core import Engine  # noqa: E402
from hones_nn.engine.shards import ShardedRun  # noqa: E402
from hones_nn.engine.tables import read_table, write_head_table, write_neuron_table  # noqa: E402
from hones_nn.interventions.base import apply_edits  # noqa: E402
from hones_nn.interventions.heads import HeadMeanReplacement  # noqa: E402
from hones_nn.interventions.neurons import NeuronMask  # noqa: E402
from hones_nn.methods.base import get_method  # noqa: E402
from hones_nn.methods.hones import contributions, target_directions, target_tokens  # noqa: E402
from hones_nn.runner.pipeline import Runner  # noqa: E402
from hones_nn.tasks.base import clean_generation  # noqa: E402
from hones_nn.tasks.targets import caption_idf  # noqa: E402
from tests.helpers.torch_hooks import text_layers, torch_hooks  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# ======================================================================= helpers
# (plain PyTorch: no nnsight, no hones_nn intervention code)


def n_heads(model) -> int:
    return model.config.text_config.num_attention_heads


def mean_replace_pre_hook(head: int, num_heads: int, rows=None):
    """o_proj forward-pre-hook: head ``head``'s slice <- mean of the other heads' slices
    (at every position) in the given batch rows (all rows when None)."""

    def hook(module, args):
        x = args[0]
        b, s, w = x.shape
        d = w // num_heads
        v = x.reshape(b, s, num_heads, d).clone()
        others = [k for k in range(num_heads) if k != head]
        target_rows = range(b) if rows is None else rows
        for r in target_rows:
            v[r, :, head] = v[r, :, others].mean(dim=1)
        return (v.reshape(b, s, w),) + tuple(args[1:])

    return hook


def zero_pre_hook(idx):
    """down_proj forward-pre-hook: z[..., idx] <- 0."""
    idx = torch.as_tensor(sorted(idx), dtype=torch.long)

    def hook(module, args):
        z = args[0].clone()
        z[..., idx] = 0
        return (z,) + tuple(args[1:])

    return hook


def hand_inputs(loaded, image, user_text: str, answer: str | None = None, compat: bool = False):
    """One unpadded LLaVA input from the processor itself: chat template (the reference
    code's raw "USER: <image>\\n{text}\\nASSISTANT:" with ``compat``), image, and (with
    ``answer``) the answer's tokens + EOS appended. Returns (inputs, answer token ids)."""
    processor = loaded.processor
    tokenizer = processor.tokenizer
    if compat:
        prompt = f"USER: <image>\n{user_text}\nASSISTANT:"
    else:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(images=[image], text=[prompt], return_tensors="pt")
    ids = enc["input_ids"]
    answer_ids: list[int] = []
    if answer is not None:
        answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        ids = torch.cat([ids, torch.tensor([answer_ids + [tokenizer.eos_token_id]])], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": enc["pixel_values"]}, answer_ids


@torch.no_grad()
def hand_forward(loaded, inputs, head=None):
    """Plain HF forward (optionally with head ``(layer, h)`` mean-replaced at every
    position); returns (logits [B, S, V], {layer: z [B, S, d_ff]})."""
    model = loaded.model
    layers = text_layers(model)
    zs: dict[int, torch.Tensor] = {}
    with torch_hooks() as handles:
        if head is not None:
            layer, h = head
            handles.append(
                layers[layer].self_attn.o_proj.register_forward_pre_hook(mean_replace_pre_hook(h, n_heads(model)))
            )
        for l, block in enumerate(layers):

            def capture(module, args, l=l):
                zs[l] = args[0].detach().clone()

            handles.append(block.mlp.down_proj.register_forward_pre_hook(capture))
        logits = model(**inputs).logits
    return logits, zs


def hand_target_ids(tokenizer, text: str) -> list[int]:
    special = set(tokenizer.all_special_ids) | ({tokenizer.unk_token_id} - {None})
    return [t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t not in special]


def hand_u(loaded, ids, weights=None) -> torch.Tensor:
    """Normalised (weighted) mean of lm_head rows."""
    W_U = loaded.model.lm_head.weight.detach().double()
    w = torch.ones(len(ids), dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
    u = (W_U[ids] * w[:, None]).sum(0) / w.sum()
    return u / u.norm()


def hand_prompt(task_name: str, item):
    """HONES's prompt of an item: the positive candidate for retrieval, else the only prompt."""
    if task_name == "retrieval":
        return item.prompts[item.data["positive_index"]]
    return item.prompts[0]


def hand_contributions(loaded, td, conditions, u: torch.Tensor, compat: bool = False) -> np.ndarray:
    """c [n_items, n_conditions, L, d_ff] = z(T) * (W_down^T u_y), one unpadded forward per
    (item, condition)."""
    layers = text_layers(loaded.model)
    W_down = [block.mlp.down_proj.weight.detach().double() for block in layers]  # [hidden, d_ff]
    out = np.zeros((td.n, len(conditions), len(layers), W_down[0].shape[1]))
    for i, item in enumerate(td.items):
        prompt = hand_prompt(td.task.name, item)
        inputs, _ = hand_inputs(loaded, td.images[prompt.image_index], prompt.user_text, compat=compat)
        for c, cond in enumerate(conditions):
            _, zs = hand_forward(loaded, inputs, head=cond)
            for l in range(len(layers)):
                out[i, c, l] = (zs[l][0, -1].double() * (u[i].double() @ W_down[l])).numpy()
    return out


def hand_importance(c: np.ndarray, heads, weights, compat: bool) -> np.ndarray:
    """I = sum_h S_h E_x[(c - c_h)_+] / sum_h S_h (paper) or with max(0, E c - E c_h)
    (reference), heads with S_h <= 0 dropped, layers below the head's layer 0; the signed
    mean contribution E_x c when no head is kept."""
    kept = [(k, w) for k, w in enumerate(weights) if w > 0]
    if not kept:
        return c[:, 0].mean(0)
    total = np.zeros(c.shape[2:])
    for k, w in kept:
        if compat:
            d = np.maximum(0.0, c[:, 0].mean(0) - c[:, k + 1].mean(0))
        else:
            d = np.maximum(0.0, c[:, 0] - c[:, k + 1]).mean(0)
        d[: heads[k][0]] = 0.0
        total += w * d
    return total / sum(w for _, w in kept)


def hand_top_heads(scores: np.ndarray, k: int):
    """Top k heads by descending score, ties by lower layer then head, keeping only the
    positive ones (above 1e-9: rounding noise is not positive): HONES drops the others
    before any neuron pass runs."""
    L, H = scores.shape
    order = sorted(((l, h) for l in range(L) for h in range(H)), key=lambda p: (-scores[p], p[0], p[1]))
    top = [p for p in order[:k] if scores[p] > 1e-9]
    return top, [float(scores[p]) for p in top]


def hand_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks of a [L, N] matrix, row-major: 1 = highest, ties by lower layer then index."""
    L, N = scores.shape
    layer, index = np.divmod(np.arange(L * N), N)
    order = np.lexsort((index, layer, -scores.reshape(-1)))
    ranks = np.empty(L * N, dtype=np.int64)
    ranks[order] = np.arange(1, L * N + 1)
    return ranks


def crafted_head_table(path: Path, task: str, model_id: str, shape, entries: dict) -> Path:
    """A V-SEAM-format head table whose scores are -1 except the given {(l, h): S}."""
    scores = -np.ones(shape)
    for (l, h), s in entries.items():
        scores[l, h] = s
    return write_head_table(path, scores, 0.0, -scores, {"method": "vseam", "task": task, "model_id": model_id})


def columns_equal(a, b) -> bool:
    """Bitwise equality of two Parquet tables' columns (metadata, e.g. timings, ignored)."""
    return a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))


def runner_for(loaded, engine, out_dir, **kwargs) -> Runner:
    return Runner(loaded=loaded, out_dir=Path(out_dir), progress=False, _engine=engine, **kwargs)


def random_images(n: int, size=(48, 48), seed: int = 0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


# ======================================================================= 1. mean replacement


@pytest.mark.parametrize("arch", ["llava", "qwen2.5-vl"])
def test_head_mean_replacement_edits_exactly_the_assigned_rows_and_slices(arch, tiny_model):
    """Row 0: (0, 1) replaced; row 1: clean; row 2: (1, 2); row 3: (0, 3). Reads the o_proj
    input the module actually consumed (a forward hook, which runs after nnsight's edit)."""
    loaded = tiny_model(arch)
    model, adapter = loaded.model, loaded.adapter
    sizes = loaded.sizes
    H, d = sizes.num_heads, sizes.head_dim
    if arch == "qwen2.5-vl":
        assert sizes.num_kv_heads < H  # grouped-query attention: o_proj input is still H * d_head
    texts = ["what color is the circle ?", "a b", "describe the image in one sentence .", "is there a red square ?"]
    enc = adapter.encode(loaded.processor, random_images(4), texts)
    inputs = enc.inputs
    layers = text_layers(model)
    assignments = [(0, 1), None, (1, 2), (0, 3)]

    def record(store):
        def hook(module, args, output):
            store.setdefault("x", []).append(args[0].detach().clone())
            store.setdefault("y", []).append(output.detach().clone())

        return hook

    clean = [dict() for _ in layers]
    with torch_hooks() as handles, torch.no_grad():
        handles += [block.self_attn.o_proj.register_forward_hook(record(clean[l])) for l, block in enumerate(layers)]
        model(**inputs)
    edited = [dict() for _ in layers]
    engine = Engine(loaded)
    with torch_hooks() as handles, torch.no_grad():
        handles += [block.self_attn.o_proj.register_forward_hook(record(edited[l])) for l, block in enumerate(layers)]
        with engine.envoy.trace(**inputs):
            apply_edits(engine.envoy, adapter, HeadMeanReplacement(assignments, H).edits(len(assignments)))

    for l, block in enumerate(layers):
        x = edited[l]["x"][0]
        # what was recorded is what o_proj consumed
        torch.testing.assert_close(
            edited[l]["y"][0], torch.nn.functional.linear(x, block.self_attn.o_proj.weight, block.self_attn.o_proj.bias)
        )
    view = lambda t: t.reshape(t.shape[0], t.shape[1], H, d)  # noqa: E731
    c0, e0 = view(clean[0]["x"][0]), view(edited[0]["x"][0])
    c1, e1 = view(clean[1]["x"][0]), view(edited[1]["x"][0])
    tol = dict(rtol=1e-5, atol=1e-6)
    for row, (layer, head), c, e in [(0, (0, 1), c0, e0), (3, (0, 3), c0, e0), (2, (1, 2), c1, e1)]:
        others = [k for k in range(H) if k != head]
        expected = c[row][:, others].sum(dim=1) / (H - 1)
        assert not torch.allclose(c[row][:, head], expected)  # the edit is visible
        torch.testing.assert_close(e[row][:, head], expected, **tol)
        torch.testing.assert_close(e[row][:, others], c[row][:, others], rtol=0, atol=0)
    # layer 0: rows 1 and 2 untouched, bit for bit
    torch.testing.assert_close(e0[1], c0[1], rtol=0, atol=0)
    torch.testing.assert_close(e0[2], c0[2], rtol=0, atol=0)
    # layer 1: row 1 (clean) and row 2's other heads are the clean run's; rows 0 and 3 moved
    torch.testing.assert_close(e1[1], c1[1], rtol=0, atol=0)
    assert not torch.allclose(e1[0], c1[0])
    assert not torch.allclose(e1[3], c1[3])


def test_head_mean_replacement_rejects_bad_assignments():
    with pytest.raises(ValueError, match="at least 2 heads"):
        HeadMeanReplacement([(0, 0)], num_heads=1)
    with pytest.raises(ValueError, match="cover 2 rows, the batch has 3"):
        HeadMeanReplacement([(0, 0), None], num_heads=4).edits(3)


# ======================================================================= 2. HONES contributions


@pytest.mark.parametrize("task", ["vqa", "ocr", "caption", "retrieval"])
def test_target_directions_by_hand(embedded, embedded_engine, benchmark_dir, tmp_path, task):
    runner = runner_for(embedded, embedded_engine, tmp_path, limit=4)
    ctx = runner.context(task, {})
    tokenizer = embedded.processor.tokenizer
    items = ctx.td.items
    idf = caption_idf(tokenizer, items) if task == "caption" else None
    u = target_directions(ctx, items, idf)
    assert u.shape == (4, embedded.sizes.hidden_size)
    expected, lengths = [], []
    if task == "caption":
        docs = [{t for r in item.data["references"] for t in hand_target_ids(tokenizer, r)} for item in items]
        n = len(docs)
        hand_idf = {t: math.log((n + 1) / (sum(t in doc for doc in docs) + 1)) + 1.0 for doc in docs for t in doc}
        assert idf == pytest.approx(hand_idf)
    for item in items:
        if task == "retrieval":
            yes = tokenizer(" Yes", add_special_tokens=False)["input_ids"][0]
            assert tokenizer.decode([yes]).strip() == "Yes"
            expected.append(hand_u(embedded, [yes]))
            lengths.append(1)
        elif task == "caption":
            ids = [t for r in item.data["references"][:5] for t in hand_target_ids(tokenizer, r)][:128]
            expected.append(hand_u(embedded, ids, [hand_idf[t] for t in ids]))
            lengths.append(len(ids))
        else:
            text = item.data["answer"] if task == "vqa" else item.data["text"]
            ids = hand_target_ids(tokenizer, text)
            expected.append(hand_u(embedded, ids))
            lengths.append(len(ids))
    torch.testing.assert_close(u.double(), torch.stack(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(4), rtol=1e-5, atol=1e-6)
    if task in ("ocr", "caption"):
        assert max(lengths) > 1  # the mean over several tokens is exercised


@pytest.mark.parametrize("task", ["ocr", "retrieval"])
def test_contributions_equal_z_at_T_times_projected_write_out(embedded, embedded_engine, benchmark_dir, tmp_path, task):
    runner = runner_for(embedded, embedded_engine, tmp_path, limit=3, batch_size=4)  # 9 rows: 3 batches, padded
    ctx = runner.context(task, {})
    conditions = [None, (1, 3), (2, 0)]
    got = contributions(ctx, [0, 1, 2], conditions, mode="mean", targets=target_tokens(ctx, ctx.td.items, None)).numpy()
    tokenizer = embedded.processor.tokenizer
    u_hand = []
    for item in ctx.td.items:
        ids = (
            [tokenizer(" Yes", add_special_tokens=False)["input_ids"][0]]
            if task == "retrieval"
            else hand_target_ids(tokenizer, item.data["text"])
        )
        u_hand.append(hand_u(embedded, ids))
    want = hand_contributions(embedded, ctx.td, conditions, torch.stack(u_hand))
    assert got.shape == want.shape == (3, 3, 4, 1024)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
    # the head conditions: layers below the head are the clean run's, layers from it on move
    for c, (layer, _) in enumerate(conditions[1:], start=1):
        np.testing.assert_allclose(got[:, c, :layer], got[:, 0, :layer], rtol=1e-4, atol=1e-5 * scale)
        assert np.abs(want[:, c, layer:] - want[:, 0, layer:]).max() > 1e-3 * scale


# ======================================================================= 3. masking


def _vqa_and_caption_prompts(embedded, embedded_engine, tmp_path):
    runner = runner_for(embedded, embedded_engine, tmp_path, limit=2)
    prompts, images = [], []
    for task in ("caption", "vqa"):
        td = runner.context(task, {}).td
        for item in td.items:
            prompts.append(item.prompts[0].user_text)
            images.append(td.images[item.prompts[0].image_index])
    return embedded.adapter.encode(embedded.processor, images, prompts)  # 4 rows, left-padded


def _masked_neurons(seed: int = 0, per_layer: int = 300):
    rng = np.random.default_rng(seed)
    return sorted((l, int(i)) for l in range(4) for i in rng.choice(1024, per_layer, replace=False))


def _cut_at_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


def test_neuron_mask_generation_matches_hf_generate_with_torch_hooks(
    embedded, embedded_engine, benchmark_dir, tmp_path
):
    enc = _vqa_and_caption_prompts(embedded, embedded_engine, tmp_path)
    assert len(set(enc.attention_mask.sum(1).tolist())) > 1  # rows of different lengths: padding is exercised
    # most of every layer: the trained model is robust to small random masks, and the
    # test needs a mask that changes what is generated
    neurons = _masked_neurons(per_layer=800)
    tokenizer = embedded.processor.tokenizer
    eos = tokenizer.eos_token_id
    model = embedded.model
    prompt_len = enc.input_ids.shape[1]

    def hf_generate(mask):
        with torch_hooks() as handles, torch.no_grad():
            if mask:
                for l, block in enumerate(text_layers(model)):
                    idx = [i for layer, i in neurons if layer == l]
                    handles.append(block.mlp.down_proj.register_forward_pre_hook(zero_pre_hook(idx)))
            out = model.generate(
                **enc.inputs,
                max_new_tokens=embedded_engine.max_new_tokens,
                do_sample=False,
                num_beams=1,
                repetition_penalty=1.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
            )
        return [_cut_at_eos(row, eos) for row in out[:, prompt_len:].tolist()]

    hf_clean, hf_masked = hf_generate(False), hf_generate(True)
    ours_clean = embedded_engine.generate(enc.inputs)
    # record every down_proj input the model consumes while our masked generation runs
    seen: list[tuple[int, torch.Tensor]] = []
    with torch_hooks() as handles:
        for l, block in enumerate(text_layers(model)):

            def rec(module, args, output, l=l):
                seen.append((l, args[0].detach().clone()))

            handles.append(block.mlp.down_proj.register_forward_hook(rec))
        ours_masked = embedded_engine.generate(enc.inputs, NeuronMask(neurons))

    assert ours_clean == hf_clean
    assert ours_masked == hf_masked
    assert hf_masked != hf_clean  # the mask changes what is generated (the test can fail)
    assert any(len(r) > 3 for r in hf_masked)
    # every forward (prefill and each generation step) had the masked z's exactly 0
    steps = len(seen) // 4
    assert steps >= max(len(r) for r in ours_masked) and len(seen) % 4 == 0
    for l, z in seen:
        idx = [i for layer, i in neurons if layer == l]
        assert torch.count_nonzero(z[..., idx]) == 0
        others = sorted(set(range(1024)) - set(idx))
        assert torch.count_nonzero(z[..., others]) > 0.5 * z[..., others].numel()


def test_neuron_mask_forward_zeroes_exactly_those_entries(embedded, embedded_engine, benchmark_dir, tmp_path):
    enc = _vqa_and_caption_prompts(embedded, embedded_engine, tmp_path)
    neurons = [(0, 5), (0, 17), (0, 1023), (2, 0), (2, 511)]
    layers = text_layers(embedded.model)

    def run(trace: bool):
        zs = {}
        with torch_hooks() as handles, torch.no_grad():
            for l, block in enumerate(layers):

                def rec(module, args, output, l=l):
                    zs[l] = args[0].detach().clone()

                handles.append(block.mlp.down_proj.register_forward_hook(rec))
            if trace:
                with embedded_engine.envoy.trace(**enc.inputs):
                    apply_edits(embedded_engine.envoy, embedded.adapter, NeuronMask(neurons).edits(4))
            else:
                embedded.model(**enc.inputs)
        return zs

    clean, masked = run(False), run(True)
    for l in range(4):
        idx = [i for layer, i in neurons if layer == l]
        if idx:
            assert torch.count_nonzero(clean[l][..., idx]) > 0
            assert torch.count_nonzero(masked[l][..., idx]) == 0
    # layer 0: everything else exactly the clean value; layer 1 (unmasked) moved (downstream of layer 0's mask)
    keep = sorted(set(range(1024)) - {5, 17, 1023})
    torch.testing.assert_close(masked[0][..., keep], clean[0][..., keep], rtol=0, atol=0)
    assert not torch.equal(masked[1], clean[1])


# ======================================================================= 4. importance formula


@pytest.mark.parametrize(
    "task,compat,entries",
    [
        # (1, 4): a rounding-noise score, not positive; (1, 6): negative; both dropped before the passes
        ("vqa", False, {(2, 5): 0.5, (0, 2): 0.3, (3, 1): 0.1, (1, 4): 2.2e-16, (1, 6): -0.2}),
        ("vqa", True, {(2, 5): 0.5, (0, 2): 0.3, (3, 1): 0.1, (1, 4): 2.2e-16, (1, 6): -0.2}),
        ("retrieval", False, {(1, 1): 0.7, (3, 6): 0.2, (0, 0): 0.05}),
        ("retrieval", True, {(1, 1): 0.7, (3, 6): 0.2, (0, 0): 0.05}),
        ("ocr", False, {}),  # every head scored -1: no head kept, signed mean contribution
    ],
)
def test_hones_importance_matches_plain_pytorch(
    embedded, embedded_engine, benchmark_dir, tmp_path, task, compat, entries
):
    K = 5
    heads_path = crafted_head_table(tmp_path / f"{task}.heads.parquet", task, "tiny-llava", (4, 8), entries)
    runner = runner_for(embedded, embedded_engine, tmp_path, limit=4, reference_compat=compat, batch_size=8)
    table = runner.rank(task, "hones", heads=heads_path, top_heads=K)
    heads, weights = hand_top_heads(read_table(heads_path).matrix(), K)
    assert [tuple(h) for h in table.meta["heads"]] == heads
    assert table.meta["head_weights"] == pytest.approx(weights)

    td = runner.context(task, {}).td
    tokenizer = embedded.processor.tokenizer
    u = []
    for item in td.items:
        if task == "retrieval":
            if compat:  # the reference code's "Yes" (no space)
                ids = hand_target_ids(tokenizer, "Yes")[:1]
            else:
                ids = [tokenizer(" Yes", add_special_tokens=False)["input_ids"][0]]
        else:
            ids = hand_target_ids(tokenizer, item.data["answer"] if task == "vqa" else item.data["text"])
        u.append(hand_u(embedded, ids))
    c = hand_contributions(embedded, td, [None] + heads, torch.stack(u), compat=compat)
    want = hand_importance(c, heads, weights, compat)
    got = table.matrix()
    assert got.shape == (4, 1024)
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
    if entries:
        assert (got >= 0).all()  # positive parts
        # the two variants are different functions: make sure this data tells them apart
        other = hand_importance(c, heads, weights, not compat)
        assert np.abs(other - want).max() > 1e-3 * scale
    else:
        assert (got < 0).any()  # signed
    # ranks: 1..N, by descending score, ties by lower layer then index
    np.testing.assert_array_equal(table.rank, hand_ranks(table.matrix()))
    k = 41  # the top 1%
    boundary = np.sort(want.reshape(-1))[::-1]
    if boundary[k - 1] - boundary[k] > 1e-4 * scale:
        order = np.argsort(hand_ranks(want))[:k]
        assert set(table.top(k)) == {(int(i // 1024), int(i % 1024)) for i in order}


def test_hones_with_real_vseam_heads_and_ablations(embedded, embedded_engine, benchmark_dir, tmp_path):
    """HONES guided by a real V-SEAM table, NoHead (E_x c) and RandHead (weights 1) by hand."""
    runner = runner_for(embedded, embedded_engine, tmp_path, limit=4, batch_size=16)
    heads_table = runner.heads("vqa", utility="logprob")
    K = 4
    hones = runner.rank("vqa", "hones", heads=heads_table, top_heads=K)
    nohead = runner.rank("vqa", "hones-nohead")
    rand = runner.rank("vqa", "hones-randhead", top_heads=K)
    heads, weights = hand_top_heads(heads_table.matrix(), K)
    rand_heads = [tuple(h) for h in rand.meta["heads"]]
    assert len(set(rand_heads)) == K and rand.meta["head_weights"] == [1.0] * K
    assert all(0 <= l < 4 and 0 <= h < 8 for l, h in rand_heads)

    td = runner.context("vqa", {}).td
    tokenizer = embedded.processor.tokenizer
    u = torch.stack([hand_u(embedded, hand_target_ids(tokenizer, item.data["answer"])) for item in td.items])
    conditions = [None] + heads + rand_heads
    c = hand_contributions(embedded, td, conditions, u)
    c_hones = c[:, : 1 + len(heads)]
    c_rand = np.concatenate([c[:, :1], c[:, 1 + len(heads) :]], axis=1)
    for table, want in [
        (hones, hand_importance(c_hones, heads, weights, compat=False)),
        (nohead, c[:, 0].mean(0)),
        (rand, hand_importance(c_rand, rand_heads, [1.0] * K, compat=False)),
    ]:
        scale = np.abs(want).max()
        np.testing.assert_allclose(table.matrix(), want, rtol=1e-4, atol=1e-5 * scale, err_msg=table.meta["method"])


# ======================================================================= 5. V-SEAM


@pytest.fixture(scope="module")
def vseam_models(embedded, embedded_engine, tiny_model, benchmark_dir, tmp_path_factory):
    """name -> (loaded, {utility: V-SEAM table on 4 VQA items}). The trained tiny-llava and a
    tiny random LLaVA (whose EOS log-prob is far from 0, so EOS handling shows)."""
    out = tmp_path_factory.mktemp("vseam")
    models = {"tiny-llava": (embedded, embedded_engine), "tiny-random-llava": (tiny_model("llava"), None)}
    result = {}
    for name, (loaded, engine) in models.items():
        runner = runner_for(loaded, engine, out / name, limit=4, batch_size=48)
        result[name] = (
            loaded,
            {u: runner.heads("vqa", utility=u, out=out / name / f"vqa.{u}.parquet") for u in ("logprob", "prob")},
        )
    return result


@pytest.mark.parametrize("model_name", ["tiny-llava", "tiny-random-llava"])
@pytest.mark.parametrize("utility", ["logprob", "prob"])
def test_vseam_teacher_forced_scores_match_one_head_at_a_time(vseam_models, tmp_path, model_name, utility):
    loaded, tables = vseam_models[model_name]
    table = tables[utility]
    td = runner_for(loaded, None, tmp_path, limit=4).context("vqa", {}).td
    L, H = loaded.sizes.num_layers, loaded.sizes.num_heads

    def utility_of(logits, prompt_len, answer_ids):
        logp = torch.log_softmax(logits[0].double(), dim=-1)
        if utility == "prob":
            return float(logp[prompt_len - 1, answer_ids[0]].exp())
        return float(sum(logp[prompt_len - 1 + j, t] for j, t in enumerate(answer_ids)))  # EOS excluded

    U = np.zeros((td.n, 1 + L * H))
    for i, item in enumerate(td.items):
        prompt = item.prompts[0]
        inputs, answer_ids = hand_inputs(loaded, td.images[prompt.image_index], prompt.user_text, prompt.answer)
        prompt_len = inputs["input_ids"].shape[1] - len(answer_ids) - 1
        assert answer_ids
        for c, cond in enumerate([None] + [(l, h) for l in range(L) for h in range(H)]):
            logits, _ = hand_forward(loaded, inputs, head=cond)
            U[i, c] = utility_of(logits, prompt_len, answer_ids)
    base = U[:, 0].mean()
    intervened = U[:, 1:].mean(0)
    scores = (base - intervened).reshape(L, H)
    np.testing.assert_allclose(table.matrix(), scores, atol=1e-4, rtol=0)
    df = table.table.to_pandas()
    np.testing.assert_allclose(df["base_utility"], base, atol=1e-4, rtol=0)
    np.testing.assert_allclose(df["intervened_utility"], intervened, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(table.rank, hand_ranks(table.matrix()))
    assert np.abs(scores).max() > 1e-3  # heads matter on this model
    assert table.meta["utility"] == utility and table.meta["n_examples"] == 4


def test_vseam_metric_base_utility_equals_evaluate(embedded, embedded_engine, benchmark_dir, tmp_path):
    limit = 8
    runner = runner_for(embedded, embedded_engine, tmp_path, limit=limit, batch_size=64)
    table = runner.heads("vqa", utility="metric")
    result = CliRunner().invoke(
        cli, ["evaluate", "--task", "vqa", "--split", "discovery", "--limit", str(limit), "--json"]
    )
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["n"] == limit and evaluated["metric_name"] == "vqa_accuracy"
    df = table.table.to_pandas()
    assert df["base_utility"].iloc[0] == pytest.approx(evaluated["metric"], abs=1e-12)
    # the most damaging head's utility, by HF generate with the head mean-replaced at every step
    best = df.sort_values("rank").iloc[0]
    layer, head = int(best["layer"]), int(best["head"])
    td = runner.context("vqa", {}).td
    tokenizer = embedded.processor.tokenizer
    utilities = []
    for item in td.items:
        prompt = item.prompts[0]
        inputs, _ = hand_inputs(embedded, td.images[prompt.image_index], prompt.user_text)
        block = text_layers(embedded.model)[layer]
        with torch_hooks() as handles, torch.no_grad():
            handles.append(block.self_attn.o_proj.register_forward_pre_hook(mean_replace_pre_hook(head, 8)))
            out = embedded.model.generate(
                **inputs,
                max_new_tokens=24,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        ids = _cut_at_eos(out[0, inputs["input_ids"].shape[1] :].tolist(), tokenizer.eos_token_id)
        text = clean_generation(tokenizer.decode(ids, skip_special_tokens=True))
        utilities.append(td.task.utility(item, [text]))
    assert best["intervened_utility"] == pytest.approx(np.mean(utilities), abs=1e-12)
    assert best["score"] == pytest.approx(best["base_utility"] - best["intervened_utility"], abs=1e-12)


# ======================================================================= 6. every recipe, every architecture


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_every_recipe_runs_on_every_tiny_architecture(arch, tiny_model, benchmark_dir, tmp_path):
    loaded = tiny_model(arch)
    sizes = loaded.sizes
    L, H, F = sizes.num_layers, sizes.num_heads, sizes.d_ff
    # the synthetic images are 48 x 48: every processor must cope (Qwen resizes to its 28-px grid,
    # LLaVA-NeXT tiles, LLaVA resizes to its tower's size)
    runner = Runner(loaded=loaded, out_dir=tmp_path, progress=False, limit=2)
    td = runner.context("vqa", {}).td
    image = td.images[0]
    assert image.size == (48, 48)
    enc = loaded.adapter.encode(loaded.processor, [image], [td.items[0].prompts[0].user_text])
    assert int((enc.input_ids == sizes.image_token_id).sum()) > 0
    heads = runner.heads("vqa", utility="logprob")
    assert heads.shape == (L, H) and len(heads.rank) == L * H
    assert np.isfinite(heads.score).all() and np.abs(heads.score).max() > 0
    assert sorted(heads.rank.tolist()) == list(range(1, L * H + 1))
    for method in ("hones", "hones-nohead", "hones-randhead", "hones-gaussian"):
        table = runner.rank("vqa", method, heads=heads, top_heads=2)
        assert table.kind == "neurons" and table.shape == (L, F), method
        assert len(table.score) == L * F
        assert np.isfinite(table.score).all(), method
        assert np.abs(table.score).max() > 0, method
        assert sorted(table.rank.tolist()) == list(range(1, L * F + 1)), method
        np.testing.assert_array_equal(table.rank, hand_ranks(table.matrix()))
        assert table.meta["method"] == method and table.meta["model_id"] == f"tiny-random-{arch}"
        assert table.path.exists() and not any((tmp_path / ".checkpoints").glob("*/shard-*"))
    assert (sizes.num_kv_heads < H) == (arch != "llava")  # grouped-query attention on the three others


# ======================================================================= 7. resume

RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    torch.set_num_threads(1)
    import hones_nn.methods.vseam as vseam
    from hones_nn.runner.pipeline import Runner

    original = vseam.sweep

    def traced_sweep(engine, td, item_ids, *args, **kwargs):
        print("computing", list(item_ids), flush=True)
        return original(engine, td, item_ids, *args, **kwargs)

    vseam.sweep = traced_sweep
    out = sys.argv[1]
    runner = Runner.local("tiny-llava", out_dir=Path(out), limit=16, batch_size=48, progress=False)
    table = runner.rank("vqa", "vseam", utility="metric", options={"shard_size": 4}, out=out + "/heads.parquet")
    print("done", table.path, flush=True)
    """
)


def _run_script(script: Path, out: Path, kill_after_first_shard: bool = False):
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        cwd=str(REPO),
    )
    try:
        if not kill_after_first_shard:
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-3000:]
            return stdout
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list(out.glob(".checkpoints/*/shard-*.safetensors")) or proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {stderr[-3000:]}"
        return stdout
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_table(benchmark_dir, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    _run_script(script, killed, kill_after_first_shard=True)
    shards = sorted(killed.glob(".checkpoints/*/shard-*.safetensors"))
    assert 1 <= len(shards) < 4 and not (killed / "heads.parquet").exists()
    finished = {int(p.stem.split("-")[1]) for p in shards}

    resumed_log = _run_script(script, killed)
    computed = [json.loads(line.split(" ", 1)[1]) for line in resumed_log.splitlines() if line.startswith("computing")]
    assert [ids[0] // 4 for ids in computed] == sorted(set(range(4)) - finished)  # finished shards were reused
    assert not list(killed.glob(".checkpoints/*/shard-*"))  # the checkpoint is removed at the end

    reference_log = _run_script(script, reference)
    assert len([line for line in reference_log.splitlines() if line.startswith("computing")]) == 4
    a = pq.read_table(killed / "heads.parquet")
    b = pq.read_table(reference / "heads.parquet")
    assert columns_equal(a, b)
    assert a.num_rows == 32


def test_hones_interrupted_in_process_resumes_and_reruns_identically(
    embedded, embedded_engine, benchmark_dir, tmp_path, monkeypatch
):
    """HONES with 3 shards: interrupted after the first, resumed; and run twice from scratch."""
    import hones_nn.methods.hones as hones_module

    heads_path = crafted_head_table(
        tmp_path / "h.parquet", "vqa", "tiny-llava", (4, 8), {(2, 5): 0.5, (0, 2): 0.3, (3, 1): 0.1}
    )

    def rank(out):
        runner = runner_for(embedded, embedded_engine, out, limit=10, batch_size=8)
        return runner.rank(
            "vqa", "hones", heads=heads_path, top_heads=3, options={"shard_size": 4}, out=Path(out) / "t.parquet"
        )

    original = hones_module.contributions
    calls = []

    def failing(ctx, item_ids, *args, **kwargs):
        calls.append(list(item_ids))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(ctx, item_ids, *args, **kwargs)

    monkeypatch.setattr(hones_module, "contributions", failing)
    with pytest.raises(KeyboardInterrupt):
        rank(tmp_path / "a")
    assert len(list((tmp_path / "a").glob(".checkpoints/*/shard-*.safetensors"))) == 1
    calls.clear()
    monkeypatch.setattr(hones_module, "contributions", lambda *a, **k: calls.append(list(a[1])) or original(*a, **k))
    resumed = rank(tmp_path / "a")
    assert calls == [[4, 5, 6, 7], [8, 9]]
    monkeypatch.setattr(hones_module, "contributions", original)
    fresh = rank(tmp_path / "b")
    again = rank(tmp_path / "b")
    assert columns_equal(resumed.table, fresh.table)
    assert columns_equal(fresh.table, again.table)
    assert resumed.meta["n_examples"] == 10


# ======================================================================= 8. bad input


def test_heads_table_of_another_task_is_refused(embedded, embedded_engine, benchmark_dir, tmp_path):
    heads_path = crafted_head_table(tmp_path / "vqa.heads.parquet", "vqa", "tiny-llava", (4, 8), {(0, 0): 1.0})
    runner = runner_for(embedded, embedded_engine, tmp_path, limit=2)
    with pytest.raises(ValueError, match=r"task 'vqa', not 'ocr'"):
        runner.rank("ocr", "hones", heads=heads_path)
    result = CliRunner().invoke(
        cli,
        [
            "rank",
            "--task",
            "ocr",
            "--method",
            "hones",
            "--heads",
            str(heads_path),
            "--limit",
            "2",
            "--out-dir",
            str(tmp_path / "cli"),
        ],
    )
    assert result.exit_code == 2
    assert "computed for task 'vqa', not 'ocr'" in result.output
    # a head table of another model's shape
    other = crafted_head_table(tmp_path / "other.parquet", "vqa", "tiny-llava", (2, 4), {(0, 0): 1.0})
    with pytest.raises(ValueError, match="computed on another model"):
        runner.rank("vqa", "hones", heads=other)


def test_evaluate_mask_of_another_model_exits_2(benchmark_dir, tmp_path):
    path = write_neuron_table(
        tmp_path / "small.parquet",
        np.random.default_rng(0).normal(size=(2, 128)),
        {"method": "hones", "task": "vqa", "model_id": "tiny-random-llava"},
    )
    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", "--mask", str(path), "--limit", "2"])
    assert result.exit_code == 2, result.output
    assert "computed on another model" in result.output
    assert "Traceback" not in result.output


def test_unknown_method_and_task_list_the_choices(tmp_path):
    result = CliRunner().invoke(cli, ["rank", "--task", "vqa", "--method", "nope"])
    assert result.exit_code == 2
    assert "Invalid value for '--method'" in result.output
    for name in ("hones", "hones-nohead", "hones-randhead", "hones-gaussian"):
        assert f"'{name}'" in result.output
    result = CliRunner().invoke(cli, ["heads", "--task", "nope"])
    assert result.exit_code == 2
    assert "Invalid value for '--task'" in result.output
    for name in ("vqa", "ocr", "caption", "retrieval"):
        assert f"'{name}'" in result.output
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of .*hones-gaussian.*vseam"):
        get_method("nope")


def test_nan_scores_are_refused_naming_the_first_neuron(tmp_path):
    scores = np.zeros((3, 5))
    scores[1, 2] = np.nan
    scores[2, 0] = np.inf
    path = tmp_path / "nan.parquet"
    first = r"2 score\(s\) are NaN or infinite \(first \(layer, index\): \[\(1, 2\), \(2, 0\)\]"
    with pytest.raises(ValueError, match=first):
        write_neuron_table(path, scores, {"method": "x"})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_empty_split_is_a_clear_error(embedded, embedded_engine, benchmark_dir, tmp_path):
    runner = runner_for(embedded, embedded_engine, tmp_path, limit=0)
    with pytest.raises(ValueError, match=r"--limit must be at least 1 \(got 0\)"):
        runner.heads("vqa", utility="logprob")
    with pytest.raises(ValueError, match=r"--limit must be at least 1 \(got 0\)"):
        runner.rank("vqa", "hones-nohead")
    result = CliRunner().invoke(
        cli, ["rank", "--task", "vqa", "--method", "hones-nohead", "--limit", "0", "--out-dir", str(tmp_path / "cli")]
    )
    assert result.exit_code == 2 and "Invalid value for '--limit': 0 is not in the range x>=1" in result.output
    with pytest.raises(ValueError, match="the split has no examples"):
        ShardedRun(None, {}, n_items=0, shard_size=4)

    # a benchmark written with an empty discovery split: the split is absent, and the error says so
    from hones_nn.data.dataset import write_benchmark

    absent = write_benchmark(tmp_path / "absent-bench", {"discovery": []}, {"source": "test"})
    runner = runner_for(embedded, embedded_engine, tmp_path, data=str(absent))
    with pytest.raises(ValueError, match=r"has no split 'discovery' \(available: none\)"):
        runner.heads("vqa", utility="logprob")
    result = CliRunner().invoke(
        cli, ["heads", "--task", "vqa", "--data", str(absent), "--out-dir", str(tmp_path / "c")]
    )
    assert result.exit_code == 2 and "has no split 'discovery'" in result.output, result.output


def test_zero_row_split_file_is_a_clear_error(embedded, embedded_engine, benchmark_dir, tmp_path):
    import pyarrow as pa

    from hones_nn.data.dataset import MANIFEST, features, split_path

    empty = tmp_path / "empty-bench"
    split_path(empty, "discovery").parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([], schema=features().arrow_schema), split_path(empty, "discovery"))
    (empty / MANIFEST).write_text(json.dumps({"source": "test", "splits": {"discovery": 0}}))
    runner = runner_for(embedded, embedded_engine, tmp_path, data=str(empty))
    with pytest.raises(ValueError, match="split 'discovery' of .* has no examples"):
        runner.rank("vqa", "hones-nohead")


# ======================================================================= regressions of bugs found


def test_head_table_from_the_same_weights_loaded_by_path_is_accepted(
    embedded, embedded_engine, benchmark_dir, tmp_path
):
    from hones_nn.models.loading import EMBEDDED_MODELS, load_model

    by_path = load_model(str(EMBEDDED_MODELS["tiny-llava"]))
    assert by_path.weights_hash == embedded.weights_hash
    heads = runner_for(embedded, embedded_engine, tmp_path / "a", limit=2).heads("vqa", utility="logprob")
    table = runner_for(by_path, None, tmp_path / "b", limit=2).rank("vqa", "hones", heads=heads.path, top_heads=2)
    assert table.shape == (4, 1024)


def test_runner_accepts_a_string_out_dir(embedded, embedded_engine, benchmark_dir, tmp_path):
    runner = Runner(loaded=embedded, out_dir=str(tmp_path), progress=False, limit=2, _engine=embedded_engine)
    table = runner.rank("vqa", "hones-nohead")
    assert table.path == tmp_path / "vqa.hones-nohead.parquet"


def test_gaussian_ablation_does_not_depend_on_batch_size(embedded, embedded_engine, benchmark_dir, tmp_path):
    """The noise of each (item, head) is seeded by the item and drawn over its own positions."""
    heads = runner_for(embedded, embedded_engine, tmp_path / "h", limit=4).heads("vqa", utility="logprob")
    tables = []
    for batch in (2, 32):
        runner = runner_for(embedded, embedded_engine, tmp_path / f"b{batch}", limit=4)
        runner.batch_size = batch
        tables.append(runner.rank("vqa", "hones-gaussian", heads=heads.path, top_heads=3).score)
    np.testing.assert_allclose(tables[0], tables[1], rtol=1e-4, atol=1e-5)
