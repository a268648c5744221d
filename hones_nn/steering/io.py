"""Files of steering: the neurons to steer (in) and the learned scales (out).

Neurons come from one of three sources (see :func:`select_neurons`):

* a score table of ``hones-nn rank`` (Parquet, every neuron ranked): its top k, or its
  top ``ratio`` of all neurons (``--scores T --top-k K`` / ``--top-ratio R``);
* a neuron list file (``--neurons FILE``): a cross-task group, a hand-picked set ... as
  Parquet or CSV with integer columns ``layer`` and ``neuron``, or JSON: a list of
  ``[layer, neuron]`` pairs, a list of ``{"layer": l, "neuron": i}`` objects, or an
  object holding such a list under ``"neurons"``. A full score table passed here is
  refused (steering all neurons is never what was meant; use ``--scores``).

Scales are saved as safetensors (:func:`save_scales`): tensors ``scales`` [n] (s = 1 +
delta, the values applied), ``delta`` [n] and ``neurons`` [n, 2] (layer, neuron) int64,
so the file is self-contained; the safetensors header metadata (string values only)
holds JSON under ``hones_nn.*`` keys: method, task, model id, weights hash, neurons
source, hyper-parameters, the dev loss curve and free-form extras. Written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hones_nn.utils.io import atomic_write_with

META_PREFIX = "hones_nn."
FORMAT = "hones-nn-steering-scales/1"


# ------------------------------------------------------------------ neurons in


def _pairs(values, source) -> list[tuple[int, int]]:
    out = []
    for k, v in enumerate(values):
        if isinstance(v, dict):
            if "layer" not in v or "neuron" not in v:
                raise ValueError(f"{source}: entry {k} {v!r} needs keys 'layer' and 'neuron'")
            layer, neuron = v["layer"], v["neuron"]
        elif isinstance(v, (list, tuple)) and len(v) == 2:
            layer, neuron = v
        else:
            raise ValueError(f"{source}: entry {k} {v!r} is not a [layer, neuron] pair")
        if int(layer) != layer or int(neuron) != neuron:
            raise ValueError(f"{source}: entry {k} {v!r} has a non-integer layer or neuron")
        out.append((int(layer), int(neuron)))
    return out


def read_neuron_file(path: str | Path) -> list[tuple[int, int]]:
    """(layer, neuron) pairs of a neuron list file (Parquet, CSV or JSON; see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"neuron file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            if "neurons" not in data:
                raise ValueError(f"{path}: a JSON object must hold the list under 'neurons'")
            data = data["neurons"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of [layer, neuron] pairs")
        pairs = _pairs(data, path)
    elif suffix in (".parquet", ".pq", ".csv"):
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
            meta = {}
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            meta = table.schema.metadata or {}
        missing = [c for c in ("layer", "neuron") if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: no column(s) {', '.join(missing)}; a neuron file needs columns layer, neuron")
        if meta.get(b"hones_nn.kind") == b'"neurons"' and "rank" in table.column_names:
            raise ValueError(
                f"{path} is a full neuron score table (every neuron ranked): pass it as --scores "
                "with --top-k or --top-ratio, not as --neurons"
            )
        layers = table.column("layer").to_numpy()
        neurons = table.column("neuron").to_numpy()
        pairs = _pairs(zip(layers.tolist(), neurons.tolist()), path)
    else:
        raise ValueError(f"{path}: unknown neuron file type {suffix!r}; use .parquet, .csv or .json")
    if not pairs:
        raise ValueError(f"{path} lists no neurons")
    return pairs


def check_neurons(neurons, num_layers: int, d_ff: int, source: str = "neurons") -> list[tuple[int, int]]:
    """Sorted, duplicate-free pairs, each inside the model; a clear error otherwise."""
    neurons = [(int(layer), int(i)) for layer, i in neurons]
    bad = [(layer, i) for layer, i in neurons if not (0 <= layer < num_layers and 0 <= i < d_ff)]
    if bad:
        raise ValueError(
            f"{source}: {len(bad)} neuron(s) outside the model ({num_layers} layers x {d_ff} "
            f"neurons), first {bad[:3]}; the file was made for another model"
        )
    unique = sorted(set(neurons))
    if len(unique) != len(neurons):
        raise ValueError(f"{source}: {len(neurons) - len(unique)} duplicate neuron(s); list each neuron once")
    if not unique:
        raise ValueError(f"{source}: no neurons to steer")
    return unique


def select_neurons(
    loaded,
    scores: str | None = None,
    top_k: int | None = None,
    top_ratio: float | None = None,
    neurons_file: str | None = None,
    task: str | None = None,
) -> tuple[list[tuple[int, int]], dict]:
    """The neurons to steer and a description of where they came from (for the metadata)."""
    from hones_nn.engine.tables import read_neuron_table, top_k_for_ratio

    sizes = loaded.sizes
    if (scores is None) == (neurons_file is None):
        raise ValueError("give the neurons either as --scores TABLE (with --top-k or --top-ratio) or as --neurons FILE")
    if neurons_file is not None:
        if top_k is not None or top_ratio is not None:
            raise ValueError(
                "--top-k / --top-ratio select from a score table; with --neurons every listed neuron is used"
            )
        chosen = check_neurons(read_neuron_file(neurons_file), sizes.num_layers, sizes.d_ff, str(neurons_file))
        return chosen, {"source": "file", "path": str(neurons_file), "k": len(chosen)}
    table = read_neuron_table(scores, loaded, "steering")
    if top_k is not None and top_ratio is not None:
        raise ValueError("give --top-k or --top-ratio, not both")
    if top_k is None:
        top_k = top_k_for_ratio(len(table.rank), top_ratio if top_ratio is not None else 0.01)
    if not 0 < top_k <= len(table.rank):
        raise ValueError(f"--top-k must be in 1..{len(table.rank)}, got {top_k}")
    chosen = check_neurons(table.top(top_k), sizes.num_layers, sizes.d_ff, str(scores))
    info = {
        "source": "scores",
        "path": str(scores),
        "k": top_k,
        "ranking_method": table.meta.get("method"),
        "ranking_task": table.meta.get("task"),
    }
    if task is not None and table.meta.get("task") not in (None, task):
        info["note"] = f"neurons ranked for task {table.meta.get('task')!r}, steered on {task!r}"
    return chosen, info


# ------------------------------------------------------------------ scales out / in


@dataclass
class ScalesFile:
    """What a scales file holds."""

    neurons: list[tuple[int, int]]
    scales: torch.Tensor  # [n] float32, the factors applied (s = 1 + delta)
    delta: torch.Tensor  # [n] float32
    meta: dict = field(default_factory=dict)

    def intervention(self):
        from hones_nn.interventions.neurons import NeuronScale

        return NeuronScale(self.neurons, self.scales.detach().float().clone())

    def check_model(self, loaded, path: str | Path = "scales") -> None:
        """A clear error if the scales were learned on another model (weights hash, else id)."""
        sizes = loaded.sizes
        check_neurons(self.neurons, sizes.num_layers, sizes.d_ff, str(path))
        their_hash, their_id = self.meta.get("weights_hash"), self.meta.get("model_id")
        if their_hash is not None and loaded.weights_hash is not None:
            if their_hash != loaded.weights_hash:
                raise ValueError(
                    f"{path} was learned on model {their_id!r} (weights {their_hash}), not on "
                    f"{loaded.model_id!r} (weights {loaded.weights_hash}); re-learn it for this model"
                )
        elif their_id not in (None, loaded.model_id):
            raise ValueError(f"{path} was learned on model {their_id!r}, not {loaded.model_id!r}")


def save_scales(path: str | Path, neurons, delta: torch.Tensor, meta: dict) -> Path:
    """Write ``neurons``, ``delta`` and s = 1 + delta as safetensors with JSON metadata."""
    from safetensors.torch import save_file

    neurons = [(int(layer), int(i)) for layer, i in neurons]
    delta = delta.detach().float().cpu().contiguous()
    if delta.shape != (len(neurons),):
        raise ValueError(f"{len(neurons)} neurons but delta has shape {tuple(delta.shape)}")
    tensors = {
        "scales": (1.0 + delta).contiguous(),
        "delta": delta,
        "neurons": torch.tensor(neurons, dtype=torch.int64).reshape(-1, 2).contiguous(),
    }
    full = {"format": FORMAT, **meta}
    metadata = {META_PREFIX + k: json.dumps(v, sort_keys=True, default=_json_default) for k, v in full.items()}
    return atomic_write_with(path, lambda p: save_file(tensors, p, metadata=metadata))


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def load_scales(path: str | Path) -> ScalesFile:
    from hones_nn.utils.io import read_safetensors

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scales file {path} does not exist; learn one with `hones-nn steer`")
    tensors, raw = read_safetensors(path, str(path))
    if not {"scales", "neurons"} <= set(tensors):
        raise ValueError(f"{path} is not a hones-nn scales file (tensors {sorted(tensors)})")
    scales = tensors["scales"].float()
    neurons_t = tensors["neurons"]
    delta = tensors["delta"].float() if "delta" in tensors else scales - 1.0
    meta = {}
    for key, value in raw.items():
        if key.startswith(META_PREFIX):
            try:
                meta[key[len(META_PREFIX) :]] = json.loads(value)
            except json.JSONDecodeError:
                meta[key[len(META_PREFIX) :]] = value
    neurons = [(int(layer), int(i)) for layer, i in neurons_t.tolist()]
    if len(neurons) != scales.numel():
        raise ValueError(f"{path}: {len(neurons)} neurons but {scales.numel()} scales")
    return ScalesFile(neurons, scales, delta, meta)
