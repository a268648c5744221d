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


def test_a_run_from_the_shipped_model_with_the_neuron_penalty(tmp_path):
    """--init-from a model folder (the shipped tiny-llava-16k, saved in an older key layout)
    starts from its weights: two steps at lr 1e-6 end within 1e-4 of them. --neuron-l1 is part
    of the run's configuration (a resumption with another weight is refused), and the CLI
    refuses a missing --init-from in one line."""
    from click.testing import CliRunner
    from transformers import LlavaForConditionalGeneration

    from hones_nn.cli.main import cli
    from hones_nn.models.loading import resolve_model_path

    shipped, _ = resolve_model_path("tiny-llava-16k")
    run = {"steps": 2, "batch_size": 8, "lr": 1e-6, "init_from": str(shipped)}
    train(_config(tmp_path / "ft", "llava-16k", neuron_l1=1.0, **run))
    after = load_file(tmp_path / "ft" / "checkpoint" / "model.safetensors")
    before = LlavaForConditionalGeneration.from_pretrained(shipped).state_dict()
    assert after.keys() == before.keys()
    assert max(float((after[k] - before[k]).abs().max()) for k in after) < 1e-4
    progress = json.loads((tmp_path / "ft" / "checkpoint" / "progress.json").read_text())
    assert progress["config"]["neuron_l1"] == 1.0
    with pytest.raises(SystemExit, match="another configuration"):
        train(_config(tmp_path / "ft", "llava-16k", neuron_l1=0.5, **{**run, "steps": 3}))

    missing = str(tmp_path / "nope")
    args = ["train-embedded", "--architecture", "llava-16k", "--init-from", missing, "--out-dir", str(tmp_path / "x")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Traceback" not in result.output and f"--init-from {missing}" in result.output


def test_the_sparse_model_is_the_16k_one_with_a_lighter_neuron_write(tmp_path):
    """tiny-llava-16k-sparse: its training_info.json names a valid run from the shipped
    tiny-llava-16k with --neuron-l1 1.0, it loads with synthetic-v2 as its benchmark, and on the
    same training batch its mean neuron write is under half the 16k model's (training took
    it from 0.10 to 0.035) while its cross-entropy stays within 0.05."""
    from hones_nn.data.generators import generator_module
    from hones_nn.embedded.train import _NeuronWrites, make_batch
    from hones_nn.models.loading import EMBEDDED_MODELS, load_model

    info = json.loads((EMBEDDED_MODELS["tiny-llava-16k-sparse"] / "training_info.json").read_text())
    config = TrainConfig(**{**info["config"], "out": str(tmp_path), "n_train_scenes": 64})
    assert config.neuron_l1 == 1.0 and Path(config.init_from).name == "tiny-llava-16k"
    scenes = generator_module(config.generator).World(0).scenes({"train": 64})["train"]
    measured = {}
    for name in ("tiny-llava-16k", "tiny-llava-16k-sparse"):
        loaded = load_model(name)
        assert loaded.benchmark == "synthetic-v2"
        batch = make_batch(loaded.processor, scenes, 0, config, loaded.adapter)
        writes = _NeuronWrites(loaded.model, loaded.adapter)
        with torch.no_grad():
            measured[name] = (float(loaded.model(**batch).loss), float(writes.penalty(batch["attention_mask"])))
        writes.remove()
    (dense_loss, dense_write), (sparse_loss, sparse_write) = measured.values()
    assert sparse_write < 0.5 * dense_write, measured
    assert abs(sparse_loss - dense_loss) < 0.05, measured
