"""Visual-semantic perturbation (Wang et al. section 3.1) as an nnsight edit.

For an image and a concept, the concept's patches are replaced by Gaussian noise right
after the vision tower's patch embedding (before the [CLS] token and the position
embeddings are added, eq. 2-3):

    v_pe'[p] = eps_p ~ N(0, sigma^2 I)   if patch p is a concept patch,   v_pe[p] otherwise.

* Concept patches: the pixel mask average-pooled over the patch grid (appendix A.2); a
  patch is perturbed when the fraction of its pixels in the mask is > ``threshold``
  (default 0: any overlap, so no part of the concept survives). Masks larger or smaller
  than the model's input are resized (nearest) to it first: this assumes the processor
  maps the image to the model's square input by a plain resize (true for tiny-llava; a
  centre-cropping processor would need cropped masks).
* sigma: by default the standard deviation of that image's own clean patch embeddings
  (all patches, all channels), so the noise has the scale of real patches; or a fixed
  ``noise_std``. The noise is drawn from a seeded generator per (image, concept), so a
  run is reproducible.
* Supported vision towers: CLIP-style (``embeddings.patch_embedding`` a Conv2d whose
  output is [B, D, rows, cols]), i.e. LLaVA-1.5 and tiny-llava. Other towers raise.

The caption of the clean and of the perturbed input is generated greedily (the task's
caption prompt), and the neuron activation a(l, i)[j] = z_i of layer l (input of
``down_proj``, the neuron of every other method here) is read at the position that
generates token j. Eq. 4: delta(l, i) = E_j a - E_j a', each mean over that input's own
generated tokens (the steps whose argmax is a caption token, EOS excluded; the first step
when the caption is empty).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import GenerationConfig

from hones_nn.engine.core import MAX_NEW_TOKENS

warnings.filterwarnings("ignore", message=r".*was never reached: the loop asked for a step.*")


@dataclass(frozen=True)
class PatchGrid:
    rows: int
    cols: int
    patch_size: int
    image_size: int
    has_cls: bool

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols


def patch_grid(loaded) -> PatchGrid:
    """The patch grid of the model's vision tower (CLIP-style towers only)."""
    tower = loaded.adapter.vision_tower(loaded.model)
    embeddings = getattr(tower, "embeddings", None)
    conv = getattr(embeddings, "patch_embedding", None)
    if not isinstance(conv, torch.nn.Conv2d):
        raise ValueError(
            f"the vision tower of {loaded.adapter.architecture} has no CLIP-style Conv2d patch embedding; the "
            "visual-semantic perturbation supports LLaVA-1.5-style CLIP towers (tiny-llava, llava-1.5)"
        )
    config = loaded.model.config.vision_config
    if loaded.adapter.architecture != "LlavaForConditionalGeneration":
        raise ValueError(
            f"the perturbation maps masks to one square image per example; {loaded.adapter.architecture} "
            "tiles images (anyres) and is not supported; use a LLaVA-1.5-style model"
        )
    size, patch = int(config.image_size), int(config.patch_size)
    return PatchGrid(size // patch, size // patch, patch, size, hasattr(embeddings, "class_embedding"))


def patch_mask(pixel_mask: np.ndarray, grid: PatchGrid, threshold: float = 0.0) -> torch.Tensor:
    """bool [rows, cols]: patches whose fraction of mask pixels is > ``threshold``."""
    mask = np.asarray(pixel_mask, dtype=bool)
    if mask.shape != (grid.image_size, grid.image_size):
        mask = (
            np.asarray(
                Image.fromarray(mask.astype(np.uint8) * 255).resize((grid.image_size, grid.image_size), Image.NEAREST)
            )
            > 0
        )
    p = grid.patch_size
    pooled = mask.reshape(grid.rows, p, grid.cols, p).mean(axis=(1, 3))
    return torch.from_numpy(pooled > threshold)


def random_patch_mask(n_patches: int, grid: PatchGrid, seed: int) -> torch.Tensor:
    """A control: ``n_patches`` patches drawn uniformly (the paper's shuffled mask of the same sparsity)."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(grid.num_patches, dtype=bool)
    flat[rng.choice(grid.num_patches, size=n_patches, replace=False)] = True
    return torch.from_numpy(flat.reshape(grid.rows, grid.cols))


class PatchNoise:
    """Noise on the masked patches of each row: ``masks`` bool [B, rows, cols], one per row
    (an all-False row is left clean); ``seeds`` one int per row; ``noise_std`` None for
    the per-image std of the clean patch embeddings."""

    def __init__(self, masks: torch.Tensor, seeds: list[int], hidden: int, noise_std: float | None = None):
        if masks.dim() != 3:
            raise ValueError(f"masks must be [batch, rows, cols], got {tuple(masks.shape)}")
        if len(seeds) != masks.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks but {len(seeds)} seeds")
        self.masks = masks.bool()
        self.noise_std = noise_std
        self.unit = torch.stack(
            [torch.randn(hidden, *masks.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        )  # [B, D, rows, cols]

    def apply(self, envoy, adapter):
        """Edit the patch embedding's output inside a trace (before the layers run)."""
        conv = adapter.vision_tower(envoy).embeddings.patch_embedding
        out = conv.output
        mask = self.masks.unsqueeze(1).to(out.device)
        unit = self.unit.to(device=out.device, dtype=out.dtype)
        if self.noise_std is None:
            sigma = out.std(dim=(1, 2, 3), keepdim=True)
        else:
            sigma = float(self.noise_std)
        out[...] = torch.where(mask, unit * sigma, out)
        return out


def _greedy_config(model, tokenizer, max_new_tokens: int) -> GenerationConfig:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
    )


@dataclass
class Generation:
    tokens: list[list[int]]  # generated ids per row, EOS excluded
    mean_acts: torch.Tensor  # [B, L, d_ff] float32: mean z over the row's generated tokens
    patch_embeddings: torch.Tensor | None = None  # [B, D, rows, cols] after the edit (when asked)


@torch.no_grad()
def generate_recording(
    loaded,
    envoy,
    inputs: dict,
    noise: PatchNoise | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    keep_patch_embeddings: bool = False,
) -> Generation:
    """Greedy generation under the patch noise, with the mean neuron activations over the generated tokens."""
    adapter, model = loaded.adapter, loaded.model
    tokenizer = loaded.tokenizer
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    L = adapter.sizes(model).num_layers
    eos = tokenizer.eos_token_id
    config = _greedy_config(model, tokenizer, max_new_tokens)
    saved_config = model.generation_config
    model.generation_config = config
    try:
        with envoy.trace(**inputs, fn=model.generate, generation_config=config) as tracer:
            patches = list().save()
            if noise is not None:
                edited = noise.apply(envoy, adapter)
                if keep_patch_embeddings:
                    patches.append(edited.detach().cpu())
            elif keep_patch_embeddings:
                patches.append(adapter.vision_tower(envoy).embeddings.patch_embedding.output.detach().cpu())
            steps = list().save()
            acts = list().save()
            for _ in tracer.iter[:]:
                z = [adapter.down_proj(envoy, layer).input[:, -1].float().cpu() for layer in range(L)]
                acts.append(torch.stack(z, dim=1))
                steps.append(adapter.lm_head(envoy).output[:, -1].argmax(-1).cpu())
    finally:
        model.generation_config = saved_config
    tokens_all = torch.stack(list(steps), dim=1).tolist()
    acts_all = torch.stack(list(acts), dim=1)  # [B, steps, L, F]
    tokens, means = [], []
    for b, row in enumerate(tokens_all):
        n = row.index(eos) if eos in row else len(row)
        tokens.append(row[:n])
        means.append(acts_all[b, : max(n, 1)].mean(0))
    return Generation(tokens, torch.stack(means), patches[0] if keep_patch_embeddings else None)


# ------------------------------------------------------------------ caption check

_WORD = re.compile(r"[a-z]+")


def caption_words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def caption_check(clean: str, perturbed: str, concept: str, other_words: list[str]) -> dict:
    """Is the concept named in the clean caption and gone from the perturbed one, and are
    the other objects' words (named in the clean caption) still there?"""
    before, after = caption_words(clean), caption_words(perturbed)
    named = concept in before
    others = [w for w in dict.fromkeys(other_words) if w in before and w != concept]
    return {
        "concept_named": named,
        "concept_removed": bool(named and concept not in after),
        "others_named": len(others),
        "others_kept": sum(w in after for w in others),
    }


def summarize_checks(checks: list[dict]) -> dict:
    """Removal rate (over images whose clean caption names the concept) and keep rate of the others."""
    named = [c for c in checks if c["concept_named"]]
    others = sum(c["others_named"] for c in checks)
    return {
        "n_images": len(checks),
        "n_concept_named": len(named),
        "removal_rate": float(np.mean([c["concept_removed"] for c in named])) if named else float("nan"),
        "n_other_words": int(others),
        "others_kept_rate": float(sum(c["others_kept"] for c in checks) / others) if others else float("nan"),
    }
