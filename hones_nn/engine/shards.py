"""Checkpointed, resumable sharded runs.

A long recipe splits its items into shards of fixed size. Each finished shard's partial
result (a dict of float64 arrays: sums, counts, per-item values) is written atomically as
safetensors under ``<checkpoint_dir>/<run key>/``; a rerun of the same command (same run
key: method, model, data, split, config) skips finished shards. Shards are reduced in
shard order, so an interrupted and resumed run ends with the same numbers as an
uninterrupted one, bit for bit.

Remote runs (``--remote``) also keep ``jobs.json`` there: the NDIF job id of every
request of an unfinished shard (label ``shard-K/req-J``), so a restarted run re-attaches
to jobs already submitted instead of submitting them again; a shard's entries are
dropped once its result file is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from hones_nn.engine.remote import JobJournal, request_scope
from hones_nn.utils.io import atomic_write_json, atomic_write_with

T = TypeVar("T")


def _save_shard(tensors: dict[str, torch.Tensor], path: str) -> None:
    save_file(tensors, path)


def run_key(config: dict) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ShardedRun:
    def __init__(self, checkpoint_dir: str | Path | None, config: dict, n_items: int, shard_size: int):
        if n_items <= 0:
            raise ValueError("nothing to run: the split has no examples")
        if shard_size <= 0:
            raise ValueError(f"shard size must be positive, got {shard_size}")
        self.config = config
        self.n_items = n_items
        self.shard_size = shard_size
        self.dir: Path | None = None
        self.journal: JobJournal | None = None
        if checkpoint_dir is not None:
            self.dir = Path(checkpoint_dir) / run_key(config)
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.dir / "run.json", {"config": config, "n_items": n_items, "shard_size": shard_size})
            self.journal = JobJournal(self.dir / "jobs.json")

    @property
    def shards(self) -> list[range]:
        return [range(s, min(s + self.shard_size, self.n_items)) for s in range(0, self.n_items, self.shard_size)]

    def _path(self, k: int) -> Path:
        if self.dir is None:
            raise RuntimeError("a run without a checkpoint folder has no shard files")
        return self.dir / f"shard-{k:05d}.safetensors"

    def run(
        self, compute: Callable[[range], dict[str, np.ndarray]], desc: str = "shards", progress: bool = True
    ) -> list[dict[str, np.ndarray]]:
        results = []
        done = sum(1 for k in range(len(self.shards)) if self.dir is not None and self._path(k).exists())
        bar = tqdm(total=len(self.shards), initial=done, desc=desc, disable=not progress, leave=False)
        for k, shard in enumerate(self.shards):
            if self.dir is not None and self._path(k).exists():
                results.append({n: t.numpy() for n, t in load_file(self._path(k)).items()})
                continue
            with request_scope(f"shard-{k:05d}", self.journal):
                result = compute(shard)
            tensors = {n: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for n, v in result.items()}
            if self.dir is not None and self.journal is not None:
                atomic_write_with(self._path(k), partial(_save_shard, tensors))
                self.journal.drop_prefix(f"shard-{k:05d}/")
            results.append({n: t.numpy() for n, t in tensors.items()})
            bar.update(1)
        bar.close()
        return results

    def cleanup(self) -> None:
        """Remove the checkpoint once the final table is written."""
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir)


def run_shards(
    checkpoint_dir: str | Path | None,
    config: dict,
    n_items: int,
    shard_size: int,
    compute: Callable[[list[int]], dict[str, np.ndarray]],
    reduce: Callable[[list[dict[str, np.ndarray]]], T],
    desc: str = "shards",
    progress: bool = True,
) -> T:
    """The one shard / checkpoint / resume loop every recipe runs through.

    ``compute(item_ids)`` returns a shard's partial result (arrays of sums, counts,
    per-item values); ``reduce(parts)``, given the parts in shard order, the final value.
    Finished shards are kept under ``checkpoint_dir`` (keyed by ``config``) until
    ``reduce`` has succeeded, so an interrupted or failing run resumes where it stopped.
    """
    run = ShardedRun(checkpoint_dir, config, n_items, shard_size)
    parts = run.run(lambda shard: compute(list(shard)), desc=desc, progress=progress)
    value = reduce(parts)
    run.cleanup()
    return value


def mean_of(parts: list[dict[str, np.ndarray]], total: str = "sum", count: str = "count") -> np.ndarray:
    """sum of the parts' ``total`` arrays / sum of their ``count`` scalars."""
    return sum(p[total] for p in parts) / sum(p[count][0] for p in parts)
