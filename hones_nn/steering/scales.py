"""Learnable neuron scales and their training loop (HONES section 4.3, appendix F.1).

Steering multiplies the selected neurons z_i (the input of ``down_proj``) by s_i at every
position, s = 1 + delta, delta learned from 0 with all model weights frozen, on the dev
split:

    loss = CE(answer tokens) + beta * KL(p_frozen || p_steered)(answer positions)
           + l2 * sum_i delta_i^2

Reference hyper-parameters (the defaults of :class:`SteeringConfig`): beta 0.05, AdamW
lr 5e-4 (no weight decay: the explicit L2 plays that role), cosine decay to 0.1 lr, no
warm-up, gradient accumulation 4 micro-batches, gradient-norm clip 1.0, 2 epochs, delta
clamped to [-1.5, 1.5] after every step.

Choices (written down here; the paper leaves them open):

* **Where the gradient is taken: plain torch forward pre-hooks, not an nnsight trace.**
  Training needs d loss / d delta only. A pre-hook on each steered layer's ``down_proj``
  returns ``z * v`` with ``v`` = ones(d_ff) scattered with s at the selected indices; v
  is a differentiable function of delta, so ordinary autograd gives delta.grad and the
  optimizer steps a plain leaf tensor. This is the most reliable route: no proxy
  lifetimes, no ``with loss.backward()`` block, the optimizer and the clip work on real
  tensors, and ``logits_to_keep`` keeps only the answer positions' logits. Evaluation
  applies the learned scales through :class:`~hones_nn.interventions.neurons.NeuronScale`
  in the engine's nnsight traces (generation included); multiplying the other neurons by
  exactly 1.0 changes no bit, so the two forwards agree exactly (a test checks it).
* **Precision:** s is cast to z's dtype before the product, exactly as ``NeuronScale``
  does at evaluation, so training and evaluation see the same numbers. In float16 /
  bfloat16 a factor 1 + delta is representable only to ~1e-3 / ~8e-3, so the small
  deltas of the reference learning rate are rounded away there: learn and apply scales
  in float32 (the default) where that matters.
* **Frozen weights:** every parameter has ``requires_grad`` False during training
  (:func:`hones_nn.engine.readout.frozen_parameters`, flags restored after), so the graph
  starts at the scale vector and no parameter ``.grad`` is ever written.
* **Targets:** generative tasks (VQA, OCR, caption) teacher-force the gold answer after
  the prompt; CE is the token mean over the answer tokens *and the final EOS*
  (``include_eos``: stopping is part of the greedy answer the metric scores). Caption's
  gold is the task's one reference per image, drawn with a fixed per-image seed ("one
  random reference"). Retrieval trains on the positive candidate and ``negatives`` (4)
  hard negatives drawn afresh each epoch, with target " Yes" / " No" (the evaluation's
  decision token ids) at T, the last prompt position.
* **KL** is sum_v p_frozen (log p_frozen - log p_steered) at the same positions as CE,
  averaged over positions; p_frozen comes from a no-grad forward without hooks (skipped
  when beta is 0). At delta = 0 both forwards are identical, so KL is exactly 0.
* **Order and resume:** each epoch's example order (and retrieval's negatives) come from
  a generator seeded by (seed, epoch), so an epoch is reproducible on its own. With a
  ``checkpoint_dir`` the state (delta, optimizer, schedule, curve) is saved after every
  epoch; a rerun with the same settings resumes after the last finished epoch and ends
  with the same delta as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from hones_nn.engine.encoding import encode_prompts
from hones_nn.engine.readout import frozen_parameters
from hones_nn.interventions.neurons import NeuronScale
from hones_nn.tasks.base import Prompt
from hones_nn.tasks.retrieval import decision_token_ids
from hones_nn.utils.io import atomic_write_with, read_safetensors


@dataclass
class SteeringConfig:
    """Hyper-parameters of one scale-learning run (defaults: the reference's)."""

    beta: float = 0.05  # weight of KL(p_frozen || p_steered); 0 = the no-KL baseline
    lr: float = 5e-4
    min_lr_ratio: float = 0.1  # cosine schedule ends at lr * min_lr_ratio
    weight_decay: float = 0.0  # AdamW's; the explicit l2 below is the regulariser
    l2: float = 1e-4  # l2 * sum(delta ** 2)
    grad_accum: int = 4
    clip: float = 1.0
    epochs: int = 2
    clamp: float = 1.5  # delta in [-clamp, clamp]
    batch_size: int = 8  # rows per micro-batch (retrieval: candidate prompts)
    negatives: int = 4  # retrieval: hard negatives per positive per epoch
    include_eos: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.grad_accum < 1 or self.batch_size < 1:
            raise ValueError("epochs, grad_accum and batch_size must be >= 1")
        if self.beta < 0 or self.l2 < 0 or self.clamp <= 0 or self.lr <= 0:
            raise ValueError("beta and l2 must be >= 0, clamp and lr > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio must be in [0, 1]")
        if self.negatives < 0:
            raise ValueError("negatives must be >= 0")

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ applying scales with hooks


def neuron_groups(neurons: Sequence[tuple[int, int]]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (neuron indices, positions in the neuron list)}."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for k, (layer, i) in enumerate(neurons):
        groups.setdefault(int(layer), []).append((int(i), k))
    return {
        layer: (torch.tensor([i for i, _ in pairs]), torch.tensor([k for _, k in pairs]))
        for layer, pairs in sorted(groups.items())
    }


@contextlib.contextmanager
def scale_hooks(loaded, neurons: Sequence[tuple[int, int]], scales: torch.Tensor):
    """While inside, z_i <- s_i z_i at every position for ``neurons`` (``scales`` aligned).

    Forward pre-hooks on ``down_proj`` of each steered layer; ``scales`` may require grad
    (the product is differentiable in it). Hooks are removed on exit, even on error.
    """
    if len(neurons) != scales.numel():
        raise ValueError(f"{len(neurons)} neurons but {scales.numel()} scales")
    d_ff = loaded.sizes.d_ff
    handles = []
    try:
        for layer, (idx, pos) in neuron_groups(neurons).items():
            module = loaded.adapter.down_proj(loaded.model, layer)

            def hook(_module, args, idx=idx, pos=pos):
                z = args[0]
                s = scales[pos.to(scales.device)].to(device=z.device, dtype=torch.float32)
                v = torch.ones(d_ff, device=z.device, dtype=torch.float32).index_put((idx.to(z.device),), s)
                return (z * v.to(z.dtype), *args[1:])

            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------ training rows and losses


@dataclass
class Row:
    """One training row: a prompt and, for retrieval, the decision target (True = " Yes")."""

    prompt: Prompt
    yes: bool | None = None


def epoch_rows(td, config: SteeringConfig, epoch: int) -> list[Row]:
    """The rows of one epoch, shuffled by a generator seeded with (seed, epoch)."""
    rng = np.random.default_rng([config.seed, epoch])
    rows: list[Row] = []
    for item in td.items:
        rows.extend(Row(prompt, yes) for prompt, yes in td.task.training_rows(item, rng, config.negatives))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


@dataclass
class Batch:
    """Model inputs of a micro-batch and the positions / targets the loss reads."""

    inputs: dict
    keep: int  # logits_to_keep
    targets: torch.Tensor  # [B, keep - 1] or [B, 1] token ids
    mask: torch.Tensor  # bool, same shape: which positions count


def make_batch(loaded, td, rows: Sequence[Row], config: SteeringConfig, device) -> Batch:
    task = td.task
    prompts = [r.prompt for r in rows]
    if task.generative:
        enc = encode_prompts(loaded, td.images, prompts, with_answers=True, reference_compat=task.reference_compat)
        width = max(len(a) for a in enc.answer_ids)  # answer tokens + EOS, right-aligned
        ids = enc.inputs["input_ids"]
        targets = ids[:, -width:]
        mask = enc.answer_mask[:, -width:].clone()
        if not config.include_eos:
            mask[:, -1] = False  # every row ends with its EOS (left padding)
        keep = width + 1  # logits at positions S-width-1 .. S-2 predict the answer
    else:
        enc = encode_prompts(loaded, td.images, prompts, with_answers=False, reference_compat=task.reference_compat)
        yes, no = decision_token_ids(loaded.tokenizer)
        targets = torch.tensor([[yes if r.yes else no] for r in rows])
        mask = torch.ones_like(targets, dtype=torch.bool)
        keep = 1
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()}
    return Batch(inputs, keep, targets.to(device), mask.to(device))


def _logits(loaded, batch: Batch) -> torch.Tensor:
    out = loaded.model(**batch.inputs, logits_to_keep=batch.keep, use_cache=False).logits.float()
    return out[:, :-1] if batch.keep > 1 else out


def batch_losses(loaded, batch: Batch, neurons, scales: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """CE and KL of one micro-batch under ``scales`` (differentiable in ``scales``)."""
    frozen_logp = None
    if beta > 0:
        with torch.no_grad():
            frozen_logp = torch.log_softmax(_logits(loaded, batch), -1)[batch.mask]
    with scale_hooks(loaded, neurons, scales):
        logits = _logits(loaded, batch)
    logp = torch.log_softmax(logits, -1)[batch.mask]  # [positions, vocab]
    ce = -logp.gather(-1, batch.targets[batch.mask][:, None]).mean()
    if frozen_logp is None:
        kl = torch.zeros((), device=ce.device)
    else:
        kl = (frozen_logp.exp() * (frozen_logp - logp)).sum(-1).mean()
    return {"ce": ce, "kl": kl, "positions": torch.tensor(float(batch.mask.sum()))}


def scales_from_delta(delta: torch.Tensor, clamp: float) -> torch.Tensor:
    return 1.0 + delta.clamp(-clamp, clamp)


# ------------------------------------------------------------------ the loop


@dataclass
class TrainResult:
    neurons: list[tuple[int, int]]
    delta: torch.Tensor  # [n], detached
    config: SteeringConfig
    curve: list[dict] = field(default_factory=list)  # one entry per optimizer step
    epochs: list[dict] = field(default_factory=list)  # mean losses per epoch
    resumed_from_epoch: int = 0

    @property
    def scales(self) -> torch.Tensor:
        return scales_from_delta(self.delta, self.config.clamp)

    def intervention(self) -> NeuronScale:
        return NeuronScale(self.neurons, self.scales.clone())

    def meta(self) -> dict:
        return {
            "hyperparameters": self.config.as_dict(),
            "curve": self.curve,
            "epoch_losses": self.epochs,
            "resumed_from_epoch": self.resumed_from_epoch,
        }


def cosine_factor(step: int, total: int, min_ratio: float) -> float:
    """lr multiplier at optimizer step ``step`` (0-based): cosine from 1 to ``min_ratio``."""
    if total <= 1:
        return 1.0
    progress = min(step, total - 1) / (total - 1)
    return min_ratio + 0.5 * (1 - min_ratio) * (1 + math.cos(math.pi * progress))


def _fingerprint(loaded, td, neurons, config: SteeringConfig) -> str:
    ident = {
        "model_id": loaded.model_id,
        "weights_hash": loaded.weights_hash,
        "task": td.task.name,
        "data": td.data_dir,
        "split": td.split,
        "items": [i.item_id for i in td.items],
        "neurons": [list(n) for n in neurons],
        "config": config.as_dict(),
        "reference_compat": td.task.reference_compat,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _write_checkpoint(path: Path, state: dict) -> None:
    """An epoch checkpoint as safetensors (tensors) + JSON metadata, never pickle."""
    optimizer = state["optimizer"]
    tensors = {"delta": state["delta"].contiguous()}
    for key, value in optimizer["state"].get(0, {}).items():
        tensors[f"optimizer.{key}"] = (
            (value if torch.is_tensor(value) else torch.tensor(value)).detach().cpu().contiguous()
        )
    meta = {
        "fingerprint": state["fingerprint"],
        "epoch": str(state["epoch"]),
        "curve": state["curve"],
        "epochs": state["epochs"],
        "scheduler": json.dumps(state["scheduler"]),
        "param_groups": json.dumps(optimizer["param_groups"]),
    }
    atomic_write_with(path, lambda p: save_file(tensors, p, metadata=meta))


def _read_checkpoint(path: Path) -> dict:
    tensors, meta = read_safetensors(path, f"steering checkpoint {path}", "; delete it to redo that epoch")
    opt_state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("optimizer.")}
    return {
        "fingerprint": meta.get("fingerprint"),
        "epoch": int(meta.get("epoch", 0)),
        "delta": tensors["delta"],
        "optimizer": {"state": {0: opt_state} if opt_state else {}, "param_groups": json.loads(meta["param_groups"])},
        "scheduler": json.loads(meta["scheduler"]),
        "curve": meta["curve"],
        "epochs": meta["epochs"],
    }


def _latest_checkpoint(folder: Path, fingerprint: str):
    if not folder.exists():
        return None
    found = sorted(folder.glob("epoch-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))
    for path in reversed(found):
        state = _read_checkpoint(path)
        if state.get("fingerprint") == fingerprint:
            return state
        warnings.warn(f"{path} was written by a run with other settings; starting over in {folder}", stacklevel=3)
        for old in found:
            old.unlink()
        return None
    return None


def train_scales(
    loaded,
    td,
    neurons: Sequence[tuple[int, int]],
    config: SteeringConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> TrainResult:
    """Learn delta for ``neurons`` on ``td`` (the dev split); weights stay frozen.

    Returns the learned delta (clamped) and the loss curve (per optimizer step: loss, ce,
    kl, l2, lr, grad_norm before clipping). ``checkpoint_dir``: save after every epoch and
    resume from the last finished one when the settings match.
    """
    config = config or SteeringConfig()
    neurons = [(int(layer), int(i)) for layer, i in neurons]
    if not neurons:
        raise ValueError("no neurons to steer")
    device = next(loaded.model.parameters()).device
    delta = torch.zeros(len(neurons), dtype=torch.float32, device=device, requires_grad=True)
    optimizer = torch.optim.AdamW([delta], lr=config.lr, weight_decay=config.weight_decay)
    n_rows = len(epoch_rows(td, config, 0))
    micro_per_epoch = math.ceil(n_rows / config.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, total_steps, config.min_lr_ratio)
    )
    curve: list[dict] = []
    epoch_log: list[dict] = []
    start_epoch = 0
    fingerprint = _fingerprint(loaded, td, neurons, config)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        state = _latest_checkpoint(folder, fingerprint)
        if state is not None:
            with torch.no_grad():
                delta.copy_(state["delta"].to(device))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            curve, epoch_log = json.loads(state["curve"]), json.loads(state["epochs"])
            start_epoch = int(state["epoch"])

    step = start_epoch * steps_per_epoch
    with frozen_parameters(loaded.model), torch.enable_grad():
        for epoch in range(start_epoch, config.epochs):
            rows = epoch_rows(td, config, epoch)
            chunks = [rows[i : i + config.batch_size] for i in range(0, len(rows), config.batch_size)]
            sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
            bar = tqdm(
                total=len(chunks),
                desc=desc or f"steer {td.task.name} epoch {epoch + 1}/{config.epochs}",
                disable=not progress,
                leave=False,
            )
            for group_start in range(0, len(chunks), config.grad_accum):
                group = chunks[group_start : group_start + config.grad_accum]
                optimizer.zero_grad(set_to_none=True)
                logged = {"ce": 0.0, "kl": 0.0}
                for chunk in group:
                    batch = make_batch(loaded, td, chunk, config, device)
                    parts = batch_losses(loaded, batch, neurons, scales_from_delta(delta, config.clamp), config.beta)
                    loss = (parts["ce"] + config.beta * parts["kl"]) / len(group)
                    loss.backward()
                    logged["ce"] += parts["ce"].item() / len(group)
                    logged["kl"] += parts["kl"].item() / len(group)
                    bar.update(1)
                l2 = config.l2 * (delta**2).sum()
                if config.l2 > 0:
                    l2.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_([delta], config.clip))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    delta.clamp_(-config.clamp, config.clamp)
                l2_value = l2.item()
                total = logged["ce"] + config.beta * logged["kl"] + l2_value
                curve.append(
                    {
                        "step": step,
                        "epoch": epoch,
                        "loss": total,
                        "ce": logged["ce"],
                        "kl": logged["kl"],
                        "l2": l2_value,
                        "lr": lr,
                        "grad_norm": grad_norm,
                    }
                )
                sums["loss"] += total
                sums["ce"] += logged["ce"]
                sums["kl"] += logged["kl"]
                step += 1
            bar.close()
            n_steps = max(1, math.ceil(len(chunks) / config.grad_accum))
            epoch_log.append({"epoch": epoch, **{k: v / n_steps for k, v in sums.items()}})
            if folder is not None:
                state = {
                    "fingerprint": fingerprint,
                    "epoch": epoch + 1,
                    "delta": delta.detach().cpu().clone(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "curve": json.dumps(curve),
                    "epochs": json.dumps(epoch_log),
                }
                _write_checkpoint(folder / f"epoch-{epoch + 1}.safetensors", state)
    return TrainResult(neurons, delta.detach().cpu().clone(), config, curve, epoch_log, start_epoch)


@torch.no_grad()
def dev_loss(loaded, td, neurons, scales: torch.Tensor | None, config: SteeringConfig | None = None) -> dict:
    """Mean CE (and KL to the frozen model) of ``td`` under fixed ``scales`` (None: unsteered).

    The loss of the training objective without the L2 term, epoch 0's rows; the fast
    selection criterion of the grid-search baseline (``criterion='loss'``).
    """
    config = config or SteeringConfig()
    device = next(loaded.model.parameters()).device
    rows = epoch_rows(td, config, 0)
    ce_sum = kl_sum = weight = 0.0
    for i in range(0, len(rows), config.batch_size):
        batch = make_batch(loaded, td, rows[i : i + config.batch_size], config, device)
        if scales is None:
            parts = batch_losses(loaded, batch, [], torch.zeros(0), 0.0)
        else:
            parts = batch_losses(loaded, batch, neurons, scales.to(device).float(), config.beta)
        w = float(parts["positions"])
        ce_sum += float(parts["ce"]) * w
        kl_sum += float(parts["kl"]) * w
        weight += w
    ce, kl = ce_sum / weight, kl_sum / weight
    return {"ce": ce, "kl": kl, "loss": ce + config.beta * kl}
