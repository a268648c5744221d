"""Shared fixtures: one thread, a session-wide hones-nn home, the default benchmark, and the
models (the shipped tiny-llava and its Engine; tiny random models, one per architecture)."""

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
    from hones_nn.engine.core import Engine

    return Engine(embedded)


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(arch)``: the tiny random model of ``arch`` (``build_tiny_random(arch)``, seed 0),
    built once per session and shared. Do not change it: a test that writes its weights or
    fills parameter ``.grad`` builds its own with ``build_tiny_random``."""
    from tests.helpers.models import tiny_model

    return tiny_model
