"""A processor-like input builder for Qwen2-VL / Qwen2.5-VL that needs no torchvision.

``Qwen2VLProcessor`` and ``Qwen2_5_VLProcessor`` cannot be built here: their video
processor is mandatory and needs torchvision. For images only, the processor does three
things, which :class:`QwenVLInputs` does the same way:

1. the image processor (``Qwen2VLImageProcessorPil``, the PIL backend) turns each image
   into patches (``pixel_values`` [sum of patches, C*T*P*P]) and a grid
   (``image_grid_thw`` [n_images, 3]);
2. each ``<|image_pad|>`` of the text is expanded to ``t*h*w / merge_size**2`` copies;
3. the tokenizer encodes the text, and ``mm_token_type_ids`` marks image tokens with 1
   (transformers 5.22 Qwen models need it for their multimodal RoPE).

It works with a real checkpoint's tokenizer + image processor
(:meth:`QwenVLInputs.from_pretrained`) as with the tiny ones of ``hones_nn.embedded.tiny_random``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, BatchFeature, Qwen2VLImageProcessorPil

IMAGE_PAD = "<|image_pad|>"
_PLACEHOLDER = "<<<hones-image-placeholder>>>"

# Qwen2-VL-Instruct's chat template, without the video branch.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"  # noqa: E501
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class QwenVLInputs:
    """Tokenizer + ``Qwen2VLImageProcessorPil`` + chat template, called like a processor."""

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None, image_token: str = IMAGE_PAD):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None) or QWEN_CHAT_TEMPLATE
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer does not know the image token {self.image_token!r}")

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    def apply_chat_template(self, conversation, add_generation_prompt: bool = True, tokenize: bool = False, **kwargs):
        if tokenize:
            raise ValueError("QwenVLInputs.apply_chat_template renders text only (tokenize=False)")
        return self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **kwargs,
        )

    def num_image_tokens(self, image_grid_thw: torch.Tensor) -> list[int]:
        return [int(g.prod()) // self.merge_size**2 for g in image_grid_thw]

    def __call__(self, images=None, text=None, return_tensors="pt", padding=True, padding_side="left", **kwargs):
        if text is None:
            raise ValueError("text is required")
        texts = [text] if isinstance(text, str) else list(text)
        data: dict = {}
        counts: list[int] = []
        if images is not None:
            images = [images] if not isinstance(images, (list, tuple)) else list(images)
            processed = self.image_processor(images=images, return_tensors="pt")
            data["pixel_values"] = processed["pixel_values"]
            data["image_grid_thw"] = processed["image_grid_thw"]
            counts = self.num_image_tokens(processed["image_grid_thw"])
        n_placeholders = sum(t.count(self.image_token) for t in texts)
        if n_placeholders != len(counts):
            raise ValueError(f"{n_placeholders} {self.image_token} placeholders in the text but {len(counts)} images")
        expanded, k = [], 0
        for t in texts:
            while self.image_token in t:
                t = t.replace(self.image_token, _PLACEHOLDER * counts[k], 1)
                k += 1
            expanded.append(t.replace(_PLACEHOLDER, self.image_token))
        tok = self.tokenizer(
            expanded, padding=padding, padding_side=padding_side, return_tensors=return_tensors, **kwargs
        )
        input_ids = tok["input_ids"]
        got = (input_ids == self.image_token_id).sum().item() if torch.is_tensor(input_ids) else None
        if got is not None and got != sum(counts):
            raise ValueError(f"image tokens in the encoding ({got}) != image features ({sum(counts)})")
        data["input_ids"] = input_ids
        data["attention_mask"] = tok["attention_mask"]
        data["mm_token_type_ids"] = (input_ids == self.image_token_id).to(input_ids.dtype)
        return BatchFeature(data)

    # ------------------------------------------------------------ persistence
    def save_pretrained(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        (path / "chat_template.jinja").write_text(self.chat_template)

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, trust_remote_code: bool = False, **kwargs) -> QwenVLInputs:
        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code, **kwargs
        )
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path, revision=revision, **kwargs)
        template = _processor_chat_template(name_or_path, revision) or getattr(tokenizer, "chat_template", None)
        return cls(image_processor, tokenizer, chat_template=template)


def _processor_chat_template(name_or_path, revision=None) -> str | None:
    """The processor's chat template file (chat_template.jinja or chat_template.json), if any."""
    from transformers.utils import cached_file

    for filename in ("chat_template.jinja", "chat_template.json"):
        local = Path(name_or_path) / filename if os.path.isdir(name_or_path) else None
        if local is not None:
            resolved = str(local) if local.exists() else None
        else:
            try:
                resolved = cached_file(
                    name_or_path,
                    filename,
                    revision=revision,
                    _raise_exceptions_for_missing_entries=False,
                    _raise_exceptions_for_connection_errors=False,
                )
            except Exception:
                resolved = None
        if resolved:
            text = Path(resolved).read_text()
            if filename.endswith(".json"):
                return json.loads(text).get("chat_template")
            return text
    return None
