"""Architecture adapters: the ONE place that knows where things live in each model class.

Every method of the package reaches into a model only through an
:class:`ArchitectureAdapter`: the decoder layers, per layer the attention block and its
``o_proj`` (whose input is the concatenation of the per-head outputs, the place HONES
reads and masks heads), the MLP (``act_fn``, ``gate_proj``, ``up_proj``, ``down_proj``;
the input of ``down_proj`` is the FFN neuron activation), the final norm, ``lm_head``,
the vision tower, the multimodal projector and the token embedding.

Paths are dotted attribute paths (``"model.language_model.layers"``) whose integer parts
index module lists. :meth:`ArchitectureAdapter.resolve` follows a path on a Hugging Face
module and on an ``nnsight.NNsight(model)`` envoy alike (both support ``getattr`` and
``[int]``), so the same adapter serves plain forwards and traces.

Supported (transformers 5.22 module trees; all four share
``model.language_model.layers`` and ``lm_head`` at the top):

* ``LlavaForConditionalGeneration`` (LLaVA-1.5): vision tower ``model.vision_tower``
  (CLIP), projector ``model.multi_modal_projector``;
* ``LlavaNextForConditionalGeneration``: as LLaVA, plus anyres tiling (``image_sizes``);
* ``Qwen2VLForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration``:
  vision tower ``model.visual``, projector (patch merger) ``model.visual.merger``.

Inputs: :meth:`ArchitectureAdapter.encode` builds ONE processor-batched, left-padded
encoding for the whole batch (nnsight 0.8 cannot batch images across invokes), with the
answers teacher-forced after the prompt when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

FAMILIES = ("llava", "qwen")


@dataclass(frozen=True)
class ModelSizes:
    """Sizes of the language model, read from the config."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    hidden_size: int
    vocab_size: int
    image_token_id: int

    @property
    def num_neurons(self) -> int:
        return self.num_layers * self.d_ff


@dataclass
class Encoded:
    """One batched, left-padded model input.

    ``inputs``: keyword tensors for ``model(**inputs)`` or ``nnsight_model.trace(**inputs)``.
    ``last_prompt_index``: [B] position (from the left of the padded tensor) of the last
    prompt token T; ``S - 1`` in every row when there are no answers.
    ``answer_mask``: bool [B, S], True on the teacher-forced answer tokens and the final
    EOS; None without answers. ``answer_ids``: per row, the answer token ids + EOS
    (empty lists without answers).
    """

    inputs: dict[str, torch.Tensor]
    last_prompt_index: torch.Tensor  # long
    answer_mask: torch.Tensor | None
    answer_ids: list[list[int]]
    prompts: list[str] = field(default_factory=list)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]

    @property
    def batch_size(self) -> int:
        return int(self.inputs["input_ids"].shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    def to(self, device=None, dtype: torch.dtype | None = None) -> Encoded:
        """A copy with the tensors of ``inputs`` on ``device``; floating ones (pixels) cast to ``dtype``."""
        inputs = {}
        for key, value in self.inputs.items():
            if torch.is_tensor(value):
                value = value.to(
                    device=device, dtype=dtype if dtype is not None and value.is_floating_point() else None
                )
            inputs[key] = value
        return Encoded(inputs, self.last_prompt_index, self.answer_mask, self.answer_ids, self.prompts)


# The part names understood by ArchitectureAdapter.path; per-layer ones take a layer index.
PER_LAYER_PARTS = ("layer", "attention", "o_proj", "mlp", "act_fn", "gate_proj", "up_proj", "down_proj")
GLOBAL_PARTS = ("layers", "final_norm", "lm_head", "vision_tower", "projector", "embed_tokens")

# Per-token input tensors (shape [B, S]) that encode re-pads, with their pad value and the
# value appended answer tokens get (input_ids: neither is used; the tokenizer's pad id and
# the answer's own ids are).
_TOKEN_KEYS: dict[str, tuple[int, int]] = {"input_ids": (-1, -1), "attention_mask": (0, 1), "mm_token_type_ids": (0, 0)}


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where the parts of one architecture live, its sizes, and how to build its inputs."""

    architecture: str  # the transformers class name, e.g. "LlavaForConditionalGeneration"
    model_type: str  # config.model_type, e.g. "llava"
    family: str  # prompt family of hones_nn.tasks.prompts: "llava" or "qwen"
    layers_path: str = "model.language_model.layers"
    # relative to one decoder layer
    attention_path: str = "self_attn"
    o_proj_path: str = "self_attn.o_proj"
    mlp_path: str = "mlp"
    act_fn_path: str = "mlp.act_fn"
    gate_proj_path: str = "mlp.gate_proj"
    up_proj_path: str = "mlp.up_proj"
    down_proj_path: str = "mlp.down_proj"
    # from the top-level model
    final_norm_path: str = "model.language_model.norm"
    lm_head_path: str = "lm_head"
    vision_tower_path: str = "model.vision_tower"
    projector_path: str = "model.multi_modal_projector"
    embed_tokens_path: str = "model.language_model.embed_tokens"
    # the keyword inputs the model's forward takes from an encoding
    input_keys: tuple[str, ...] = ("input_ids", "attention_mask", "pixel_values")

    # ---------------------------------------------------------------- classes
    def model_class(self):
        """The transformers class of this architecture."""
        import transformers

        return getattr(transformers, self.architecture)

    # ---------------------------------------------------------------- paths
    def path(self, part: str, layer: int | None = None) -> str:
        """The full dotted path of ``part`` (one of PER_LAYER_PARTS with ``layer``, or GLOBAL_PARTS).

        >>> adapter_for("LlavaForConditionalGeneration").path("o_proj", 3)
        'model.language_model.layers.3.self_attn.o_proj'
        """
        if part in PER_LAYER_PARTS:
            if layer is None:
                raise ValueError(f"part {part!r} is per layer: give a layer index")
            base = f"{self.layers_path}.{int(layer)}"
            if part == "layer":
                return base
            return f"{base}.{getattr(self, part + '_path')}"
        if part in GLOBAL_PARTS:
            if layer is not None:
                raise ValueError(f"part {part!r} is not per layer")
            return getattr(self, part + "_path")
        raise ValueError(f"unknown part {part!r}; known: {', '.join(PER_LAYER_PARTS + GLOBAL_PARTS)}")

    @staticmethod
    def resolve(root: Any, dotted: str) -> Any:
        """Follow ``dotted`` from ``root`` (an HF module or an nnsight envoy); digits index lists."""
        obj = root
        for part in dotted.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    def get(self, root: Any, part: str, layer: int | None = None) -> Any:
        return self.resolve(root, self.path(part, layer))

    def layers(self, root):
        return self.resolve(root, self.layers_path)

    def layer(self, root, i: int):
        return self.get(root, "layer", i)

    def attention(self, root, i: int):
        return self.get(root, "attention", i)

    def o_proj(self, root, i: int):
        return self.get(root, "o_proj", i)

    def mlp(self, root, i: int):
        return self.get(root, "mlp", i)

    def act_fn(self, root, i: int):
        return self.get(root, "act_fn", i)

    def gate_proj(self, root, i: int):
        return self.get(root, "gate_proj", i)

    def up_proj(self, root, i: int):
        return self.get(root, "up_proj", i)

    def down_proj(self, root, i: int):
        return self.get(root, "down_proj", i)

    def final_norm(self, root):
        return self.resolve(root, self.final_norm_path)

    def lm_head(self, root):
        return self.resolve(root, self.lm_head_path)

    def vision_tower(self, root):
        return self.resolve(root, self.vision_tower_path)

    def projector(self, root):
        return self.resolve(root, self.projector_path)

    def embed_tokens(self, root):
        return self.resolve(root, self.embed_tokens_path)

    # ---------------------------------------------------------------- sizes
    @staticmethod
    def text_config(model_or_config):
        config = _config_of(model_or_config)
        return getattr(config, "text_config", None) or config

    def sizes(self, model_or_config) -> ModelSizes:
        config = _config_of(model_or_config)
        text = self.text_config(config)
        num_heads = int(text.num_attention_heads)
        if self.family == "qwen":
            # Qwen2(.5)-VL attention always uses hidden_size // num_heads
            head_dim = text.hidden_size // num_heads
        else:
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // num_heads
        return ModelSizes(
            num_layers=int(text.num_hidden_layers),
            num_heads=num_heads,
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or num_heads),
            head_dim=int(head_dim),
            d_ff=int(text.intermediate_size),
            hidden_size=int(text.hidden_size),
            vocab_size=int(text.vocab_size),
            image_token_id=self.image_token_id(config),
        )

    def image_token_id(self, model_or_config) -> int:
        config = _config_of(model_or_config)
        value = getattr(config, "image_token_id", None)
        if value is None:
            value = getattr(config, "image_token_index", None)
        if value is None:
            raise ValueError(f"{self.architecture} config has no image token id")
        return int(value)

    def head_slice(self, model_or_config, head: int) -> slice:
        """The slice of ``o_proj``'s input feature axis that holds ``head``'s output."""
        d = self.sizes(model_or_config).head_dim
        return slice(head * d, (head + 1) * d)

    # ---------------------------------------------------------------- inputs
    def prompt(self, processor, user_text: str, reference_compat: bool = False, prefix: str = "") -> str:
        """The full prompt string of one user turn [image, text], generation prompt added.

        LLaVA: the processor's chat template ("USER: <image>\\n{text} ASSISTANT:" for
        llava-1.5), or with ``reference_compat`` the reference code's raw string
        "USER: <image>\\n{text}\\nASSISTANT:". Qwen: the chat template (system turn, then
        ``<|vision_start|><|image_pad|><|vision_end|>{text}``); ``reference_compat``
        does not change it. ``prefix`` (an answer template's text before ``{answer}``) ends the
        prompt, after one space when the generation prompt does not end in whitespace; its own
        trailing whitespace is dropped (the answer's tokens bring theirs, as after "ASSISTANT:").
        """
        if reference_compat and self.family == "llava":
            image_token = getattr(processor, "image_token", None) or "<image>"
            text = f"USER: {image_token}\n{user_text}\nASSISTANT:"
        else:
            missing = getattr(processor, "hones_missing_chat_template", None)
            if missing is not None:
                raise ValueError(
                    f"--model {missing}: its processor has no chat template (no chat_template.jinja, and no "
                    "'chat_template' in tokenizer_config.json or processor_config.json), so the prompt cannot be "
                    "built; give the template the checkpoint was trained with: --chat-template FILE (a Jinja file, "
                    "e.g. the base model's chat_template.jinja), or copy that file into the model folder"
                )
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prefix = prefix.rstrip()
        if prefix:
            text = text + prefix if text[-1:].isspace() else f"{text} {prefix}"
        return text

    def encode(
        self,
        processor,
        images: Sequence,
        user_texts: Sequence[str],
        answers: Sequence[str] | None = None,
        reference_compat: bool = False,
        assistant_prefixes: Sequence[str] | None = None,
    ) -> Encoded:
        """One processor-batched, left-padded encoding of ``images`` x ``user_texts``.

        With ``answers``, each row is prompt + answer tokens (no BOS,
        ``add_special_tokens=False``) + EOS, all left-padded together. ``assistant_prefixes``:
        per row, the answer template's text that ends the prompt (:meth:`prompt`'s ``prefix``).
        """
        images, user_texts = list(images), list(user_texts)
        if len(images) != len(user_texts):
            raise ValueError(f"{len(images)} images but {len(user_texts)} texts")
        if answers is not None and len(answers) != len(images):
            raise ValueError(f"{len(images)} images but {len(answers)} answers")
        if not images:
            raise ValueError("empty batch")
        tokenizer = processor.tokenizer
        prefixes = list(assistant_prefixes) if assistant_prefixes is not None else [""] * len(user_texts)
        if len(prefixes) != len(user_texts):
            raise ValueError(f"{len(user_texts)} texts but {len(prefixes)} answer prefixes")
        prompts = [self.prompt(processor, t, reference_compat, prefix=p) for t, p in zip(user_texts, prefixes)]
        enc = processor(images=images, text=prompts, return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        batch = ids.shape[0]

        answer_ids: list[list[int]] = [[] for _ in range(batch)]
        if answers is not None:
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has no EOS token to end the teacher-forced answers")
            answer_ids = [
                list(tokenizer(a, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id] for a in answers
            ]

        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with; set pad_token")
        rows: dict[str, list[list[int]]] = {key: [] for key in _TOKEN_KEYS if key in enc}
        for b in range(batch):
            for key in rows:
                prompt_part = enc[key][b][mask[b]].tolist()
                extra = answer_ids[b] if key == "input_ids" else [_TOKEN_KEYS[key][1]] * len(answer_ids[b])
                rows[key].append(prompt_part + extra)
        width = max(len(r) for r in rows["input_ids"])
        inputs: dict[str, torch.Tensor] = {}
        for key, values in rows.items():
            pad: int = pad_id if key == "input_ids" else _TOKEN_KEYS[key][0]
            dtype = enc[key].dtype
            out = torch.full((batch, width), pad, dtype=dtype)
            for b, r in enumerate(values):
                out[b, width - len(r) :] = torch.tensor(r, dtype=dtype)
            inputs[key] = out
        for key in self.input_keys:
            if key not in inputs and key in enc:
                inputs[key] = enc[key]
        missing = [k for k in self.input_keys if k not in inputs]
        if missing:
            raise ValueError(f"the processor gave no {', '.join(missing)} for {self.architecture}")

        n_answer = torch.tensor([len(a) for a in answer_ids], dtype=torch.long)
        last_prompt_index = (width - 1 - n_answer).long()
        answer_mask = None
        if answers is not None:
            positions = torch.arange(width).unsqueeze(0)
            answer_mask = positions >= (width - n_answer).unsqueeze(1)
        return Encoded(inputs, last_prompt_index, answer_mask, answer_ids, prompts)


# ---------------------------------------------------------------------- registry
_REGISTRY: dict[str, ArchitectureAdapter] = {}
_BY_MODEL_TYPE: dict[str, str] = {}


def register_adapter(adapter: ArchitectureAdapter, replace: bool = False) -> ArchitectureAdapter:
    """Add ``adapter`` to the registry (keyed by its class name and its config model_type)."""
    if adapter.family not in FAMILIES:
        raise ValueError(f"unknown prompt family {adapter.family!r}; known: {', '.join(FAMILIES)}")
    if adapter.architecture in _REGISTRY and not replace:
        raise ValueError(f"an adapter for {adapter.architecture} is already registered")
    _REGISTRY[adapter.architecture] = adapter
    _BY_MODEL_TYPE[adapter.model_type] = adapter.architecture
    return adapter


def supported_architectures() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def _unwrap(obj):
    """The HF module behind an nnsight envoy (``NNsight(model)`` or ``LanguageModel``)."""
    module = getattr(obj, "__dict__", {}).get("_module") if not isinstance(obj, torch.nn.Module) else None
    return module if module is not None else obj


def _config_of(model_or_config):
    obj = _unwrap(model_or_config)
    config = getattr(obj, "config", None)
    if config is not None and not isinstance(obj, type) and hasattr(config, "model_type"):
        return config
    return obj


def _architecture_name(model_or_config) -> tuple[str | None, str]:
    """(registered architecture or None, a name for the error message)."""
    obj = _unwrap(model_or_config)
    if isinstance(obj, str):
        if obj in _REGISTRY:
            return obj, obj
        return _BY_MODEL_TYPE.get(obj), obj
    if isinstance(obj, torch.nn.Module):
        name = type(obj).__name__
        return (name if name in _REGISTRY else None), name
    # a config
    for name in getattr(obj, "architectures", None) or []:
        if name in _REGISTRY:
            return name, name
    model_type = getattr(obj, "model_type", None)
    label = ", ".join(getattr(obj, "architectures", None) or []) or f"{type(obj).__name__} (model_type {model_type!r})"
    if model_type in _BY_MODEL_TYPE and not getattr(obj, "architectures", None):
        return _BY_MODEL_TYPE[model_type], label
    return None, label


def adapter_for(model_or_config) -> ArchitectureAdapter:
    """The adapter of a model, an nnsight envoy of one, a config, or a class/model_type name."""
    name, label = _architecture_name(model_or_config)
    if name is None:
        raise ValueError(f"unsupported architecture {label}; supported: {', '.join(supported_architectures())}")
    return _REGISTRY[name]


_LLAVA_KEYS = ("input_ids", "attention_mask", "pixel_values")
_QWEN_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")

LLAVA = register_adapter(ArchitectureAdapter("LlavaForConditionalGeneration", "llava", "llava", input_keys=_LLAVA_KEYS))
LLAVA_NEXT = register_adapter(
    ArchitectureAdapter(
        "LlavaNextForConditionalGeneration", "llava_next", "llava", input_keys=_LLAVA_KEYS + ("image_sizes",)
    )
)
QWEN2_VL = register_adapter(
    ArchitectureAdapter(
        "Qwen2VLForConditionalGeneration",
        "qwen2_vl",
        "qwen",
        vision_tower_path="model.visual",
        projector_path="model.visual.merger",
        input_keys=_QWEN_KEYS,
    )
)
QWEN2_5_VL = register_adapter(
    ArchitectureAdapter(
        "Qwen2_5_VLForConditionalGeneration",
        "qwen2_5_vl",
        "qwen",
        vision_tower_path="model.visual",
        projector_path="model.visual.merger",
        input_keys=_QWEN_KEYS,
    )
)

SUPPORTED_ARCHITECTURES: tuple[str, ...] = supported_architectures()
