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

Throughput (:func:`shard_options`, set by the runner around a command):

* ``concurrency`` N > 1 (``--remote-concurrency``; remote engines only, a local engine
  stays sequential): up to N unfinished shards are computed at once in worker threads,
  each in its own :func:`request_scope` inside a copy of the caller's context; each
  shard's file is written as it finishes, and the parts are returned in shard order, so
  the reduced value is bit-identical to a sequential run.
* ``select=(i, n)`` (``--shard i/n``, 1-based): only the shards k with k % n == i - 1
  are computed; their files stay under the run folder (whose key does not depend on
  i / n), nothing is reduced and :class:`ShardsPending` ends the command. A stage whose
  every shard file was present before the process started (copied in from the other
  processes) is reduced and the command goes on to its next stage (a method with two
  sharded stages: shard, gather, shard again, gather, merge).
* ``merge_only``: nothing is computed; every stage is reduced from its shard files, and
  a missing one raises a ValueError listing them.

In both modes the run folders are kept until the runner has written its table
(:func:`cleanup_runs`), so a merge that stops at a later stage loses nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
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


@dataclass
class ShardOptions:
    """How the sharded stages of the current command run (see the module doc)."""

    concurrency: int = 1  # shards computed at once (worker threads; remote engines only)
    select: tuple[int, int] | None = None  # (i, n), 1-based: compute only shards k % n == i - 1
    merge_only: bool = False  # compute nothing: reduce every stage from its shard files
    runs: list[Path] = field(default_factory=list)  # run folders kept for cleanup_runs

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"--remote-concurrency must be 1 or more, got {self.concurrency}")
        if self.select is not None:
            i, n = self.select
            if n < 1 or not 1 <= i <= n:
                raise ValueError(f"--shard {i}/{n}: give i/n with 1 <= i <= n (e.g. --shard 2/4)")
            if self.merge_only:
                raise ValueError("--shard computes some shards and --merge-only none: give one of them")


_OPTIONS: contextvars.ContextVar[ShardOptions | None] = contextvars.ContextVar("hones_shard_options", default=None)


@contextlib.contextmanager
def shard_options(options: ShardOptions) -> Iterator[ShardOptions]:
    """Run the sharded stages inside with ``options``."""
    token = _OPTIONS.set(options)
    try:
        yield options
    finally:
        _OPTIONS.reset(token)


def current_options() -> ShardOptions:
    return _OPTIONS.get() or ShardOptions()


def parse_shard(text: str | None, environ: dict | None = None) -> tuple[int, int] | None:
    """``--shard`` as (i, n): "i/n" (1-based), or "auto": RANK / WORLD_SIZE (torchrun,
    accelerate launch), else LOCAL_RANK / LOCAL_WORLD_SIZE, as (RANK + 1, WORLD_SIZE)."""
    import os

    if text is None:
        return None
    env = os.environ if environ is None else environ
    if text == "auto":
        for rank, world in (("RANK", "WORLD_SIZE"), ("LOCAL_RANK", "LOCAL_WORLD_SIZE")):
            if env.get(rank) is not None and env.get(world) is not None:
                try:
                    return int(env[rank]) + 1, int(env[world])
                except ValueError:
                    raise ValueError(
                        f"--shard auto: {rank}={env[rank]!r} / {world}={env[world]!r} are not integers"
                    ) from None
        raise ValueError(
            "--shard auto reads RANK and WORLD_SIZE (set by torchrun / accelerate launch) or LOCAL_RANK and "
            "LOCAL_WORLD_SIZE; neither pair is set: give --shard i/n"
        )
    i, sep, n = text.partition("/")
    try:
        if not sep:
            raise ValueError
        pair = int(i), int(n)
    except ValueError:
        raise ValueError(f"--shard {text!r}: give i/n (1-based, e.g. --shard 2/4) or auto") from None
    if pair[1] < 1 or not 1 <= pair[0] <= pair[1]:
        raise ValueError(f"--shard {text}: give i/n with 1 <= i <= n (e.g. --shard 2/4)")
    return pair


class ShardsMissing(ValueError):
    """A merge found a stage's shard files incomplete (``done`` empty: the stage never ran,
    e.g. a stage that needed the merged table of an earlier one)."""

    def __init__(self, done: list[int], missing: list[int], message: str):
        self.done, self.missing = done, missing
        super().__init__(message)


class ShardsPending(Exception):
    """``--shard i/n`` finished its shards of a stage whose other shards are elsewhere."""

    def __init__(self, desc: str, folder: Path, done: list[int], missing: list[int], n_shards: int):
        self.desc, self.folder, self.done, self.missing, self.n_shards = desc, folder, done, missing, n_shards
        super().__init__(
            f"{desc}: {len(done)} of {n_shards} shard(s) present in {folder}, {len(missing)} missing "
            f"({_ranges(missing)})"
        )


def _ranges(ks: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out: list[str] = []
    for k in ks:
        if out and out[-1].split("-")[-1] == str(k - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{k}"
        else:
            out.append(str(k))
    return ", ".join(out)


class _LockedJournal(JobJournal):
    """The job journal shared by shards computed in several threads."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._lock = threading.RLock()

    def get(self, label: str) -> str | None:
        with self._lock:
            return super().get(label)

    def put(self, label: str, job_id: str) -> None:
        with self._lock:
            super().put(label, job_id)

    def drop(self, label: str) -> None:
        with self._lock:
            super().drop(label)

    def drop_prefix(self, prefix: str) -> None:
        with self._lock:
            super().drop_prefix(prefix)


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
            self.journal = _LockedJournal(self.dir / "jobs.json")

    @property
    def shards(self) -> list[range]:
        return [range(s, min(s + self.shard_size, self.n_items)) for s in range(0, self.n_items, self.shard_size)]

    def _path(self, k: int) -> Path:
        if self.dir is None:
            raise RuntimeError("a run without a checkpoint folder has no shard files")
        return self.dir / f"shard-{k:05d}.safetensors"

    def present(self) -> list[int]:
        """The shards whose result file exists."""
        if self.dir is None:
            return []
        return [k for k in range(len(self.shards)) if self._path(k).exists()]

    def _load(self, k: int) -> dict[str, np.ndarray]:
        return {n: t.numpy() for n, t in load_file(self._path(k)).items()}

    def _compute(self, k: int, compute: Callable[[range], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Shard k, its file written (and its journal entries dropped) once it is done."""
        with request_scope(f"shard-{k:05d}", self.journal):
            result = compute(self.shards[k])
        tensors = {n: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for n, v in result.items()}
        if self.dir is not None and self.journal is not None:
            atomic_write_with(self._path(k), partial(_save_shard, tensors))
            self.journal.drop_prefix(f"shard-{k:05d}/")
        return {n: t.numpy() for n, t in tensors.items()}

    def run(
        self,
        compute: Callable[[range], dict[str, np.ndarray]],
        desc: str = "shards",
        progress: bool = True,
        options: ShardOptions | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Every shard's part, in shard order (see the module doc for ``options``)."""
        options = options or current_options()
        n_shards = len(self.shards)
        present = set(self.present())
        if options.select is not None or options.merge_only:
            if self.dir is None:
                raise ValueError("--shard and --merge-only keep shards in files: they need an output folder")
            options.runs.append(self.dir)
        if options.merge_only and len(present) < n_shards:
            missing = [k for k in range(n_shards) if k not in present]
            raise ShardsMissing(
                sorted(present),
                missing,
                f"cannot merge {desc}: {len(missing)} of {n_shards} shard(s) missing in {self.dir} "
                f"(shard {_ranges(missing)}). Run the command with --shard i/n for every i (shard k belongs to "
                f"i = k % n + 1), copy every process's {self.dir.name if self.dir else ''} folder into this one, "
                "then merge again; nothing was computed",
            )
        todo = [k for k in range(n_shards) if k not in present]
        if options.select is not None and todo:
            i, n = options.select
            todo = [k for k in todo if k % n == i - 1]
        parts: dict[int, dict[str, np.ndarray]] = {}
        bar = tqdm(total=n_shards, initial=len(present), desc=desc, disable=not progress, leave=False)
        workers = min(options.concurrency, len(todo))
        if workers <= 1:
            for k in todo:
                parts[k] = self._compute(k, compute)
                bar.update(1)
        else:
            # each shard in a copy of this context (its request scope must not leak between threads);
            # results and the progress bar handled here, in the calling thread
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hones-shard") as pool:
                pending: dict[Future, int] = {}
                queue = list(todo)
                try:
                    while queue or pending:
                        while queue and len(pending) < workers:
                            k = queue.pop(0)
                            ctx = contextvars.copy_context()
                            pending[pool.submit(ctx.run, self._compute, k, compute)] = k
                        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            k = pending.pop(future)
                            parts[k] = future.result()  # a failed shard raises here (finished ones are kept)
                            bar.update(1)
                finally:
                    for future in pending:
                        future.cancel()
        bar.close()
        if options.select is not None and (parts or len(present) < n_shards):
            # this process computed shards of this stage (or others are missing): it ends here, with no
            # table; a stage complete before it started (files copied in) is reduced and the next one run
            have = present | set(parts)
            missing = [k for k in range(n_shards) if k not in have]
            assert self.dir is not None
            raise ShardsPending(desc, self.dir, sorted(have), missing, n_shards)
        return [parts[k] if k in parts else self._load(k) for k in range(n_shards)]

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
    options = current_options()
    run = ShardedRun(checkpoint_dir, config, n_items, shard_size)
    parts = run.run(lambda shard: compute(list(shard)), desc=desc, progress=progress, options=options)
    value = reduce(parts)
    if options.select is None and not options.merge_only:  # else kept until the table is written
        run.cleanup()
    return value


def cleanup_runs(options: ShardOptions) -> None:
    """Remove the run folders a --shard / --merge-only command kept (after its table is written)."""
    for folder in options.runs:
        if folder.exists():
            shutil.rmtree(folder)
    options.runs.clear()


def mean_of(parts: list[dict[str, np.ndarray]], total: str = "sum", count: str = "count") -> np.ndarray:
    """sum of the parts' ``total`` arrays / sum of their ``count`` scalars."""
    return sum(p[total] for p in parts) / sum(p[count][0] for p in parts)
