"""Benchmarks: the synthetic generator, real-data importers, and the shared layout."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BENCHMARK = "synthetic"


def cache_dir() -> Path:
    """Where hones-nn keeps what it builds on demand ($HONES_NN_HOME, else ~/.cache/hones_nn)."""
    return Path(os.environ.get("HONES_NN_HOME", Path.home() / ".cache" / "hones_nn"))


def resolve_benchmark(data: str | os.PathLike | None, default: str | None = None) -> Path:
    """A benchmark folder for ``--data``: a path, the default synthetic benchmark
    (``synthetic``: seed 0, 1,200 images of ``synthetic-v1``) or a named generator's
    (``synthetic-v1``, ``synthetic-v2``: seed 0, 1,200 images), generated deterministically
    on first use and cached.

    ``default``: what ``data=None`` means (a model's own benchmark, ``LoadedModel.benchmark``:
    a llava-16k trained by ``train-embedded`` learned synthetic-v2); None: the default synthetic benchmark."""
    if data in (None, "") and default:
        data = default
    from hones_nn.data.dataset import MANIFEST
    from hones_nn.data.generators import DEFAULT_GENERATOR, GENERATORS, generator_module
    from hones_nn.data.synthetic import DEFAULT_N_IMAGES, build_synthetic_benchmark

    generator = DEFAULT_GENERATOR if data in (None, "", DEFAULT_BENCHMARK) else str(data)
    if generator not in GENERATORS:
        assert data is not None
        path = Path(data)
        if not (path / MANIFEST).exists():
            raise FileNotFoundError(
                f"--data {data}: no hones-nn benchmark there (missing {MANIFEST}); build one with "
                "`hones-nn data build-synthetic --out-dir DIR` or import one with `hones-nn data import-hones`"
            )
        return path
    revision = generator_module(generator).GENERATOR_REVISION
    suffix = f"-r{revision}" if revision > 1 else ""  # revision 1 keeps the folder it always had
    path = cache_dir() / "benchmarks" / f"{generator}{suffix}-seed0-n{DEFAULT_N_IMAGES}"
    if not (path / MANIFEST).exists():
        build_synthetic_benchmark(path, seed=0, n_images=DEFAULT_N_IMAGES, n_train=0, generator=generator)
    return path
