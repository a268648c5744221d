"""Issue 17's models train on synthetic-v2 through the same resumable script (a smoke run:
CI never trains them): a run stopped and resumed ends with the weights of a straight run."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hones_nn.embedded.architectures import BUILDERS
from hones_nn.embedded.train import TrainConfig, recipe_phases, train


def _config(out, architecture, **kw):
    small = {"steps": 2, "batch_size": 4, "warmup": 1, "checkpoint_every": 2, "n_train_scenes": 12, "threads": 1}
    return TrainConfig(out=str(out), architecture=architecture, **{**small, **kw})


@pytest.mark.parametrize("architecture", ["llava-16k", "qwen2.5-vl-reader"])
def test_stopped_and_resumed_equals_straight(tmp_path, architecture):
    train(_config(tmp_path / "a", architecture))
    train(_config(tmp_path / "b", architecture, stop_at=1))
    resumed = train(_config(tmp_path / "b", architecture))
    a = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    untrained = BUILDERS[architecture](seed=0)[0].state_dict()
    assert any(not torch.equal(untrained[k], a[k]) for k in a)  # the steps did train
    info = json.loads((resumed / "training_info.json").read_text())
    assert info["config"]["generator"] == "synthetic-v2" and info["config"]["architecture"] == architecture


def test_the_recipes_of_the_new_models_chain_their_phases(tmp_path):
    for architecture in ("llava-16k", "qwen2.5-vl-reader"):
        phases = recipe_phases(str(tmp_path), threads=1, architecture=architecture)
        assert [p.generator for p in phases] == ["synthetic-v2"] * len(phases)
        assert phases[0].init_from == ""
        assert {p.precision for p in phases} == {"bfloat16" if architecture == "llava-16k" else "float32"}
        for before, after in itertools.pairwise(phases):
            assert after.init_from == str(Path(before.out) / "checkpoint" / "model.safetensors")


def test_the_cli_refuses_a_benchmark_the_architecture_was_not_built_for(tmp_path):
    from click.testing import CliRunner

    from hones_nn.cli.main import cli

    out = tmp_path / "run"
    args = ["train-embedded", "--architecture", "llava-16k", "--generator", "synthetic-v1", "--out-dir", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--generator synthetic-v1" in result.output and "synthetic-v2" in result.output
    assert not out.exists()


def test_batches_built_by_workers_train_the_same_weights(tmp_path):
    """--workers only moves the drawing of batches to other processes: a run that built its
    batches in 2 workers, stopped and resumed in the training process, ends with the weights
    of a straight run without workers."""
    train(_config(tmp_path / "a", "llava", steps=3))
    train(_config(tmp_path / "b", "llava", steps=3, stop_at=2, workers=2))
    resumed = train(_config(tmp_path / "b", "llava", steps=3))
    a = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    info = json.loads((resumed / "training_info.json").read_text())
    assert info["where"]["device"] == "cpu" and info["train_seconds"] > 0


def test_run_options_reach_every_phase_and_bad_ones_are_refused(tmp_path):
    phases = recipe_phases(str(tmp_path), threads=1, architecture="qwen2.5-vl", workers=3)
    assert [p.workers for p in phases] == [3] * len(phases)
    with pytest.raises(ValueError, match="--workers -1"):
        _config(tmp_path, "llava", workers=-1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: this machine has no CUDA device"):
            _config(tmp_path, "llava", device="cuda")


def test_bf16_autocast_trains_resumes_identically_and_is_not_a_run_option(tmp_path):
    """--precision bfloat16 runs the forward's matrix products in bf16 (weights and optimizer
    state stay float32): the weights differ from a float32 run's, a stopped bf16 run resumes to
    a straight one's weights, and resuming it as float32 is refused (the numbers would change)."""
    train(_config(tmp_path / "fp32", "llava-16k"))
    train(_config(tmp_path / "a", "llava-16k", precision="bfloat16"))
    train(_config(tmp_path / "b", "llava-16k", precision="bfloat16", stop_at=1))
    resumed = train(_config(tmp_path / "b", "llava-16k", precision="bfloat16"))
    fp32, a, b = (load_file(tmp_path / d / "checkpoint" / "model.safetensors") for d in ("fp32", "a", "b"))
    for key in a:
        assert a[key].dtype == torch.float32
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(fp32[k], a[k]) for k in a)
    assert json.loads((resumed / "training_info.json").read_text())["config"]["precision"] == "bfloat16"
    with pytest.raises(SystemExit, match="another configuration"):
        train(_config(tmp_path / "b", "llava-16k"))  # the same run, as float32
    with pytest.raises(ValueError, match="--precision 'fp8'"):
        _config(tmp_path, "llava", precision="fp8")


def test_the_llava_16k_recipe_is_the_one_the_shipped_model_ran(tmp_path):
    """`train-embedded --recipe --architecture llava-16k` runs the phases recorded in the
    shipped tiny-llava-16k's training_info.json: same steps, schedule, mix, seed, precision."""
    from hones_nn.models.loading import EMBEDDED_MODELS

    info = json.loads((EMBEDDED_MODELS["tiny-llava-16k"] / "training_info.json").read_text())
    phases = recipe_phases(str(tmp_path), threads=2, architecture="llava-16k")
    assert len(phases) == len(info["recipe"]) == 5
    for phase, ran in zip(phases, info["recipe"], strict=True):
        for key in ("steps", "stop_at", "lr", "warmup", "task_weights", "seed", "precision", "batch_size", "generator"):
            assert getattr(phase, key) == ran["config"][key], (ran["phase"], key)
        assert bool(phase.init_from) == bool(ran["config"]["init_from"])
    assert info["config"]["architecture"] == "llava-16k" and info["recipe"][-1]["generator_revision"] == 2
