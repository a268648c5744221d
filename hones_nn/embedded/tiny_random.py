"""Tiny random models of the real Hugging Face classes, built in memory, for tests.

    loaded = build_tiny_random("qwen2.5-vl")            # LoadedModel, no files, no network
    path = save_tiny("llava-next", tmp_path / "m")      # save_pretrained, for load_model(path)

Each is a few layers of width 64 with 4 heads (grouped-query attention with 2 key/value
heads for LLaVA-NeXT and both Qwen), a one- or two-layer vision tower on small images,
a local WordPiece tokenizer (the vocabulary of ``hones_nn.embedded.tokenizer`` plus the
family's special tokens) and the family's processor / input builder. The weights are
random (LeCun-normal Linear layers, so a masked head visibly moves the logits).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLVisionConfig,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen2VLTextConfig,
    Qwen2VLVisionConfig,
)

from hones_nn.embedded.architectures import LLAVA_CHAT_TEMPLATE, tiny_llava_config, tiny_llava_processor
from hones_nn.embedded.tokenizer import QWEN_SPECIAL_TOKENS, build_tokenizer, qwen_tokenizer
from hones_nn.models.adapters import adapter_for
from hones_nn.models.loading import LoadedModel
from hones_nn.models.qwen_inputs import QWEN_CHAT_TEMPLATE, QwenVLInputs

TINY_ARCHITECTURES = ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl")

TEXT = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "mlp": 128}

# LLaVA-NeXT: 28 x 28 base tiles of 7-pixel patches (16 patches + CLS), anyres up to 56 x 56
NEXT_TILE, NEXT_PATCH = 28, 7
NEXT_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]
# Qwen: 14-pixel patches merged 2 x 2; between 28 x 28 (1 token) and 4,704 pixels (6 tokens)
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 28 * 28, 56 * 84


def _normalise(architecture: str) -> str:
    key = architecture.lower().replace("_", "-")
    key = {"qwen2vl": "qwen2-vl", "qwen2.5vl": "qwen2.5-vl", "qwen2-5-vl": "qwen2.5-vl", "llavanext": "llava-next"}.get(
        key, key
    )
    if key not in TINY_ARCHITECTURES:
        raise ValueError(f"no tiny model for {architecture!r}; choose one of {', '.join(TINY_ARCHITECTURES)}")
    return key


# ---------------------------------------------------------------------- configs
def _llama(tokenizer, kv_heads: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT["hidden"],
        intermediate_size=TEXT["mlp"],
        num_hidden_layers=TEXT["layers"],
        num_attention_heads=TEXT["heads"],
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _clip(image_size: int, patch_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
    )


def _qwen_text_kwargs(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=TEXT["hidden"],
        intermediate_size=TEXT["mlp"],
        num_hidden_layers=TEXT["layers"],
        num_attention_heads=TEXT["heads"],
        num_key_value_heads=TEXT["kv_heads"],
        max_position_embeddings=1024,
        # head_dim 16: the 8 rotary frequencies split over (temporal, height, width)
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _qwen_token_ids(tokenizer) -> dict:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _build(architecture: str):
    """(config, processor) of one tiny architecture."""
    if architecture == "llava":
        processor = tiny_llava_processor()
        sizes = {
            "vision_hidden": 32,
            "vision_layers": 1,
            "vision_heads": 2,
            "vision_mlp": 64,
            "text_hidden": TEXT["hidden"],
            "text_layers": TEXT["layers"],
            "text_heads": TEXT["heads"],
            "text_kv_heads": TEXT["heads"],
            "text_mlp": TEXT["mlp"],  # LLaVA-1.5: full multi-head attention
        }
        return tiny_llava_config(processor.tokenizer, sizes), processor
    if architecture == "llava-next":
        tokenizer = build_tokenizer()
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": NEXT_TILE},
            crop_size={"height": NEXT_TILE, "width": NEXT_TILE},
            image_grid_pinpoints=NEXT_PINPOINTS,
            do_pad=True,
            do_convert_rgb=True,
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=NEXT_PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
        config = LlavaNextConfig(
            vision_config=_clip(NEXT_TILE, NEXT_PATCH),
            text_config=_llama(tokenizer, TEXT["kv_heads"]),
            image_token_index=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
            image_grid_pinpoints=NEXT_PINPOINTS,
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            image_seq_length=(NEXT_TILE // NEXT_PATCH) ** 2,
        )
        config.pad_token_id = tokenizer.pad_token_id
        return config, processor
    # Qwen2-VL / Qwen2.5-VL
    tokenizer = qwen_tokenizer()
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    processor = QwenVLInputs(image_processor, tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
    if architecture == "qwen2-vl":
        vision = Qwen2VLVisionConfig(
            depth=1,
            embed_dim=32,
            hidden_size=TEXT["hidden"],
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        config = Qwen2VLConfig(
            text_config=Qwen2VLTextConfig(**_qwen_text_kwargs(tokenizer)).to_dict(),
            vision_config=vision.to_dict(),
            **_qwen_token_ids(tokenizer),
        )
    else:
        vision = Qwen2_5_VLVisionConfig(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=TEXT["hidden"],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        )
        config = Qwen2_5_VLConfig(
            text_config=Qwen2_5_VLTextConfig(**_qwen_text_kwargs(tokenizer)).to_dict(),
            vision_config=vision.to_dict(),
            **_qwen_token_ids(tokenizer),
        )
    config.pad_token_id = tokenizer.pad_token_id
    return config, processor


@torch.no_grad()
def _reinitialise(model: torch.nn.Module, seed: int) -> None:
    """LeCun-normal Linear weights, N(0, 1) embeddings: O(1) activations at width 64."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            std = 1.0 / math.sqrt(module.in_features)
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
        elif isinstance(module, torch.nn.Embedding):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator))


def in_memory(model, processor, model_id: str) -> LoadedModel:
    """A model built in memory (no checkpoint: no revision, no weights hash) as
    ``load_model`` hands one over: in eval mode, with its architecture's adapter."""
    model.eval()
    adapter = adapter_for(model.config)
    return LoadedModel(
        model=model,
        processor=processor,
        adapter=adapter,
        model_id=model_id,
        revision=None,
        weights_hash=None,
        family=adapter.family,
    )


def build_tiny_random(architecture: str, seed: int = 0, save_dir=None) -> LoadedModel:
    """A tiny random model of ``architecture`` ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl")."""
    key = _normalise(architecture)
    config, processor = _build(key)
    adapter = adapter_for(config)
    torch.manual_seed(seed)
    model = adapter.model_class()(config)
    _reinitialise(model, seed)
    loaded = in_memory(model, processor, f"tiny-random-{key}")
    if save_dir is not None:
        _save(loaded, save_dir)
    return loaded


def _save(loaded: LoadedModel, path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(path)
    loaded.processor.save_pretrained(path)
    return path


def save_tiny(architecture: str, path, seed: int = 0) -> Path:
    """Build a tiny random ``architecture`` and save it (model + processor) to ``path``."""
    return _save(build_tiny_random(architecture, seed=seed), path)


# The language model of LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf's text_config): with
# :func:`weightless_copy`, a 7B-shaped client folder for which no weights exist anywhere.
LLAVA_15_7B_TEXT = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "vocab_size": 32064,
    "max_position_embeddings": 4096,
}


def weightless_copy(dest, text_config: dict | None = None, name: str = "tiny-llava") -> Path:
    """A copy of the embedded model ``name``'s folder without its weight files (config,
    processor and tokenizer only: what a remote client reads), its language model's config
    updated with ``text_config`` (e.g. :data:`LLAVA_15_7B_TEXT`). The vision tower stays the
    embedded one, so the embedded processor's images still fit it."""
    import json
    import shutil

    from hones_nn.models.loading import EMBEDDED_MODELS

    dest = Path(dest)
    dest.mkdir(parents=True)
    for f in Path(EMBEDDED_MODELS[name]).iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, dest / f.name)
    if text_config:
        config = json.loads((dest / "config.json").read_text())
        config["text_config"].update(text_config)
        (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest
