"""Shared fixtures: one thread, a session-wide hones-nn home, the default benchmark."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def hones_home(tmp_path_factory):
    """Caches (the default synthetic benchmark) go to one folder per test session,
    unless HONES_NN_HOME is already set (CI sets it so the benchmark is built once)."""
    if "HONES_NN_HOME" not in os.environ:
        os.environ["HONES_NN_HOME"] = str(tmp_path_factory.mktemp("hones_nn_home"))
    return os.environ["HONES_NN_HOME"]


@pytest.fixture(scope="session")
def benchmark_dir(hones_home):
    """The default synthetic benchmark (seed 0, 1,200 images), built once."""
    from hones_nn.data import resolve_benchmark

    return resolve_benchmark(None)


@pytest.fixture(scope="session")
def embedded():
    """The shipped tiny-llava."""
    from hones_nn.models.loading import load_model

    return load_model("tiny-llava")


@pytest.fixture(scope="session")
def embedded_engine(embedded):
    """One nnsight Engine over the session's tiny-llava (pass it to a Runner as ``_engine``)."""
    from hones_nn.evaluation.engine import Engine

    return Engine(embedded)
