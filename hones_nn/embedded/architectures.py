"""The embedded default model: a tiny LLaVA trained on the synthetic benchmark.

Native Hugging Face classes only (``LlavaForConditionalGeneration`` = CLIP vision tower +
multimodal projector + Llama language model, ``LlavaProcessor`` with
``CLIPImageProcessorPil``), so every recipe that runs on it runs unchanged on
llava-hf/llava-1.5-7b-hf.

A second shipped architecture, ``tiny-qwen2.5-vl``, is a
``Qwen2_5_VLForConditionalGeneration`` of the same language-model size (4 layers x 8 heads
x 1,024 MLP neurons), trained by the same script (``--architecture qwen2.5-vl``): its
vision tower is Qwen's windowed ViT over 4-pixel patches merged 2 x 2 (36 image tokens of
8 x 8 pixels, one letter cell each, as tiny-llava's), its inputs are built by
:class:`hones_nn.models.qwen_inputs.QwenVLInputs` (no torchvision here) and its prompts use
the Qwen chat template.

Size, and why: the language model has 4 layers x 1,024 MLP neurons = 4,096 neurons
(the paper's top 1% is then 41 neurons, a set whose masking is measurable) and
4 layers x 8 heads = 32 heads (head dim 16). The vision tower is 2 CLIP layers of width
128 over 8-pixel patches of 48 x 48 images: 36 image tokens, one per letter or shape
quarter, as the synthetic layout is aligned to that grid.
"""

from __future__ import annotations

import math

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from hones_nn.data.synthetic import IMAGE_SIZE, PATCH_SIZE
from hones_nn.embedded.tokenizer import build_tokenizer

# llava-hf's template, reduced to what our tokenizer knows: "USER: <image>\n{text} ASSISTANT:"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}</s>"  # noqa: E501
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

TINY_LLAVA_SIZES = {
    "vision_hidden": 128,
    "vision_layers": 2,
    "vision_heads": 4,
    "vision_mlp": 256,
    "text_hidden": 128,
    "text_layers": 4,
    "text_heads": 8,
    "text_kv_heads": 8,
    "text_mlp": 1024,
}


def tiny_llava_processor(
    tokenizer=None,
    chat_template: str = LLAVA_CHAT_TEMPLATE,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
) -> LlavaProcessor:
    """The tiny LLaVA's processor: CLIP image processing at the synthetic benchmark's size
    (``image_size``, v1's by default), ``tokenizer`` (default: the shipped word tokenizer)
    and ``chat_template``."""
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=chat_template,
    )


def tiny_llava_config(
    tokenizer,
    sizes: dict | None = None,
    text: dict | None = None,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
) -> LlavaConfig:
    """The tiny LLaVA's config: ``sizes`` override :data:`TINY_LLAVA_SIZES`; ``text`` other
    language-model config fields (e.g. ``max_position_embeddings``); ``image_size`` and
    ``patch_size`` the vision tower's (v1's by default)."""
    s = {**TINY_LLAVA_SIZES, **(sizes or {})}
    vision = CLIPVisionConfig(
        hidden_size=s["vision_hidden"],
        intermediate_size=s["vision_mlp"],
        num_hidden_layers=s["vision_layers"],
        num_attention_heads=s["vision_heads"],
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s["text_hidden"],
        intermediate_size=s["text_mlp"],
        num_hidden_layers=s["text_layers"],
        num_attention_heads=s["text_heads"],
        num_key_value_heads=s["text_kv_heads"],
        **{
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": False,
            **(text or {}),
        },
    )
    n_image_tokens = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        image_seq_length=n_image_tokens,
        vision_feature_select_strategy="default",
        # the last layer: -2 (llava-1.5's choice for a 24-layer tower) would skip half of a 2-layer one
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    config.pad_token_id = tokenizer.pad_token_id
    return config


@torch.no_grad()
def reinitialise(model: LlavaForConditionalGeneration, seed: int) -> None:
    """LeCun-normal init of the language model, projector and lm_head.

    HF's default N(0, 0.02) is made for width 4096; at width 128 it leaves the residual
    stream so small that training sits at the answer prior for many minutes (seen in our
    prototypes). std = 1/sqrt(fan_in) keeps activations O(1); embeddings get N(0, 0.1)
    as in the prototype that learned.
    """
    _lecun_init([model.model.language_model, model.model.multi_modal_projector, model.lm_head], seed)


@torch.no_grad()
def _lecun_init(parts, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for part in parts:
        for module in part.modules():
            if isinstance(module, torch.nn.Linear):
                std = 1.0 / math.sqrt(module.in_features)
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.1)


def build_untrained_tiny_llava(seed: int = 0, sizes: dict | None = None):
    """A freshly initialised tiny LLaVA and its processor (the starting point of training)."""
    processor = tiny_llava_processor()
    config = tiny_llava_config(processor.tokenizer, sizes)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    reinitialise(model, seed)
    model.eval()
    return model, processor


# ---------------------------------------------------------------------- Qwen2.5-VL

TINY_QWEN_VISION = {"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 4}
# tiny-qwen2.5-vl reads (issue 17): 4-pixel patches merged 2 x 2 give 36 image tokens of 8 x 8
# pixels on v1's 48 x 48 images, one letter cell each (8-pixel patches gave 9 tokens of 2 x 2 cells,
# and the model trained on them never learned to read: OCR ANLS 0.0000)
TINY_QWEN_PATCH_SIZE = 4


def tiny_qwen_processor(
    image_size: int = IMAGE_SIZE, patch_size: int = TINY_QWEN_PATCH_SIZE, generator: str = "synthetic-v1"
):
    """Our WordPiece vocabulary (``generator``'s) + Qwen's special tokens, with
    ``Qwen2VLImageProcessorPil`` fixed to ``image_size`` squared pixels (v1: 48 x 48, 12 x 12
    patches of 4 pixels, merged 2 x 2: 36 image tokens)."""
    from transformers import Qwen2VLImageProcessorPil

    from hones_nn.embedded.tokenizer import qwen_tokenizer
    from hones_nn.models.qwen_inputs import QWEN_CHAT_TEMPLATE, QwenVLInputs

    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=patch_size,
        temporal_patch_size=2,
        merge_size=2,
    )
    return QwenVLInputs(image_processor, qwen_tokenizer(generator), chat_template=QWEN_CHAT_TEMPLATE)


def tiny_qwen_config(
    tokenizer, image_size: int = IMAGE_SIZE, patch_size: int = TINY_QWEN_PATCH_SIZE, vision_sizes: dict | None = None
):
    """The tiny Qwen2.5-VL's config (tiny-qwen2.5-vl's image and patch size and vision tower by default)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig

    from hones_nn.embedded.tokenizer import QWEN_SPECIAL_TOKENS

    s = TINY_LLAVA_SIZES
    v = {**TINY_QWEN_VISION, **(vision_sizes or {})}
    vision = Qwen2_5_VLVisionConfig(
        **v,
        out_hidden_size=s["text_hidden"],
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=image_size,
        fullatt_block_indexes=[v["depth"] - 1],
    )
    head_dim = s["text_hidden"] // s["text_heads"]
    # the rotary half-dimension split over (temporal, height, width), as Qwen's [16, 24, 24] of 64
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=s["text_hidden"],
        intermediate_size=s["text_mlp"],
        num_hidden_layers=s["text_layers"],
        num_attention_heads=s["text_heads"],
        num_key_value_heads=s["text_kv_heads"],
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.pad_token_id = tokenizer.pad_token_id
    return config


def build_untrained_tiny_qwen(seed: int = 0):
    """A freshly initialised tiny Qwen2.5-VL and its input builder (the starting point of training)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    processor = tiny_qwen_processor()
    config = tiny_qwen_config(processor.tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _lecun_init([model.model.language_model, model.model.visual.merger, model.lm_head], seed)
    model.eval()
    return model, processor


# ---------------------------------------------------------------------- issue 17's models (synthetic-v2)

V2_GENERATOR = "synthetic-v2"
# 8 layers x 2,048 MLP neurons = 16,384 neurons (top 1% = 164); width 64 with 4 heads of 16;
# a 3-layer vision tower over v2's 64 x 64 images in 8-pixel patches (64 image tokens, one
# letter per token). Why width 64: at width 256 (15.3 M parameters) a bf16 training step
# took 1.95 s on two CPU threads (the recipe: about 4 h); at width 64 (3.7 M parameters,
# 15 MB in float32) about 0.7 s, and it reads after 1,500 OCR-only steps. The MLP keeps its
# 2,048 neurons per layer: the point is the neuron count.
LLAVA_16K_SIZES = {
    **TINY_LLAVA_SIZES,
    "vision_layers": 3,
    "text_hidden": 64,
    "text_layers": 8,
    "text_heads": 4,
    "text_kv_heads": 4,
    "text_mlp": 2048,
}
# tiny-qwen2.5-vl's language model over 4-pixel patches merged 2 x 2: 256 patches, 64 image
# tokens of 8 x 8 pixels on a 64 x 64 v2 image (v1's merged tokens held 2 x 2 letters).
QWEN_READER_PATCH_SIZE = 4
QWEN_READER_VISION = {**TINY_QWEN_VISION, "depth": 3}


def build_untrained_llava_16k(seed: int = 0):
    """The larger LLaVA of issue 17, untrained, with its processor (v2 images and vocabulary)."""
    from hones_nn.data import synthetic_v2 as v2

    processor = tiny_llava_processor(build_tokenizer(V2_GENERATOR), image_size=v2.IMAGE_SIZE, patch_size=v2.PATCH_SIZE)
    config = tiny_llava_config(
        processor.tokenizer,
        LLAVA_16K_SIZES,
        text={"max_position_embeddings": 384},
        image_size=v2.IMAGE_SIZE,
        patch_size=v2.PATCH_SIZE,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    reinitialise(model, seed)
    model.eval()
    return model, processor


def build_untrained_qwen_reader(seed: int = 0):
    """The tiny Qwen2.5-VL of issue 17 that can read: 64 image tokens per v2 image, untrained."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from hones_nn.data import synthetic_v2 as v2

    processor = tiny_qwen_processor(v2.IMAGE_SIZE, QWEN_READER_PATCH_SIZE, generator=V2_GENERATOR)
    config = tiny_qwen_config(processor.tokenizer, v2.IMAGE_SIZE, QWEN_READER_PATCH_SIZE, QWEN_READER_VISION)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _lecun_init([model.model.language_model, model.model.visual.merger, model.lm_head], seed)
    model.eval()
    return model, processor


BUILDERS = {
    "llava": build_untrained_tiny_llava,
    "qwen2.5-vl": build_untrained_tiny_qwen,
    "llava-16k": build_untrained_llava_16k,
    "qwen2.5-vl-reader": build_untrained_qwen_reader,
}
# the benchmark generator each architecture's images and vocabulary are made for
ARCHITECTURE_GENERATOR = {
    "llava": "synthetic-v1",
    "qwen2.5-vl": "synthetic-v1",
    "llava-16k": V2_GENERATOR,
    "qwen2.5-vl-reader": V2_GENERATOR,
}
