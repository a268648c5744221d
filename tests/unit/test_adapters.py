"""Architecture adapters on tiny random models of the four supported HF classes.

Everything is built in memory (no hub, no files except tmp_path round trips), on one
CPU thread.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

import nnsight  # noqa: E402

from hones_nn.embedded.tiny_random import TINY_ARCHITECTURES, build_tiny_random, save_tiny  # noqa: E402
from hones_nn.models import loading  # noqa: E402
from hones_nn.models.adapters import (  # noqa: E402
    GLOBAL_PARTS,
    PER_LAYER_PARTS,
    SUPPORTED_ARCHITECTURES,
    ArchitectureAdapter,
    adapter_for,
    register_adapter,
)
from hones_nn.models.loading import load_model, parse_dtype  # noqa: E402
from hones_nn.models.qwen_inputs import QwenVLInputs  # noqa: E402

EXPECTED_CLASS = {
    "llava": "LlavaForConditionalGeneration",
    "llava-next": "LlavaNextForConditionalGeneration",
    "qwen2-vl": "Qwen2VLForConditionalGeneration",
    "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
}
# (width, height) of the three images: different sizes, so LLaVA-NeXT (anyres) and Qwen
# (native resolution) give rows different numbers of image tokens
IMAGE_SIZES = {
    "llava": [(48, 48), (40, 56), (64, 48)],
    "llava-next": [(56, 56), (28, 56), (40, 56)],
    "qwen2-vl": [(56, 56), (28, 56), (84, 56)],
    "qwen2.5-vl": [(56, 56), (28, 56), (84, 56)],
}
TEXTS = [
    "What color is the circle ?",
    "Describe the image in one sentence .",
    "Candidate : a red square and a blue circle . Does the candidate correctly describe the image ? Answer exactly Yes or No .",  # noqa: E501
]
ANSWERS = ["red", "a blue circle and a red square", "Yes"]


def _images(arch: str, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in IMAGE_SIZES[arch]]


@pytest.fixture(scope="module", params=TINY_ARCHITECTURES)
def tiny(request, tiny_model):
    arch = request.param
    loaded = tiny_model(arch)
    images = _images(arch)
    enc = loaded.adapter.encode(loaded.processor, images, TEXTS, answers=ANSWERS)
    with torch.no_grad():
        logits = loaded.model(**enc.inputs).logits
    return arch, loaded, images, enc, logits


def _n_features(output, hidden: int) -> int:
    """Number of image feature vectors in a get_image_features output (tensor, tuple or list)."""
    pooled = getattr(output, "pooler_output", output)
    if torch.is_tensor(pooled):
        return pooled.numel() // hidden
    return sum(_n_features(p, hidden) for p in pooled)


def _image_features_of_one(loaded, enc, b: int) -> int:
    """Image features the model makes of row b's image alone."""
    model, inputs = loaded.model, enc.inputs
    hidden = loaded.adapter.sizes(model).hidden_size
    with torch.no_grad():
        if "image_grid_thw" in inputs:
            grid = inputs["image_grid_thw"]
            per_image = grid.prod(-1)
            start = int(per_image[:b].sum())
            pixels = inputs["pixel_values"][start : start + int(per_image[b])]
            out = model.model.get_image_features(pixel_values=pixels, image_grid_thw=grid[b : b + 1])
        elif "image_sizes" in inputs:
            out = model.model.get_image_features(
                pixel_values=inputs["pixel_values"][b : b + 1], image_sizes=inputs["image_sizes"][b : b + 1]
            )
        else:
            out = model.model.get_image_features(pixel_values=inputs["pixel_values"][b : b + 1])
    return _n_features(out, hidden)


# ---------------------------------------------------------------------- registry
def test_registry_covers_the_four_classes():
    assert set(SUPPORTED_ARCHITECTURES) == set(EXPECTED_CLASS.values())
    for name in SUPPORTED_ARCHITECTURES:
        adapter = adapter_for(name)
        assert adapter.architecture == name
        assert adapter.model_class().__name__ == name
    assert adapter_for("qwen2_5_vl").architecture == "Qwen2_5_VLForConditionalGeneration"  # by model_type
    with pytest.raises(ValueError, match="already registered"):
        register_adapter(ArchitectureAdapter("LlavaForConditionalGeneration", "llava", "llava"))


def test_unknown_architecture_lists_supported():
    from transformers import BertConfig, GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    for obj, label in [
        (gpt2, "GPT2LMHeadModel"),
        (nnsight.NNsight(gpt2), "GPT2LMHeadModel"),
        (BertConfig(), "BertConfig"),
    ]:
        with pytest.raises(ValueError) as info:
            adapter_for(obj)
        message = str(info.value)
        assert label in message
        for name in EXPECTED_CLASS.values():
            assert name in message


def test_parse_dtype():
    assert parse_dtype(None) is None
    assert parse_dtype("float32") is torch.float32
    assert parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("torch.float16") is torch.float16
    assert parse_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="float32"):
        parse_dtype("int8")


def test_missing_embedded_model_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setitem(loading.EMBEDDED_MODELS, "tiny-missing", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape("hones-nn train-embedded --recipe --out-dir")):
        load_model("tiny-missing")


# ---------------------------------------------------------------------- per architecture
def test_class_sizes_and_paths(tiny):
    arch, loaded, _, _, _ = tiny
    model, adapter = loaded.model, loaded.adapter
    assert type(model).__name__ == EXPECTED_CLASS[arch]
    assert adapter_for(model) is adapter and adapter_for(model.config) is adapter
    assert loaded.family == adapter.family == ("qwen" if arch.startswith("qwen") else "llava")
    sizes = adapter.sizes(model)
    assert sizes.num_layers == len(adapter.layers(model)) == 2
    assert sizes.num_heads == 4 and sizes.head_dim == 16 and sizes.hidden_size == 64 and sizes.d_ff == 128
    assert sizes.num_kv_heads == (4 if arch == "llava" else 2)  # grouped-query attention except LLaVA-1.5
    assert sizes.vocab_size == adapter.lm_head(model).out_features == len(loaded.processor.tokenizer)
    assert sizes.image_token_id == loaded.processor.tokenizer.convert_tokens_to_ids(loaded.processor.image_token)
    for i in range(sizes.num_layers):
        assert adapter.o_proj(model, i).in_features == sizes.num_heads * sizes.head_dim
        assert adapter.down_proj(model, i).in_features == sizes.d_ff
        assert adapter.gate_proj(model, i).out_features == adapter.up_proj(model, i).out_features == sizes.d_ff
        assert adapter.attention(model, i).o_proj is adapter.o_proj(model, i)
        assert adapter.mlp(model, i).act_fn is adapter.act_fn(model, i)
    assert adapter.embed_tokens(model) is model.get_input_embeddings()
    assert type(adapter.final_norm(model)).__name__.endswith("RMSNorm")
    assert isinstance(adapter.vision_tower(model), torch.nn.Module)
    assert isinstance(adapter.projector(model), torch.nn.Module)
    # the same paths resolve on an nnsight envoy, to envoys of the same modules
    envoy = nnsight.NNsight(model)
    assert adapter_for(envoy) is adapter
    for part in PER_LAYER_PARTS:
        assert adapter.get(envoy, part, 1)._module is adapter.get(model, part, 1)
    for part in GLOBAL_PARTS:
        assert adapter.get(envoy, part)._module is adapter.get(model, part)
    assert adapter.path("o_proj", 1) == "model.language_model.layers.1.self_attn.o_proj"
    assert adapter.path("down_proj", 0) == "model.language_model.layers.0.mlp.down_proj"


def test_image_tokens_match_features(tiny):
    _, loaded, _, enc, logits = tiny
    image_id = loaded.adapter.image_token_id(loaded.model)
    counts = (enc.input_ids == image_id).sum(1).tolist()
    expected = [_image_features_of_one(loaded, enc, b) for b in range(3)]
    assert counts == expected
    assert torch.isfinite(logits).all()


def test_left_padding_matches_rows_alone(tiny):
    arch, loaded, images, enc, logits = tiny
    ids, mask = enc.input_ids, enc.attention_mask
    S = enc.seq_len
    assert mask[:, -1].all(), "left padding: every row ends at the right edge"
    lengths = mask.sum(1)
    assert (lengths < S).any(), "rows of different lengths, so some are padded"
    pad_id = loaded.processor.tokenizer.pad_token_id
    for b in range(3):
        assert (ids[b, : S - lengths[b]] == pad_id).all() and not mask[b, : S - lengths[b]].any()
        alone = loaded.adapter.encode(loaded.processor, [images[b]], [TEXTS[b]], answers=[ANSWERS[b]])
        assert alone.seq_len == int(lengths[b])
        assert torch.equal(alone.input_ids[0], ids[b, S - lengths[b] :])
        with torch.no_grad():
            alone_logits = loaded.model(**alone.inputs).logits
        t, t_alone = int(enc.last_prompt_index[b]), int(alone.last_prompt_index[0])
        assert t - t_alone == S - lengths[b]
        torch.testing.assert_close(logits[b, t], alone_logits[0, t_alone], atol=1e-4, rtol=0)
        # the teacher-forced answer positions too
        torch.testing.assert_close(logits[b, t:], alone_logits[0, t_alone:], atol=1e-4, rtol=0)


def test_answer_mask_and_last_prompt_index(tiny):
    _, loaded, images, enc, _ = tiny
    tok = loaded.processor.tokenizer
    S = enc.seq_len
    for b, answer in enumerate(ANSWERS):
        expected = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert enc.answer_ids[b] == expected
        row_mask = enc.answer_mask[b]
        assert int(row_mask.sum()) == len(expected)
        assert row_mask[S - len(expected) :].all() and not row_mask[: S - len(expected)].any()
        assert enc.input_ids[b][row_mask].tolist() == expected
        assert int(enc.last_prompt_index[b]) == S - 1 - len(expected)
        assert tok.bos_token_id is None or tok.bos_token_id not in expected
    plain = loaded.adapter.encode(loaded.processor, images, TEXTS)
    assert plain.answer_mask is None and plain.answer_ids == [[], [], []]
    assert plain.last_prompt_index.tolist() == [plain.seq_len - 1] * 3
    # the prompt part of each row is the prompt alone
    for b in range(3):
        n = len(enc.answer_ids[b])
        prompt_row = enc.input_ids[b, : S - n][enc.attention_mask[b, : S - n].bool()]
        plain_row = plain.input_ids[b][plain.attention_mask[b].bool()]
        assert torch.equal(prompt_row, plain_row)


def test_nnsight_trace_reads_and_masks_heads(tiny):
    _, loaded, _, enc, logits = tiny
    model, adapter = loaded.model, loaded.adapter
    sizes = adapter.sizes(model)
    B, S = enc.input_ids.shape
    layer = sizes.num_layers - 1
    nn = nnsight.NNsight(model)
    with torch.no_grad(), nn.trace(**enc.inputs):
        heads_in = adapter.o_proj(nn, layer).input.save()  # in execution order: attention, then MLP
        neurons = adapter.down_proj(nn, layer).input.save()
        traced = nn.output.logits.save()
    assert tuple(heads_in.shape) == (B, S, sizes.num_heads * sizes.head_dim)
    assert tuple(neurons.shape) == (B, S, sizes.d_ff)
    torch.testing.assert_close(traced, logits, atol=1e-5, rtol=0)

    sl = adapter.head_slice(model, 1)
    with torch.no_grad(), nn.trace(**enc.inputs):
        x = adapter.o_proj(nn, layer).input
        x[..., sl] = 0
        masked = nn.output.logits.save()
    rows = torch.arange(B)
    delta = (masked[rows, enc.last_prompt_index] - logits[rows, enc.last_prompt_index]).abs().max()
    assert delta > 1e-3

    # the same edit with a plain torch hook gives the same logits
    def pre_hook(module, args):
        h = args[0].clone()
        h[..., sl] = 0
        return (h,) + args[1:]

    handle = adapter.o_proj(model, layer).register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            hooked = model(**enc.inputs).logits
    finally:
        handle.remove()
    torch.testing.assert_close(masked, hooked, atol=1e-5, rtol=0)


def test_reference_compat_prompt(tiny_model):
    loaded = tiny_model("llava")
    adapter, processor = loaded.adapter, loaded.processor
    assert adapter.prompt(processor, "Describe .") == "USER: <image>\nDescribe . ASSISTANT:"
    assert adapter.prompt(processor, "Describe .", reference_compat=True) == "USER: <image>\nDescribe .\nASSISTANT:"
    enc = adapter.encode(processor, _images("llava")[:1], ["Describe ."], reference_compat=True)
    assert enc.prompts == ["USER: <image>\nDescribe .\nASSISTANT:"]


@pytest.mark.parametrize("arch", ["llava", "qwen2.5-vl"])
def test_load_model_round_trip(arch, tmp_path):
    built = build_tiny_random(arch, seed=1)
    path = save_tiny(arch, tmp_path / arch, seed=1)
    loaded = load_model(str(path))
    assert type(loaded.model).__name__ == EXPECTED_CLASS[arch]
    assert not loaded.model.training
    assert loaded.adapter is built.adapter and loaded.family == built.family
    assert loaded.model_id == str(path) and loaded.revision is None
    assert re.fullmatch(r"[0-9a-f]{16}", loaded.weights_hash)
    assert load_model(str(path)).weights_hash == loaded.weights_hash
    if arch.startswith("qwen"):
        assert isinstance(loaded.processor, QwenVLInputs)
    images = _images(arch)
    enc_built = built.adapter.encode(built.processor, images, TEXTS, answers=ANSWERS)
    enc_loaded = loaded.encode(images, TEXTS, answers=ANSWERS)
    assert enc_loaded.prompts == enc_built.prompts
    for key, value in enc_built.inputs.items():
        torch.testing.assert_close(enc_loaded.inputs[key], value, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(**enc_loaded.inputs).logits, built.model(**enc_built.inputs).logits, atol=1e-5, rtol=0
        )
