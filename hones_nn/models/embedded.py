"""The embedded default model: a tiny LLaVA trained on the synthetic benchmark.

Native Hugging Face classes only (``LlavaForConditionalGeneration`` = CLIP vision tower +
multimodal projector + Llama language model, ``LlavaProcessor`` with
``CLIPImageProcessorPil``), so every recipe that runs on it runs unchanged on
llava-hf/llava-1.5-7b-hf.

Size, and why: the language model has 4 layers x 1,024 MLP neurons = 4,096 neurons
(the paper's top 1% is then 41 neurons, a set whose masking is measurable) and
4 layers x 8 heads = 32 heads (head dim 16). The vision tower is 2 CLIP layers of width
128 over 8-pixel patches of 48 x 48 images: 36 image tokens, one per letter or shape
quarter, as the synthetic layout is aligned to that grid.
"""

from __future__ import annotations

import math
from pathlib import Path

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
from hones_nn.models.tokenizer import build_tokenizer

EMBEDDED_DIR = Path(__file__).parent / "embedded"
EMBEDDED_MODELS = {"tiny-llava": EMBEDDED_DIR / "tiny-llava"}
DEFAULT_MODEL = "tiny-llava"

# llava-hf's template, reduced to what our tokenizer knows: "USER: <image>\n{text} ASSISTANT:"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}</s>"
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


def tiny_llava_processor() -> LlavaProcessor:
    tokenizer = build_tokenizer()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def tiny_llava_config(tokenizer, sizes: dict | None = None) -> LlavaConfig:
    s = {**TINY_LLAVA_SIZES, **(sizes or {})}
    vision = CLIPVisionConfig(
        hidden_size=s["vision_hidden"],
        intermediate_size=s["vision_mlp"],
        num_hidden_layers=s["vision_layers"],
        num_attention_heads=s["vision_heads"],
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=3,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s["text_hidden"],
        intermediate_size=s["text_mlp"],
        num_hidden_layers=s["text_layers"],
        num_attention_heads=s["text_heads"],
        num_key_value_heads=s["text_kv_heads"],
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    n_image_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
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
    generator = torch.Generator().manual_seed(seed)
    parts = [model.model.language_model, model.model.multi_modal_projector, model.lm_head]
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
