"""Parquet score tables: one row per neuron (or head), ranked, with the run's metadata.

Neurons: ``layer`` int32, ``neuron`` int32, ``score`` float64, ``rank`` int32 (1 = most
important; ties broken by lower layer, then lower index). Every neuron of the language
model is listed, so users choose their own k.

Heads: ``layer``, ``head``, ``score``, ``rank``, ``base_utility``, ``intervened_utility``.
Exact (``vseam``) and AtP-screened (``atp-screen``) head tables share this schema; a
screened table's metadata says ``screen``, ``verified_heads`` and ``rank_rule`` (its
unverified heads hold screen estimates, rank below the verified ones and have a NaN
``intervened_utility``; see ``hones_nn.methods.atp_screen``).

File metadata (Parquet key-value, all strings): method, task, model id, revision or
weights hash, dataset and split, number of examples, seed, utility, the versions of
hones_nn / nnsight / transformers / torch, and the full run config as JSON
(key ``hones_nn.config``). Tables are written atomically (temp file + rename).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hones_nn.utils.io import atomic_write_with

META_PREFIX = "hones_nn."
NEURON_SCHEMA = pa.schema(
    [("layer", pa.int32()), ("neuron", pa.int32()), ("score", pa.float64()), ("rank", pa.int32())]
)
HEAD_SCHEMA = pa.schema(
    [
        ("layer", pa.int32()),
        ("head", pa.int32()),
        ("score", pa.float64()),
        ("rank", pa.int32()),
        ("base_utility", pa.float64()),
        ("intervened_utility", pa.float64()),
    ]
)


def versions() -> dict[str, str]:
    import nnsight
    import torch
    import transformers

    from hones_nn.utils.version import __version__

    return {
        "hones_nn": __version__,
        "nnsight": nnsight.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def rank_scores(scores: np.ndarray) -> np.ndarray:
    """Ranks (1 = highest score) of a [L, N] score matrix, flattened row-major.

    Ties are broken by lower layer, then lower index: a stable sort of the flattened
    matrix by descending score does exactly that.
    """
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        n = scores.shape[1]
        first = [(int(i // n), int(i % n)) for i in bad[:5]]
        raise ValueError(
            f"{bad.size} score(s) are NaN or infinite (first (layer, index): {first}); the method "
            "diverged or the inputs are degenerate: check the model dtype (use float32) and the data"
        )
    order = np.argsort(-flat, kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(1, len(flat) + 1)
    return ranks


def _metadata(meta: dict) -> dict[bytes, bytes]:
    import torch

    full = {"torch_threads": torch.get_num_threads(), **meta, "versions": versions()}
    out = {}
    for key, value in full.items():
        # every value is JSON (strings quoted), so it reads back with its type:
        # a weights hash of digits only stays a string
        text = json.dumps(value, sort_keys=True, default=str)
        out[(META_PREFIX + key).encode()] = text.encode()
    return out


def write_neuron_table(path: str | Path, scores: np.ndarray, meta: dict) -> Path:
    """``scores`` is [num_layers, d_ff]; every neuron gets a row."""
    scores = np.asarray(scores, dtype=np.float64)
    layers, width = scores.shape
    ranks = rank_scores(scores)
    table = pa.table(
        {
            "layer": np.repeat(np.arange(layers, dtype=np.int32), width),
            "neuron": np.tile(np.arange(width, dtype=np.int32), layers),
            "score": scores.reshape(-1),
            "rank": ranks.astype(np.int32),
        },
        schema=NEURON_SCHEMA,
    )
    table = table.replace_schema_metadata(_metadata({**meta, "kind": "neurons", "shape": [layers, width]}))
    return atomic_write_with(path, lambda p: pq.write_table(table, p))


def write_head_table(
    path: str | Path,
    scores: np.ndarray,
    base_utility: float,
    intervened: np.ndarray,
    meta: dict,
    ranks: np.ndarray | None = None,
) -> Path:
    """``ranks`` (flattened row-major, a permutation of 1..L*H) overrides the ranks derived
    from ``scores``: the screened table (``atp-screen``) ranks its verified heads above the
    unverified ones whatever their scores; ``intervened`` may then hold NaN (not measured)."""
    scores = np.asarray(scores, dtype=np.float64)
    layers, heads = scores.shape
    if ranks is None:
        ranks = rank_scores(scores)
    else:
        rank_scores(scores)  # the finiteness check
        ranks = np.asarray(ranks).reshape(-1)
        if sorted(ranks.tolist()) != list(range(1, layers * heads + 1)):
            raise ValueError(f"ranks must be a permutation of 1..{layers * heads}")
    table = pa.table(
        {
            "layer": np.repeat(np.arange(layers, dtype=np.int32), heads),
            "head": np.tile(np.arange(heads, dtype=np.int32), layers),
            "score": scores.reshape(-1),
            "rank": ranks.astype(np.int32),
            "base_utility": np.full(layers * heads, float(base_utility)),
            "intervened_utility": np.asarray(intervened, dtype=np.float64).reshape(-1),
        },
        schema=HEAD_SCHEMA,
    )
    table = table.replace_schema_metadata(_metadata({**meta, "kind": "heads", "shape": [layers, heads]}))
    return atomic_write_with(path, lambda p: pq.write_table(table, p))


@dataclass
class ScoreTable:
    path: Path
    kind: str  # "neurons" | "heads"
    meta: dict
    layer: np.ndarray
    index: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    table: pa.Table

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.meta["shape"])

    def matrix(self) -> np.ndarray:
        out = np.zeros(self.shape)
        out[self.layer, self.index] = self.score
        return out

    def top(self, k: int) -> list[tuple[int, int]]:
        """The k best (layer, index) pairs, by rank."""
        order = np.argsort(self.rank, kind="stable")[:k]
        return [(int(self.layer[i]), int(self.index[i])) for i in order]

    def top_ratio(self, ratio: float) -> list[tuple[int, int]]:
        return self.top(top_k_for_ratio(len(self.rank), ratio))


def top_k_for_ratio(total: int, ratio: float) -> int:
    """k = max(1, round(total * ratio)), Python's round-half-to-even as the reference."""
    if not 0 < ratio <= 1:
        raise ValueError(f"--top-ratio must be in (0, 1], got {ratio}")
    return max(1, round(total * ratio))


def read_table(path: str | Path) -> ScoreTable:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"score table {path} does not exist; make it with `hones-nn rank` or `hones-nn heads`")
    table = pq.read_table(path)
    raw = table.schema.metadata or {}
    meta = {}
    for key, value in raw.items():
        key = key.decode()
        if key.startswith(META_PREFIX):
            text = value.decode()
            try:
                meta[key[len(META_PREFIX) :]] = json.loads(text)
            except json.JSONDecodeError:
                meta[key[len(META_PREFIX) :]] = text
    kind = meta.get("kind")
    if kind not in ("neurons", "heads"):
        raise ValueError(f"{path} is not a hones-nn score table (no hones_nn.kind metadata)")
    index_col = "neuron" if kind == "neurons" else "head"
    _check_columns(path, table, kind, index_col)
    score = table.column("score").to_numpy()
    if np.isnan(score).any():
        raise ValueError(f"{path} holds NaN scores; recompute it")
    layer = table.column("layer").to_numpy()
    index = table.column(index_col).to_numpy()
    rank = table.column("rank").to_numpy()
    _check_rows(path, meta, kind, index_col, layer, index, rank)
    return ScoreTable(path=path, kind=kind, meta=meta, layer=layer, index=index, score=score, rank=rank, table=table)


_FIX = "recompute it with `hones-nn rank` / `hones-nn heads`, or fix the file"


def _check_columns(path: Path, table: pa.Table, kind: str, index_col: str) -> None:
    """Every column a score table needs is there with a usable type (integers, float scores)."""
    for name, want in (("layer", "integer"), (index_col, "integer"), ("rank", "integer"), ("score", "number")):
        if name not in table.column_names:
            raise ValueError(f"{path} ({kind} table) has no {name!r} column; {_FIX}")
        typ = table.schema.field(name).type
        ok = pa.types.is_integer(typ) if want == "integer" else pa.types.is_integer(typ) or pa.types.is_floating(typ)
        if not ok or table.column(name).null_count:
            raise ValueError(
                f"{path} ({kind} table): column {name!r} must hold {want}s without nulls, not {typ}"
                f"{' with nulls' if ok else ''}; {_FIX}"
            )


def _check_rows(path: Path, meta: dict, kind: str, index_col: str, layer, index, rank) -> None:
    """One row per (layer, index) of the table's shape, indices in range, ranks 1..n."""
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError(f"{path}: its metadata has no valid shape [layers, {index_col}s] ({shape!r}); {_FIX}")
    layers, width = shape
    for name, values, hi in (("layer", layer, layers), (index_col, index, width)):
        bad = np.flatnonzero((values < 0) | (values >= hi))
        if bad.size:
            raise ValueError(
                f"{path}: {bad.size} row(s) have a {name} out of range 0..{hi - 1} (first: row {int(bad[0])}, "
                f"{name} {int(values[bad[0]])}); {_FIX}"
            )
    flat = layer.astype(np.int64) * width + index.astype(np.int64)
    unique, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        dup = int(unique[np.argmax(counts > 1)])
        raise ValueError(
            f"{path}: {int((counts > 1).sum())} (layer, {index_col}) pair(s) appear more than once (first: "
            f"({dup // width}, {dup % width})); {_FIX}"
        )
    if len(flat) != layers * width:
        raise ValueError(
            f"{path}: {len(flat)} rows but its shape {layers} x {width} needs {layers * width} (one per "
            f"(layer, {index_col})): {layers * width - len(flat)} missing; {_FIX}"
        )
    if sorted(rank.tolist()) != list(range(1, len(rank) + 1)):
        raise ValueError(f"{path}: its ranks are not 1..{len(rank)}, each once; {_FIX}")


def check_table_matches(
    table: ScoreTable,
    shape: tuple[int, int],
    model_id: str | None = None,
    task: str | None = None,
    weights_hash: str | None = None,
) -> None:
    """A clear error if a table was made for another model shape, model or task.

    Models are compared by weights hash when both sides know it (the same weights loaded
    by name or by path are the same model), else by model id."""
    if tuple(table.shape) != tuple(shape):
        raise ValueError(
            f"{table.path} has shape {tuple(table.shape)} ({table.kind}) but the model has {tuple(shape)}: "
            "it was computed on another model; recompute it for this one"
        )
    same_weights = weights_hash is not None and table.meta.get("weights_hash") == weights_hash
    if not same_weights and model_id is not None and table.meta.get("model_id") not in (None, model_id):
        raise ValueError(
            f"{table.path} was computed on model {table.meta.get('model_id')!r}, not {model_id!r}; recompute it"
        )
    if task is not None and table.meta.get("task") not in (None, task):
        raise ValueError(f"{table.path} was computed for task {table.meta.get('task')!r}, not {task!r}")


def read_neuron_table(path, loaded, purpose: str) -> ScoreTable:
    """The neuron score table at ``path``, checked to be one (not a head table) and to have
    been computed on ``loaded``'s model; ``purpose`` completes the error ("--mask needs ...")."""
    table = read_table(path)
    if table.kind != "neurons":
        raise ValueError(f"{path} is a {table.kind} table; {purpose} needs a neuron score table from `hones-nn rank`")
    check_neuron_table_for(table, loaded)
    return table


def check_neuron_table_for(table: ScoreTable, loaded) -> None:
    """A clear error unless the neuron ``table`` was computed on ``loaded``'s model."""
    sizes = loaded.sizes
    check_table_matches(
        table, (sizes.num_layers, sizes.d_ff), model_id=loaded.model_id, weights_hash=loaded.weights_hash
    )
