"""Load a supported vision-language model with its processor and architecture adapter.

    loaded = load_model("tiny-llava")                        # the embedded model
    loaded = load_model("llava-hf/llava-1.5-7b-hf", dtype="float16", device="cuda")
    loaded = load_model("/path/to/Qwen2.5-VL-3B-Instruct", dtype="bfloat16", device_map="auto")

The class is chosen from the config through the adapter registry (never
``AutoModel*``), so an unsupported architecture fails before any weights are read.
``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hones_nn.models.adapters import ArchitectureAdapter, adapter_for

# The shipped checkpoints are data files, hones_nn/embedded/weights/NAME/, found here by
# path: the embedded package (their builders and training) builds on this one, so this
# module cannot import it.
EMBEDDED_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "embedded" / "weights"
EMBEDDED_MODELS: dict[str, Path] = {
    "tiny-llava": EMBEDDED_WEIGHTS_DIR / "tiny-llava",
    "tiny-qwen2.5-vl": EMBEDDED_WEIGHTS_DIR / "tiny-qwen2.5-vl",
    # issue 17: 8 x 2,048 MLP neurons, trained on synthetic-v2 (its default benchmark)
    "tiny-llava-16k": EMBEDDED_WEIGHTS_DIR / "tiny-llava-16k",
    # tiny-llava-16k plus one phase with --neuron-l1 1.0 (sparser FFN activity; see the README)
    "tiny-llava-16k-sparse": EMBEDDED_WEIGHTS_DIR / "tiny-llava-16k-sparse",
}
DEFAULT_MODEL = "tiny-llava"

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}


@dataclass
class LoadedModel:
    model: Any  # the HF model, in eval mode
    processor: Any  # LlavaProcessor / LlavaNextProcessor / QwenVLInputs
    adapter: ArchitectureAdapter
    model_id: str
    revision: str | None
    weights_hash: str | None  # short sha256 of the safetensors files (None when not found locally)
    family: str
    # False for a remote client's model: built on the meta device from the config alone
    # (shapes, no weights read or held); every weight read then happens inside a trace
    # on the server (see hones_nn.engine.remote)
    has_weights: bool = True
    # the revision the user asked for (None: the default branch); ``revision`` is what it
    # resolved to (a hub commit), kept in metadata; a remote model key names the former
    requested_revision: str | None = None
    # the synthetic benchmark a model trained by ``hones-nn train-embedded`` learned (its
    # training_info.json says which): what ``--data`` defaults to for it; None for any other
    # model (the default synthetic benchmark then)
    benchmark: str | None = None

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def sizes(self):
        return self.adapter.sizes(self.model)

    def encode(self, images, user_texts, answers=None, reference_compat: bool = False):
        return self.adapter.encode(self.processor, images, user_texts, answers, reference_compat=reference_compat)


def parse_dtype(dtype) -> torch.dtype | str | None:
    """None, a torch.dtype, or one of float32/float16/bfloat16/auto (and fp32/fp16/bf16)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[key]


def resolve_model_path(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder)."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        folder = Path(EMBEDDED_MODELS[name])
        if not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"the embedded model {name!r} is not there yet ({folder} has no config.json). Train it with "
                f"`hones-nn train-embedded --recipe --out-dir runs/{name}` and copy runs/{name}/model to {folder}."
            )
        return str(folder), True
    if os.path.isdir(name):
        return name, True
    if os.path.exists(name):
        raise ValueError(f"{name} is a file; give the model folder (the one holding config.json)")
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"--model {name}: no such folder; give an existing model folder (the one holding config.json), "
            f"a hub id such as llava-hf/llava-1.5-7b-hf, or an embedded model ({', '.join(EMBEDDED_MODELS)})"
        )
    return name, False


def _looks_like_path(name: str) -> bool:
    """A name a hub id cannot be: absolute, ~, ./ or ../, a Windows drive, or more than one '/'."""
    return (
        name.startswith(("/", "~", "./", "../", ".\\"))
        or name in (".", "..")
        or (len(name) > 1 and name[1] == ":")
        or name.count("/") > 1
        or "\\" in name
    )


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.pth")


def _check_local_folder(path: str) -> None:
    folder = Path(path)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"--model {path}: the folder has no config.json; give the folder of a saved checkpoint "
            "(model.save_pretrained / processor.save_pretrained write one)"
        )
    if not any(any(folder.glob(p)) for p in _WEIGHT_PATTERNS):
        raise FileNotFoundError(
            f"--model {path}: the folder holds no weights (no *.safetensors or *.bin); copy the checkpoint's "
            "weight files next to its config.json"
        )


def _load_error(name: str, local: bool, what: str, exc: Exception) -> ValueError:
    if local:
        return ValueError(f"--model {name}: cannot load the {what} from the folder ({exc}); check the checkpoint")
    offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    return ValueError(
        f"--model {name}: cannot load the {what} of this hub id ({str(exc).splitlines()[0]}). Check the spelling "
        "and the network"
        + (" (HF_HUB_OFFLINE is set: only models already in the hub cache load)" if offline else "")
        + "; offline, download it first (huggingface-cli download ID) or give a local folder"
    )


def weights_hash(folder: str | os.PathLike, length: int = 16) -> str | None:
    """Short sha256 over the safetensors files of ``folder`` (names and bytes, sorted by name)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()[:length]


def _hub_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The local cache folder of a hub checkpoint already downloaded (no network)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=["*.safetensors"])
    except Exception:
        return None


def load_processor(
    path: str, adapter: ArchitectureAdapter, revision: str | None = None, trust_remote_code: bool = False
):
    if adapter.family == "qwen":
        from hones_nn.models.qwen_inputs import QwenVLInputs

        return QwenVLInputs.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


def chat_template_of(processor) -> str | None:
    """The processor's chat template (or its tokenizer's), None when it has none."""
    tokenizer = getattr(processor, "tokenizer", None)
    return getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)


def set_chat_template(processor, model_id: str, chat_template: str | os.PathLike | None) -> None:
    """Give ``processor`` the Jinja template of the file ``chat_template`` (``--chat-template``),
    or, when it has none of its own, mark it so that building a prompt says which folder lacks
    one and how to give it (the official code's raw LLaVA prompt, ``--reference-compat``, needs
    none)."""
    if chat_template is not None:
        file = Path(chat_template)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"--chat-template {file}: cannot read it ({exc}); give a Jinja chat template file, e.g. the "
                "chat_template.jinja of the base model"
            ) from None
        if not text.strip():
            raise ValueError(f"--chat-template {file}: the file is empty; give a Jinja chat template")
        processor.chat_template = text
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.chat_template = text
        return
    if chat_template_of(processor) is None:
        processor.hones_missing_chat_template = model_id


def load_model(
    name_or_path: str | os.PathLike = "tiny-llava",
    dtype=None,
    device: str | torch.device = "cpu",
    device_map=None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    weights: bool = True,
    chat_template: str | os.PathLike | None = None,
) -> LoadedModel:
    """Model (eval mode), processor and adapter of a supported checkpoint.

    ``dtype``: None keeps float32 (the reference numerics; pass "auto" for the
    checkpoint's own dtype), or float32/float16/bfloat16/auto. ``device_map`` (e.g.
    "auto") is passed to ``from_pretrained`` and then ``device`` is not used.

    ``weights=False`` (a remote client: ``--remote``, ``--dry-run``) reads the config and
    the processor only and builds the model on the meta device: no weight file is
    opened, the folder need not hold any, and a 70B model costs the client a few MB.

    ``chat_template``: a Jinja chat template file replacing the processor's own (for a
    checkpoint saved without one: building a prompt then fails with an error saying so).
    """
    from transformers import AutoConfig

    model_id = str(name_or_path)
    path, local = resolve_model_path(name_or_path)
    torch_dtype = parse_dtype(dtype)
    if torch_dtype is None:
        torch_dtype = torch.float32
    if not weights:
        loaded = _load_weightless(model_id, path, local, torch_dtype, revision, trust_remote_code)
        set_chat_template(loaded.processor, model_id, chat_template)
        return loaded
    if local:
        _check_local_folder(path)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # ValueError: the hub's repo-id validation
        raise _load_error(model_id, local, "config", exc) from None
    adapter = adapter_for(config)  # ValueError for an unsupported architecture, before any weights
    cls = adapter.model_class()
    kwargs = {"dtype": torch_dtype, "revision": revision, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = cls.from_pretrained(path, config=config, **kwargs)
    except OSError as exc:
        raise _load_error(model_id, local, "weights", exc) from None
    if device_map is None:
        model = model.to(device)
    model.eval()
    try:
        processor = load_processor(path, adapter, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise _load_error(model_id, local, "processor (tokenizer)", exc) from None
    set_chat_template(processor, model_id, chat_template)
    resolved_revision = revision
    if not local:
        resolved_revision = getattr(config, "_commit_hash", None) or revision
    folder = path if local else _hub_snapshot(path, revision)
    return LoadedModel(
        model=model,
        processor=processor,
        adapter=adapter,
        model_id=model_id,
        revision=resolved_revision,
        weights_hash=weights_hash(folder) if folder else None,
        family=adapter.family,
        requested_revision=revision,
        benchmark=trained_benchmark(path) if local else None,
    )


def trained_benchmark(folder: str | os.PathLike | None) -> str | None:
    """The synthetic generator a ``train-embedded`` model in ``folder`` was trained on (the
    ``generator`` of its training_info.json's config; ``synthetic-v1`` for a run written
    before the field existed, when v1 was the only one), or None (not such a model).

    Why: a model trained on synthetic-v2 (64 x 64 images, its own vocabulary) scores near
    zero on synthetic-v1's images and words, so its own benchmark is the only sensible default.
    """
    import json

    if folder is None:
        return None
    info_path = Path(folder) / "training_info.json"
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{info_path}: unreadable training_info.json ({exc}); restore it from the model's source"
        ) from None
    if not isinstance(info, dict):
        return None
    config = info.get("config")
    if not isinstance(config, dict):  # a recipe written before runs recorded their config at the top
        phases = info.get("phases") or []
        config = phases[-1].get("config") if phases and isinstance(phases[-1], dict) else None
    if not isinstance(config, dict):
        return None
    generator = config.get("generator")
    return generator if isinstance(generator, str) and generator else "synthetic-v1"


def _load_weightless(
    model_id: str, path: str, local: bool, torch_dtype, revision: str | None, trust_remote_code: bool
) -> LoadedModel:
    """Config + processor + a meta-device model (see :func:`load_model` ``weights=False``)."""
    from transformers import AutoConfig

    if local and not (Path(path) / "config.json").exists():
        raise FileNotFoundError(
            f"--model {path}: the folder has no config.json; give the folder of a saved checkpoint "
            "(a remote run needs its config and processor files, not its weights)"
        )
    try:
        config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error(model_id, local, "config", exc) from None
    adapter = adapter_for(config)
    cls = adapter.model_class()
    dtype = torch_dtype if isinstance(torch_dtype, torch.dtype) else getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = cls._from_config(config, dtype=dtype)
    model.eval()
    try:
        processor = load_processor(path, adapter, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise _load_error(model_id, local, "processor (tokenizer)", exc) from None
    resolved_revision = revision if local else (getattr(config, "_commit_hash", None) or revision)
    return LoadedModel(
        model=model,
        processor=processor,
        adapter=adapter,
        model_id=model_id,
        revision=resolved_revision,
        weights_hash=None,
        family=adapter.family,
        has_weights=False,
        requested_revision=revision,
        benchmark=trained_benchmark(path) if local else None,
    )
