"""Issue 17's untrained models: the promised sizes, and image tokens on a synthetic-v2 image."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from hones_nn.data import synthetic_v2 as v2
from hones_nn.embedded.architectures import ARCHITECTURE_GENERATOR, BUILDERS
from hones_nn.models.adapters import adapter_for


def _v2_image() -> Image.Image:
    return Image.fromarray(v2.render(v2.sample_scene(random.Random(0))).pixels)


@pytest.fixture(scope="module")
def llava16k():
    return BUILDERS["llava-16k"](seed=0)


@pytest.fixture(scope="module")
def reader():
    return BUILDERS["qwen2.5-vl-reader"](seed=0)


def test_llava_16k_has_16384_neurons_and_fits_40_mb_in_float32(llava16k):
    model, _ = llava16k
    mlps = [layer.mlp for layer in model.model.language_model.layers]
    neurons = sum(mlp.down_proj.in_features for mlp in mlps)
    assert len(mlps) == 8 and neurons == 16_384
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 4 <= 40_000_000  # float32 bytes: the shipped copy needs no bf16


@pytest.mark.parametrize(
    ("fixture", "patch"), [("llava16k", v2.PATCH_SIZE), ("reader", 4)], ids=["llava-16k", "qwen2.5-vl-reader"]
)
def test_one_image_token_per_8x8_cell_of_a_v2_image(fixture, patch, request):
    """64 x 64 pixels in 8-pixel cells: 64 image tokens, for LLaVA one per 8-pixel patch,
    for Qwen one per 2 x 2 merge of 4-pixel patches; the vision tower yields as many."""
    model, processor = request.getfixturevalue(fixture)
    enc = adapter_for(model.config).encode(processor, [_v2_image()], ["Describe the image in one sentence."])
    cells = (v2.IMAGE_SIZE // 8) ** 2
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.image_token)
    assert int((enc.inputs["input_ids"] == image_token).sum()) == cells == 64
    if "image_grid_thw" in enc.inputs:
        assert enc.inputs["image_grid_thw"].tolist() == [[1, v2.IMAGE_SIZE // patch, v2.IMAGE_SIZE // patch]]
    with torch.no_grad():
        logits = model(**enc.inputs).logits
    assert logits.shape[1] == enc.inputs["input_ids"].shape[1] and torch.isfinite(logits).all()


def test_the_shipped_architectures_keep_v1():
    assert ARCHITECTURE_GENERATOR["llava"] == ARCHITECTURE_GENERATOR["qwen2.5-vl"] == "synthetic-v1"
    from hones_nn.embedded.architectures import TINY_LLAVA_SIZES, tiny_llava_config, tiny_llava_processor

    processor = tiny_llava_processor()
    config = tiny_llava_config(processor.tokenizer)
    assert config.vision_config.image_size == 48 and config.text_config.intermediate_size == 1024
    assert config.text_config.num_hidden_layers == TINY_LLAVA_SIZES["text_layers"] == 4


def test_a_mismatched_generator_is_refused(tmp_path):
    from hones_nn.embedded.train import TrainConfig

    assert TrainConfig(out=str(tmp_path), architecture="llava-16k").generator == "synthetic-v2"
    with pytest.raises(ValueError, match="--generator synthetic-v1.*llava-16k.*synthetic-v2"):
        TrainConfig(out=str(tmp_path), architecture="llava-16k", generator="synthetic-v1")


def test_neuron_l1_penalty_is_the_mean_write_of_every_ffn_neuron(llava16k):
    """--neuron-l1's penalty, recomputed from the weights: a_n = silu(gate_n . x) * (up_n . x) at
    each real token of each layer's MLP input x, times ||W_down[:, n]||, averaged over tokens,
    neurons and layers."""
    from hones_nn.embedded.train import TrainConfig, _NeuronWrites

    model, processor = llava16k
    enc = adapter_for(model.config).encode(processor, [_v2_image(), _v2_image()], ["What is written?", "Describe."])
    layers = model.model.language_model.layers
    mlp_inputs = []
    hooks = [layer.mlp.register_forward_hook(lambda _m, args, _o: mlp_inputs.append(args[0])) for layer in layers]
    writes = _NeuronWrites(model, adapter_for(model.config))
    with torch.no_grad():
        model(**enc.inputs)
    for hook in hooks:
        hook.remove()
    real = enc.inputs["attention_mask"].bool()
    expected = []
    for layer, x in zip(layers, mlp_inputs):
        x = x[real]
        a = torch.nn.functional.silu(x @ layer.mlp.gate_proj.weight.T) * (x @ layer.mlp.up_proj.weight.T)
        expected.append((a.abs() * layer.mlp.down_proj.weight.norm(dim=0)).mean())
    penalty = writes.penalty(enc.inputs["attention_mask"])
    assert float(penalty) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)
    assert writes.inputs == []  # cleared for the next step
    writes.remove()
    with torch.no_grad():
        model(**enc.inputs)
    assert writes.inputs == []
    with pytest.raises(ValueError, match="--neuron-l1 -1.0"):
        TrainConfig(out="unused", architecture="llava-16k", neuron_l1=-1.0)
