"""Neuron editing (Pan et al. 2024, section "Editing"; docs/methods.md "Seed systems").

Goal: where the model generates the *source* token s in a caption, make it generate the
*target* token t instead, by changing only the write-out columns W_down[:, i] of a few
selected FFN neurons (no training).

Edit prompts. On the edit split (default: discovery), the clean greedy caption of each
image is generated; the images whose caption contains s are kept (up to ``limit``) and
each is teacher-forced up to the position p that generates the first s. At p we read,
for every layer, z (the input of ``down_proj``, what multiplies W_down) and
g = act_fn(gate_proj(x)); and the final residual h (the final norm's input).

Neurons. ``pan:K``: Pan et al.'s contribution score for the source token,
s_{l,i} = E_p[ g_{l,i}(p) * W_down[:, i] . W_U[s] ], top K over all layers; or the top
K of any neuron score table, or of the fuzzy set named by the source word, or a list.

Closed form (a least-norm rank-one update). With gamma the final RMSNorm weight,
u = gamma * (W_U[t] - W_U[s]) and u_hat = u / |u|, the logit margin of a final residual h
is exactly

    m(h) = logit_t - logit_s = u . h / rms(h),        rms(h) = sqrt(mean(h^2) + eps).

With k = the selected neurons' z at p, averaged over the edit prompts (the key k_bar),
every selected column moves along u_hat:

    Delta W_down[:, i] = c * k_bar_i / |k_bar|^2 * u_hat                    (one scalar c)

the minimum-Frobenius-norm change that adds c * u_hat to the layer output for the key
k_bar. On edit prompt p the direct effect adds x_p u_hat to h_p with x_p = c * a_p,
a_p = k_p . k_bar / |k_bar|^2. Reaching m = M (the ``margin``) along u_hat has the exact
solution (square m(h + x u_hat) = M and solve for y = u_hat . h + x):

    y = M * sqrt( ((|h|^2 - (u_hat . h)^2) / D + eps) / (|u|^2 - M^2 / D) ),   x = y - u_hat . h

(D the hidden size; reachable only when M < |u| sqrt(D); x = 0 when m(h) >= M
already). c_p = x_p / a_p for the prompts with a_p > 0, and c = max_p c_p
(``aggregate="max"``, every edit prompt reaches M through the direct path) or their
median / mean. The prediction is exact for neurons of the last layer (nothing after
them but the norm and lm_head); for earlier layers later layers also see the change,
and the measured margins are reported next to the predicted ones.

File: safetensors with ``layers`` int32 [k], ``neurons`` int32 [k], ``delta`` float32
[k, hidden] (added to W_down[:, i] of each) and metadata ``hones_edit`` (JSON: source,
target, ids, margin, c, model id, weights hash); the full report goes next to it as
``<name>.json``. ``hones-nn evaluate --edit FILE`` adds it to the weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hones_nn.engine.readout import final_norm_eps
from hones_nn.tasks.base import Prompt

META_KEY = "hones_edit"
AGGREGATES = ("max", "median", "mean")


def single_token_id(tokenizer, word: str, what: str = "word") -> int:
    """The one token id of ``word`` (tried with a leading space first, as inside a sentence)."""
    if not word or not word.strip():
        raise ValueError(f"{what} is empty; give a word")
    special = set(tokenizer.all_special_ids) | ({tokenizer.unk_token_id} - {None})
    tried = []
    for text in (" " + word.strip(), word.strip()):
        raw = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = [t for t in raw if t not in special]
        if len(ids) == 1 and len(raw) == 1:
            return ids[0]
        tried.append(f"{text!r} -> {tokenizer.convert_ids_to_tokens(raw)}")
    raise ValueError(
        f"{what} {word!r} is not a single token of the model's tokenizer ({'; '.join(tried)}); "
        "choose a word the vocabulary holds whole"
    )


# ------------------------------------------------------------------ edit prompts


@dataclass
class EditPrompt:
    row: int
    image_id: str
    caption_ids: list[int]  # the clean greedy caption
    position: int  # index in caption_ids of the first source token


@dataclass
class Readout:
    """Values at the source-generating position of each edit prompt."""

    z: torch.Tensor  # [P, L, d_ff]
    g: torch.Tensor  # [P, L, d_ff]
    h: torch.Tensor  # [P, hidden] final residual (final norm input)
    logits: torch.Tensor  # [P, vocab]


def caption_prompt(loaded, image_id: str, row: int) -> Prompt:
    from hones_nn.tasks.prompts import instruction

    return Prompt(image_id, row, instruction(loaded.family, "caption"), None)


def generate_captions(engine, images, prompts: list[Prompt], batch_size: int, progress: bool, desc: str):
    from hones_nn.engine.encoding import encode_prompts

    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        enc = encode_prompts(engine.loaded, images, prompts[start : start + batch_size])
        out += engine.generate(enc.inputs)
    return out


def with_prefixes(loaded, images, prompts: list[Prompt], prefixes: list[list[int]]) -> dict:
    """Model inputs: each prompt followed by its prefix tokens, left-padded together."""
    from hones_nn.engine.encoding import encode_prompts

    enc = encode_prompts(loaded, images, prompts)
    ids, mask = enc.input_ids, enc.attention_mask.bool()
    rows = [ids[b][mask[b]].tolist() + list(prefix) for b, prefix in enumerate(prefixes)]
    width = max(len(r) for r in rows)
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    new_ids = torch.full((len(rows), width), pad, dtype=ids.dtype)
    new_mask = torch.zeros((len(rows), width), dtype=enc.attention_mask.dtype)
    for b, r in enumerate(rows):
        new_ids[b, width - len(r) :] = torch.tensor(r, dtype=ids.dtype)
        new_mask[b, width - len(r) :] = 1
    inputs = dict(enc.inputs)
    inputs["input_ids"], inputs["attention_mask"] = new_ids, new_mask
    return inputs


@torch.no_grad()
def read_at_last(loaded, envoy, inputs: dict) -> Readout:
    """z, g of every layer, the final residual and the logits at the last position."""
    adapter = loaded.adapter
    L = loaded.sizes.num_layers
    with envoy.trace(**inputs):
        zs, gs = list().save(), list().save()
        for layer in range(L):
            gs.append(adapter.act_fn(envoy, layer).output[:, -1].float().cpu())
            zs.append(adapter.down_proj(envoy, layer).input[:, -1].float().cpu())
        h = adapter.final_norm(envoy).input[:, -1].float().cpu().save()
        logits = adapter.lm_head(envoy).output[:, -1].float().cpu().save()
    return Readout(torch.stack(list(zs), 1), torch.stack(list(gs), 1), h, logits)


def find_edit_prompts(
    engine,
    dataset,
    images,
    source_id: int,
    limit: int,
    batch_size: int = 32,
    progress: bool = True,
    scan: int | None = None,
) -> tuple[list[EditPrompt], int]:
    """Images whose clean caption contains the source token (first ``limit``), and how many were scanned."""
    records = dataset.with_format(None).select_columns(["image_id"])
    n = len(records) if scan is None else min(scan, len(records))
    found: list[EditPrompt] = []
    scanned = 0
    loaded = engine.loaded
    step = max(batch_size, 1)
    for start in tqdm(range(0, n, step), desc="clean captions", disable=not progress, leave=False):
        if len(found) >= limit:
            break
        rows = list(range(start, min(start + step, n)))
        prompts = [caption_prompt(loaded, records[r]["image_id"], r) for r in rows]
        for r, p, ids in zip(rows, prompts, generate_captions(engine, images, prompts, step, False, "")):
            scanned += 1
            if source_id in ids and len(found) < limit:
                found.append(EditPrompt(r, p.item_id, ids, ids.index(source_id)))
    return found, scanned


def read_edit_prompts(engine, images, prompts: list[EditPrompt], batch_size: int = 32) -> Readout:
    loaded = engine.loaded
    parts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        inputs = with_prefixes(
            loaded,
            images,
            [caption_prompt(loaded, p.image_id, p.row) for p in chunk],
            [p.caption_ids[: p.position] for p in chunk],
        )
        parts.append(read_at_last(loaded, engine.envoy, inputs))
    return Readout(*(torch.cat([getattr(p, f) for p in parts]) for f in ("z", "g", "h", "logits")))


# ------------------------------------------------------------------ neurons


def pan_scores(loaded, readout: Readout, source_id: int) -> np.ndarray:
    """Pan et al.'s contribution for the source token: E_p[g * W_down[:, i] . W_U[s]], [L, d_ff]."""
    adapter, model = loaded.adapter, loaded.model
    w_u = adapter.lm_head(model).weight.detach()[source_id].float()
    out = []
    for layer in range(readout.g.shape[1]):
        W = adapter.down_proj(model, layer).weight.detach().float()
        out.append((readout.g[:, layer] * (w_u @ W)).mean(0))
    return torch.stack(out).double().numpy()


def parse_neuron_list(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in spec.split(","):
        layer, _, neuron = part.strip().partition(":")
        if not layer.isdigit() or not neuron.isdigit():
            raise ValueError(f"--neurons {spec!r}: {part!r} is not LAYER:NEURON")
        out.append((int(layer), int(neuron)))
    return out


def select_neurons(
    loaded, spec: str, source_word: str, top_k: int, readout: Readout | None = None, source_id: int | None = None
) -> tuple[list[tuple[int, int]], str]:
    """(neurons, description) from ``pan:K`` | a score table | a fuzzy-set file/folder | ``L:I,L:I``."""
    sizes = loaded.sizes
    spec = spec.strip()
    pan = re.fullmatch(r"pan(?::(\d+))?", spec)
    if pan:
        k = int(pan.group(1)) if pan.group(1) else top_k
        if k < 1:
            raise ValueError(f"--neurons {spec}: K must be >= 1")
        if readout is None:
            raise ValueError("pan:K needs the edit prompts' activations")
        scores = pan_scores(loaded, readout, source_id)
        flat = np.lexsort((np.arange(scores.size), -scores.reshape(-1)))[:k]
        return [(int(i // sizes.d_ff), int(i % sizes.d_ff)) for i in flat], f"pan:{k} (contribution to {source_word!r})"
    path = Path(spec)
    if not path.exists() and re.fullmatch(r"\s*\d+:\d+(\s*,\s*\d+:\d+)*\s*", spec):
        neurons = parse_neuron_list(spec)
        desc = "explicit list"
    else:
        if not path.exists():
            raise FileNotFoundError(
                f"--neurons {spec}: no such file; give pan:K, a score table (.parquet), a fuzzy-set "
                "folder, or LAYER:NEURON,..."
            )
        from hones_nn.concepts.fuzzy import SETS_FILE, read_sets

        if path.is_dir() or _is_fuzzy(path):
            if path.is_dir() and not (path / SETS_FILE).exists():
                raise FileNotFoundError(f"--neurons {spec}: the folder has no {SETS_FILE}")
            sets = read_sets(path)
            sets.check_model(loaded)
            if source_word not in sets.names:
                raise ValueError(
                    f"--neurons {spec}: no fuzzy set for the source word {source_word!r}; sets: {', '.join(sets.names)}"
                )
            rows = sets.members(source_word).head(top_k)
            neurons = list(zip(rows["layer"].astype(int), rows["neuron"].astype(int)))
            desc = f"fuzzy set {source_word!r} top {len(neurons)} by membership"
        else:
            from hones_nn.engine.tables import read_neuron_table

            table = read_neuron_table(path, loaded, "--neurons")
            neurons = table.top(top_k)
            desc = f"top {top_k} of {path.name} ({table.meta.get('method')})"
    for layer, neuron in neurons:
        if not (0 <= layer < sizes.num_layers and 0 <= neuron < sizes.d_ff):
            raise ValueError(f"neuron {layer}:{neuron} is outside the model ({sizes.num_layers} layers x {sizes.d_ff})")
    if not neurons:
        raise ValueError(f"--neurons {spec}: the selection is empty")
    return [(int(a), int(b)) for a, b in neurons], desc


def _is_fuzzy(path: Path) -> bool:
    if path.suffix != ".parquet":
        return False
    import pyarrow.parquet as pq

    from hones_nn.concepts.fuzzy import META_KEY as FUZZY_KEY

    return FUZZY_KEY in (pq.read_schema(path).metadata or {})


# ------------------------------------------------------------------ the closed form


def margin_of(h: torch.Tensor, u: torch.Tensor, eps: float) -> torch.Tensor:
    """m(h) = u . h / rms(h) for h [..., D]."""
    h = h.double()
    return (h @ u.double()) / torch.sqrt(h.pow(2).mean(-1) + eps)


def required_shift(h: torch.Tensor, u: torch.Tensor, margin: float, eps: float) -> torch.Tensor:
    """x >= 0 per row so that m(h + x u_hat) = margin (0 when already there)."""
    h, u = h.double(), u.double()
    D = h.shape[-1]
    norm_u = float(u.norm())
    if margin >= norm_u * math.sqrt(D):
        raise ValueError(
            f"margin {margin} is unreachable along W_U[target] - W_U[source] (at most "
            f"{norm_u * math.sqrt(D):.2f} for this pair); ask for a smaller --margin"
        )
    u_hat = u / norm_u
    b = h @ u_hat
    perp = (h.pow(2).sum(-1) - b.pow(2)).clamp_min(0) / D + eps
    y = margin * torch.sqrt(perp / (norm_u**2 - margin**2 / D))
    x = y - b
    already = margin_of(h, u, eps) >= margin
    return torch.where(already, torch.zeros_like(x), x.clamp_min(0))


@dataclass
class NeuronEdit:
    neurons: list[tuple[int, int]]
    delta: torch.Tensor  # [k, hidden]
    meta: dict = field(default_factory=dict)

    def by_layer(self):
        groups: dict[int, list[int]] = {}
        for k, (layer, _) in enumerate(self.neurons):
            groups.setdefault(layer, []).append(k)
        return groups


def solve_edit(
    loaded, readout: Readout, neurons, source_id: int, target_id: int, margin: float = 2.0, aggregate: str = "max"
) -> tuple[NeuronEdit, dict]:
    """The closed-form edit (module docstring) and its predictions on the edit prompts."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose {', '.join(AGGREGATES)}")
    if source_id == target_id:
        raise ValueError("source and target are the same token; give two different words")
    adapter, model = loaded.adapter, loaded.model
    norm = adapter.final_norm(model)
    eps = final_norm_eps(loaded)
    gamma = norm.weight.detach().double().cpu()
    W_U = adapter.lm_head(model).weight.detach().double().cpu()
    u = gamma * (W_U[target_id] - W_U[source_id])
    u_hat = u / u.norm()
    layers = torch.tensor([a for a, _ in neurons])
    index = torch.tensor([b for _, b in neurons])
    keys = readout.z[:, layers, index].double()  # [P, k]
    k_bar = keys.mean(0)
    if float(k_bar.norm()) == 0:
        raise ValueError("the selected neurons are all zero at the edit positions; select other neurons")
    a = keys @ k_bar / k_bar.pow(2).sum()  # [P]
    x = required_shift(readout.h, u, margin, eps)
    valid = a > 1e-8
    if not bool(valid.any()):
        raise ValueError("no edit prompt activates the selected neurons along their mean key; select other neurons")
    c_p = x[valid] / a[valid]
    c = {"max": c_p.max(), "median": c_p.median(), "mean": c_p.mean()}[aggregate].item()
    delta = (c * k_bar / k_bar.pow(2).sum()).unsqueeze(1) * u_hat.unsqueeze(0)  # [k, D]
    before = margin_of(readout.h, u, eps)
    predicted = margin_of(readout.h + (c * a).unsqueeze(1) * u_hat, u, eps)
    info = {
        "c": c,
        "aggregate": aggregate,
        "margin": margin,
        "eps": eps,
        "norm_u": float(u.norm()),
        "n_prompts": int(keys.shape[0]),
        "n_prompts_active": int(valid.sum()),
        "margin_before": before.tolist(),
        "margin_predicted": predicted.tolist(),
        "delta_frobenius": float(delta.norm()),
        "delta_relative": float(delta.norm() / _columns(loaded, neurons).norm()),
    }
    return NeuronEdit(list(neurons), delta.float(), {}), info


def _columns(loaded, neurons) -> torch.Tensor:
    """The current write-out columns W_down[:, i] of ``neurons``: [k, hidden] float64."""
    return torch.stack(
        [loaded.adapter.down_proj(loaded.model, layer).weight.detach()[:, i].double().cpu() for layer, i in neurons]
    )


# ------------------------------------------------------------------ files and application


def save_edit(path: str | Path, edit: NeuronEdit, meta: dict, report: dict | None = None) -> Path:
    from safetensors.torch import save_file

    from hones_nn.utils.io import atomic_write_json, atomic_write_with

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"--out {path}: the edit is a .safetensors file")
    tensors = {
        "layers": torch.tensor([a for a, _ in edit.neurons], dtype=torch.int32),
        "neurons": torch.tensor([b for _, b in edit.neurons], dtype=torch.int32),
        "delta": edit.delta.float().contiguous(),
    }
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta, sort_keys=True)}))
    if report is not None:
        atomic_write_json(path.with_suffix(".json"), report)
    return path


def load_edit(path: str | Path) -> NeuronEdit:
    from hones_nn.utils.io import read_safetensors

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--edit {path}: no such file; make one with `hones-nn edit ... --out FILE`")
    tensors, raw = read_safetensors(path, f"--edit {path}", "; make one with `hones-nn edit`")
    meta = json.loads(raw.get(META_KEY, "null"))
    if meta is None or not {"layers", "neurons", "delta"} <= set(tensors):
        raise ValueError(
            f"--edit {path} is not a hones-nn edit (no {META_KEY} metadata); make one with `hones-nn edit`"
        )
    neurons = list(zip(tensors["layers"].tolist(), tensors["neurons"].tolist()))
    return NeuronEdit(neurons, tensors["delta"].float(), meta)


def check_edit(loaded, edit: NeuronEdit, path: str = "the edit") -> None:
    sizes = loaded.sizes
    if edit.delta.shape != (len(edit.neurons), sizes.hidden_size):
        raise ValueError(
            f"{path}: delta {tuple(edit.delta.shape)} does not fit {loaded.model_id} "
            f"(hidden size {sizes.hidden_size}); make the edit on this model"
        )
    for layer, neuron in edit.neurons:
        if not (0 <= layer < sizes.num_layers and 0 <= neuron < sizes.d_ff):
            raise ValueError(f"{path}: neuron {layer}:{neuron} is outside {loaded.model_id}")
    want = edit.meta.get("weights_hash")
    if want and loaded.weights_hash and want != loaded.weights_hash:
        raise ValueError(
            f"{path} was made for weights {want}, but {loaded.model_id} has {loaded.weights_hash}; "
            "re-run `hones-nn edit` on these weights"
        )


@contextlib.contextmanager
def applied(loaded, edit: NeuronEdit):
    """W_down[:, i] += delta of each edited neuron inside the block; restored exactly after."""
    saved = []
    try:
        with torch.no_grad():
            for layer, ks in edit.by_layer().items():
                weight = loaded.adapter.down_proj(loaded.model, layer).weight
                cols = torch.tensor([edit.neurons[k][1] for k in ks], device=weight.device)
                saved.append((weight, cols, weight[:, cols].clone()))
                weight[:, cols] += edit.delta[ks].T.to(device=weight.device, dtype=weight.dtype)
        yield
    finally:
        with torch.no_grad():
            for weight, cols, old in saved:
                weight[:, cols] = old


def apply_permanently(loaded, edit: NeuronEdit) -> None:
    """Add the edit to the weights for the rest of the process."""
    with torch.no_grad():
        for layer, ks in edit.by_layer().items():
            weight = loaded.adapter.down_proj(loaded.model, layer).weight
            cols = torch.tensor([edit.neurons[k][1] for k in ks], device=weight.device)
            weight[:, cols] += edit.delta[ks].T.to(device=weight.device, dtype=weight.dtype)
