"""Passes and peak memory per example of each method, estimated from a model config alone.

    hones-nn methods --model llava-hf/llava-1.5-7b-hf          # built-in table (no network)
    hones-nn methods --model /path/to/model_or_config.json      # any local config
    hones-nn methods --model tiny-random-qwen2.5-vl --batch-size 8

Config sources, in order: the embedded models (``tiny-llava``), the tiny random
architectures (``tiny-random-ARCH``), a local folder holding ``config.json`` or a path to
a config JSON file, the built-in table :data:`KNOWN_CONFIGS` of public checkpoints (the
numbers of their config.json, so no download is needed), then the local Hugging Face
cache (``local_files_only``; there is no network access). Anything else is an error that
says what to pass instead.

The memory model (bytes; b = bytes per parameter of ``--dtype``, S = tokens per row,
V = vocabulary, D = hidden size, F = d_ff, L = layers, H / H_kv = heads / key-value
heads, d = head_dim). Peak = weights + B x (per-row activations), B = rows per forward:

* ``forward`` (prompt prefill, nothing kept): KV cache 2 L S H_kv d b + residual stream
  2 S D b + one layer's transients S (6 D + 3 F) b + H S^2 b + logits S V b (+ 2 S V x 4
  when a teacher-forced log-softmax is taken in float32);
* ``backward`` (activation x gradient, AtP, integrated gradients): the forward's, plus the
  tensors autograd keeps for every layer, L S (8 D + 3 F) b + L H S^2 b, plus the float32
  logits and their gradient, 3 S V x 4;
* ``generation`` (greedy, 24 new tokens): the prefill forward with a KV cache of S + 24 tokens
  (each decoding step is one token, far below the prefill's transients);
* the vision tower's transients (CLIP / Qwen ViT, per image) are added once per row.

It is a deliberately conservative estimate of the *activation* peak (attention
probabilities are counted as materialised, as eager / CPU SDPA do; flash attention on a
GPU does not keep them), not of the allocator's fragmentation. The tests check it against
the torch profiler's measured peak on the five tiny configs: measured <= estimate <=
:data:`ESTIMATE_FACTOR` x measured (the estimate was 1.3-3.1 x the measurement there). Passes per
example follow each method's ``Method.passes`` declaration, in rows (one row = one prompt under one condition).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hones_nn.methods.base import default_top_heads, get_method

GENERATION_STEPS = 24  # Engine's max_new_tokens
ESTIMATE_FACTOR = 3.0  # estimates are within this factor of the measured peak on the tiny configs
DEFAULT_TEXT_TOKENS = 48  # prompt text + answer, beside the image tokens
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

# The numbers of public checkpoints' config.json (and their parameter counts), so that
# estimates need no download. image_tokens: LLaVA-1.5 576 (336 px / 14); LLaVA-NeXT up to
# 5 tiles of 576 (anyres, 2,880 at most; the mean on COCO-size images is ~2,150);
# Qwen2(.5)-VL depends on the image: 256 tokens for a 448 x 448 image.
KNOWN_CONFIGS: dict[str, dict] = {
    "llava-hf/llava-1.5-7b-hf": dict(
        family="llava",
        num_layers=32,
        hidden_size=4096,
        num_heads=32,
        num_kv_heads=32,
        d_ff=11008,
        vocab_size=32064,
        image_tokens=576,
        vision=dict(hidden=1024, d_ff=4096, heads=16, layers=24, patches=577),
        params=7_063_427_072,
    ),
    "llava-hf/llava-1.5-13b-hf": dict(
        family="llava",
        num_layers=40,
        hidden_size=5120,
        num_heads=40,
        num_kv_heads=40,
        d_ff=13824,
        vocab_size=32064,
        image_tokens=576,
        vision=dict(hidden=1024, d_ff=4096, heads=16, layers=24, patches=577),
        params=13_351_500_800,
    ),
    "llava-hf/llava-v1.6-vicuna-7b-hf": dict(
        family="llava",
        num_layers=32,
        hidden_size=4096,
        num_heads=32,
        num_kv_heads=32,
        d_ff=11008,
        vocab_size=32064,
        image_tokens=2880,
        vision=dict(hidden=1024, d_ff=4096, heads=16, layers=24, patches=577),
        params=7_063_427_072,
    ),
    "Qwen/Qwen2-VL-7B-Instruct": dict(
        family="qwen",
        num_layers=28,
        hidden_size=3584,
        num_heads=28,
        num_kv_heads=4,
        d_ff=18944,
        vocab_size=152064,
        image_tokens=256,
        vision=dict(hidden=1280, d_ff=5120, heads=16, layers=32, patches=1024),
        params=8_291_375_616,
    ),
    "Qwen/Qwen2.5-VL-7B-Instruct": dict(
        family="qwen",
        num_layers=28,
        hidden_size=3584,
        num_heads=28,
        num_kv_heads=4,
        d_ff=18944,
        vocab_size=152064,
        image_tokens=256,
        vision=dict(hidden=1280, d_ff=3420, heads=16, layers=32, patches=1024),
        params=8_292_166_656,
    ),
    "Qwen/Qwen2.5-VL-3B-Instruct": dict(
        family="qwen",
        num_layers=36,
        hidden_size=2048,
        num_heads=16,
        num_kv_heads=2,
        d_ff=11008,
        vocab_size=151936,
        image_tokens=256,
        vision=dict(hidden=1280, d_ff=3420, heads=16, layers=32, patches=1024),
        params=3_754_622_976,
    ),
}


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need from a config."""

    source: str  # where the numbers came from
    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    image_tokens: int
    params: int
    vision_hidden: int = 0
    vision_d_ff: int = 0
    vision_heads: int = 0
    vision_patches: int = 0

    def seq_len(self, text_tokens: int = DEFAULT_TEXT_TOKENS) -> int:
        return self.image_tokens + text_tokens


# ---------------------------------------------------------------------- configs


def _from_config(config, source: str) -> ModelShape:
    import torch

    from hones_nn.models.adapters import adapter_for

    adapter = adapter_for(config)
    sizes = adapter.sizes(config)
    with torch.device("meta"):
        params = sum(p.numel() for p in adapter.model_class()(config).parameters())
    vision = getattr(config, "vision_config", None)
    v_hidden = int(getattr(vision, "hidden_size", 0) or getattr(vision, "embed_dim", 0) or 0)
    if adapter.family == "qwen":
        v_hidden = int(getattr(vision, "embed_dim", None) or getattr(vision, "hidden_size", 0))
    v_ff = int(getattr(vision, "intermediate_size", 0) or v_hidden * int(getattr(vision, "mlp_ratio", 4)))
    v_heads = int(getattr(vision, "num_attention_heads", 0) or getattr(vision, "num_heads", 0) or 1)
    image_tokens, patches = _image_tokens(config, adapter.family)
    return ModelShape(
        source=source,
        family=adapter.family,
        num_layers=sizes.num_layers,
        hidden_size=sizes.hidden_size,
        num_heads=sizes.num_heads,
        num_kv_heads=sizes.num_kv_heads,
        head_dim=sizes.head_dim,
        d_ff=sizes.d_ff,
        vocab_size=sizes.vocab_size,
        image_tokens=image_tokens,
        params=int(params),
        vision_hidden=v_hidden,
        vision_d_ff=v_ff,
        vision_heads=v_heads,
        vision_patches=patches,
    )


def _image_tokens(config, family: str) -> tuple[int, int]:
    """(image tokens in the prompt, vision-tower patches per image) for a typical image."""
    vision = getattr(config, "vision_config", None)
    if family == "qwen":
        # a 448 x 448 image: (448 / 14)^2 patches, merged 2 x 2
        patch = int(getattr(vision, "patch_size", 14))
        merge = int(getattr(vision, "spatial_merge_size", 2))
        side = max(1, 448 // patch)
        return (side * side) // (merge * merge), side * side
    size, patch = int(getattr(vision, "image_size", 336)), int(getattr(vision, "patch_size", 14))
    patches = (size // patch) ** 2 + 1
    base = int(getattr(config, "image_seq_length", 0) or (size // patch) ** 2)
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    if pinpoints:  # LLaVA-NeXT: base tile + the largest grid of tiles
        tiles = max((h // size) * (w // size) for h, w in pinpoints)
        return base * (1 + tiles), patches
    return base, patches


def model_shape(name: str) -> ModelShape:
    """A :class:`ModelShape` from a model name, folder or config file (see the module doc)."""
    from hones_nn.models.loading import EMBEDDED_MODELS

    if name in EMBEDDED_MODELS:
        from transformers import AutoConfig

        from hones_nn.models.loading import resolve_model_path

        return _from_config(AutoConfig.from_pretrained(resolve_model_path(name)[0]), f"embedded model {name}")
    if name.startswith("tiny-random-"):
        from hones_nn.embedded.tiny_random import _build, _normalise

        config, _ = _build(_normalise(name[len("tiny-random-") :]))
        return _from_config(config, f"tiny random config {name}")
    path = Path(name)
    if path.is_dir() and (path / "config.json").exists():
        from transformers import AutoConfig

        return _from_config(AutoConfig.from_pretrained(str(path)), f"config {path / 'config.json'}")
    if path.is_file():
        from transformers import AutoConfig

        data = json.loads(path.read_text())
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"{path} has no model_type: is it a Hugging Face config.json?")
        return _from_config(AutoConfig.for_model(model_type, **data), f"config {path}")
    if name in KNOWN_CONFIGS:
        k = dict(KNOWN_CONFIGS[name])
        vision = k.pop("vision")
        return ModelShape(
            source=f"built-in table (config.json of {name})",
            head_dim=k["hidden_size"] // k["num_heads"],
            vision_hidden=vision["hidden"],
            vision_d_ff=vision["d_ff"],
            vision_heads=vision["heads"],
            vision_patches=vision["patches"],
            **k,
        )
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:
        raise ValueError(
            f"no config for {name!r}: there is no network access here, so pass a local model folder or a "
            f"config.json path, a tiny config (tiny-llava, tiny-random-llava, tiny-random-llava-next, "
            f"tiny-random-qwen2-vl, tiny-random-qwen2.5-vl), or one of the built-in configs: "
            f"{', '.join(KNOWN_CONFIGS)}"
        ) from None
    return _from_config(config, f"local Hugging Face cache ({name})")


# ---------------------------------------------------------------------- memory


def activation_bytes(
    shape: ModelShape, kind: str, seq_len: int, dtype_bytes: int = 4, vision_patches: int | None = None
) -> int:
    """Per-row activation peak (bytes) of one pass of ``kind``: forward, forward-logprob,
    backward, generation (see the module doc). ``vision_patches`` overrides the config's
    typical patches per image (Qwen's depend on the image size)."""
    b = dtype_bytes
    L, D, F, V = shape.num_layers, shape.hidden_size, shape.d_ff, shape.vocab_size
    H, d, Hk = shape.num_heads, shape.head_dim, shape.num_kv_heads
    S = seq_len
    kv = 2 * L * (S + (GENERATION_STEPS if kind == "generation" else 0)) * Hk * d * b
    stream = 2 * S * D * b
    layer = S * (6 * D + 3 * F) * b + H * S * S * b
    logits = S * V * b
    total = kv + stream + layer + logits
    if kind == "forward-logprob":
        total += 2 * S * V * 4
    if kind == "backward":
        total += L * S * (8 * D + 3 * F) * b + L * H * S * S * b + 3 * S * V * 4
    if shape.vision_hidden:
        P = shape.vision_patches if vision_patches is None else vision_patches
        total += P * (6 * shape.vision_hidden + 3 * shape.vision_d_ff) * b + shape.vision_heads * P * P * b
    return int(total)


# ---------------------------------------------------------------------- methods


@dataclass(frozen=True)
class MethodEstimate:
    method: str
    passes: str  # rows per example, by kind of pass
    rows_per_example: float
    pass_kind: str
    activation_bytes_per_row: int
    weights_bytes: int
    peak_bytes_batch1: int
    peak_bytes: int  # at the given batch size

    def as_dict(self) -> dict:
        return asdict(self)


def method_passes(method: str, shape: ModelShape, options: dict) -> tuple[float, str, str]:
    """(rows per example, description, the pass kind that sets the memory peak): the
    method's own declaration (``Method.passes``)."""
    passes = get_method(method).passes(shape, options)
    return passes.rows, passes.text, passes.kind


def estimate_methods(
    shape: ModelShape,
    methods: list[str],
    batch_size: int = 1,
    dtype: str = "float32",
    text_tokens: int = DEFAULT_TEXT_TOKENS,
    top_heads: int | None = None,
    utility: str = "metric",
    options: dict | None = None,
) -> list[MethodEstimate]:
    b = DTYPE_BYTES[dtype]
    opts = {
        **(options or {}),
        "top_heads": top_heads or default_top_heads(shape.num_layers, shape.num_heads),
        "utility": utility,
    }
    weights = shape.params * b
    seq = shape.seq_len(text_tokens)
    out = []
    for name in methods:
        rows, text, kind = method_passes(name, shape, opts)
        act = 0 if kind == "none" else activation_bytes(shape, kind, seq, b)
        out.append(
            MethodEstimate(
                name,
                text,
                rows,
                kind,
                act,
                weights if kind != "none" else 0,
                (weights if kind != "none" else 0) + act,
                (weights if kind != "none" else 0) + batch_size * act,
            )
        )
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---------------------------------------------------------------------- measurement


def measure_peak_bytes(fn) -> tuple[int, object]:
    """(peak bytes, fn's value): the peak of the running sum of CPU allocator allocations
    minus frees while ``fn`` runs, from the torch profiler (``profile_memory=True``), at
    operator granularity; memory already allocated before (the weights) is not counted.
    CPU only (on CUDA use ``torch.cuda.max_memory_allocated``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        value = fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return int(peak), value
