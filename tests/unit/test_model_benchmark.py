"""A model trained by ``train-embedded`` knows the synthetic benchmark it learned: ``--data``
defaults to it, and another synthetic benchmark draws a warning naming both."""

from __future__ import annotations

import json

import pytest

from hones_nn.data import resolve_benchmark
from hones_nn.data.synthetic import build_synthetic_benchmark
from hones_nn.models.loading import EMBEDDED_MODELS, trained_benchmark
from hones_nn.tasks.task_data import prepare_task


def _folder(tmp_path, name, info):
    folder = tmp_path / name
    folder.mkdir()
    if info is not None:
        (folder / "training_info.json").write_text(info if isinstance(info, str) else json.dumps(info))
    return folder


def test_the_training_info_names_the_benchmark(tmp_path):
    v2_run = _folder(tmp_path, "v2", {"config": {"generator": "synthetic-v2", "steps": 10}})
    old_recipe = _folder(tmp_path, "old", {"phases": [{"config": {"steps": 6000}}]})  # before the field existed
    not_trained_here = _folder(tmp_path, "hub", None)
    assert trained_benchmark(v2_run) == "synthetic-v2"
    assert trained_benchmark(old_recipe) == "synthetic-v1"
    assert trained_benchmark(not_trained_here) is None
    assert trained_benchmark(_folder(tmp_path, "other", {"note": "not ours"})) is None
    with pytest.raises(ValueError, match="training_info.json"):
        trained_benchmark(_folder(tmp_path, "bad", "{not json"))
    # the shipped models: both from their recipes' phases, written before the field existed
    assert trained_benchmark(EMBEDDED_MODELS["tiny-llava"]) == "synthetic-v1"
    assert trained_benchmark(EMBEDDED_MODELS["tiny-qwen2.5-vl"]) == "synthetic-v1"


def test_no_data_means_the_models_own_benchmark(tmp_path, monkeypatch):
    monkeypatch.setenv("HONES_NN_HOME", str(tmp_path))
    built = []
    monkeypatch.setattr(
        "hones_nn.data.synthetic.build_synthetic_benchmark",
        lambda path, **kw: built.append((path.name, kw["generator"])),
    )
    resolve_benchmark(None, default="synthetic-v2")
    resolve_benchmark(None)
    resolve_benchmark("synthetic-v1", default="synthetic-v2")  # an explicit --data wins
    assert built == [
        ("synthetic-v2-r2-seed0-n1200", "synthetic-v2"),
        ("synthetic-v1-seed0-n1200", "synthetic-v1"),
        ("synthetic-v1-seed0-n1200", "synthetic-v1"),
    ]


def test_another_synthetic_benchmark_warns(tmp_path, embedded):
    v2 = build_synthetic_benchmark(
        tmp_path / "v2", seed=3, n_images=120, n_train=0, progress=False, generator="synthetic-v2"
    )
    assert embedded.benchmark == "synthetic-v1"
    with pytest.warns(
        UserWarning, match=r"tiny-llava was trained on synthetic-v1.*is synthetic-v2.*--data synthetic-v1"
    ):
        td = prepare_task(embedded, "ocr", data=v2, split="test", limit=2)
    assert td.n == 2  # a warning, not a refusal: a shift can be the experiment
