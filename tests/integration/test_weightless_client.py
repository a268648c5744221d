"""The weightless remote client (issue 13): `--remote` and `--dry-run` load a model's config
and processor and a meta-device model, never its weights; every weight read happens inside
the traces; a dry run contacts no server; the in-process rehearsal hides an installed
hones_nn, so code that is not shipped by value fails here as it would on a server."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.embedded.tiny_random import LLAVA_15_7B_TEXT, weightless_copy
from hones_nn.engine.core import Engine
from hones_nn.engine.remote import RemoteSettings
from hones_nn.models.loading import load_model
from hones_nn.runner.pipeline import Runner


@pytest.fixture
def no_weight_files(monkeypatch):
    """Any attempt of this process to open a weight file fails the test."""
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if str(file).endswith((".safetensors", ".bin", ".pt", ".pth")):
            raise AssertionError(f"the weightless client opened {file}")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("the weightless client read a safetensors file")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)


def test_weightless_load_reads_no_weights_and_knows_the_shapes(embedded, no_weight_files):
    loaded = load_model("tiny-llava", weights=False)  # the shipped folder HAS weights: none is opened
    assert not loaded.has_weights and loaded.weights_hash is None
    assert {p.device.type for p in loaded.model.parameters()} == {"meta"}
    assert loaded.sizes == embedded.sizes
    engine = Engine(loaded, remote=RemoteSettings(mode="plan", host="http://127.0.0.1:9"))
    assert engine.device.type == "cpu"  # inputs stay here; the server moves them to its device


def test_weightless_folder_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json.*not its weights"):
        load_model(str(tmp_path / "empty"), weights=False)


def test_rehearsal_needs_weights():
    with pytest.raises(ValueError, match="rehearsal .* needs the model's weights"):
        Engine(load_model("tiny-llava", weights=False), remote=RemoteSettings(mode="local"))


def test_dry_run_hones_on_a_folder_without_weights(tmp_path, benchmark_dir):
    folder = weightless_copy(tmp_path / "no-weights")
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        ["rank", "--task", "vqa", "--method", "hones", "--remote", "--dry-run", "--model", str(folder),
         "--limit", "2", "--out-dir", str(out_dir), "--ndif-host", "http://127.0.0.1:9"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dry run:" in result.output and "nothing was sent" in result.output
    assert "contacted no server and read no weights" in result.output
    assert not list(out_dir.glob("*.parquet"))  # a dry run's values are stand-ins: no table is kept


def test_dry_run_refuses_a_method_that_cannot_run_remotely(tmp_path, benchmark_dir):
    folder = weightless_copy(tmp_path / "no-weights")
    result = CliRunner().invoke(
        cli, ["rank", "--task", "vqa", "--method", "grad", "--remote", "--dry-run", "--model", str(folder)]
    )
    assert result.exit_code == 2
    assert "'grad' cannot run remotely" in result.output and "gradients" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["steer", "--task", "vqa"], ["edit"], ["fuzzy", "analyze"]])
def test_commands_that_need_weights_refuse_remote_with_the_reason(command):
    result = CliRunner().invoke(cli, [*command, "--remote"])
    assert result.exit_code == 2, result.output
    assert "cannot run on an NDIF server" in result.output


def test_hones_request_at_7b_shape_is_small_and_holds_no_weights(tmp_path, benchmark_dir, no_weight_files):
    """One HONES request of a LLaVA-1.5-7B-shaped language model (no weights exist): u_y and
    W_down^T u_y are computed inside the trace, so the request carries token ids, not
    [L, rows, d_ff] projections (about 42 MB per request at this shape before)."""
    from hones_nn.methods.hones import contributions, target_tokens

    folder = weightless_copy(tmp_path / "llava-7b-shaped", LLAVA_15_7B_TEXT)
    loaded = load_model(str(folder), weights=False)
    settings = RemoteSettings(mode="plan", host="http://127.0.0.1:9")
    runner = Runner(loaded=loaded, out_dir=tmp_path / "out", progress=False, limit=2, batch_size=4, remote=settings)
    ctx = runner.context("vqa", {})
    c = contributions(ctx, [0, 1], [None, (31, 0)], targets=target_tokens(ctx, ctx.td.items, None))
    assert c.shape == (2, 2, 32, 11008)
    stats = runner.engine.remote.stats
    assert stats.requests == 1
    assert 0 < stats.bytes_up_max < 2e6, stats.bytes_up_max
    assert stats.bytes_down >= 4 * 32 * 11008 * 4  # the [rows, L, d_ff] float32 contributions come back


def test_rehearsal_hides_an_installed_hones_nn(embedded, monkeypatch):
    """Project code that is not shipped by value must fail the rehearsal, as on a server
    without hones_nn: unregister the package and a trace using one of its functions fails."""
    import cloudpickle

    import hones_nn
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.engine.remote import RemoteRunError  # noqa: F401  (loaded before hiding)
    from hones_nn.tasks.task_data import prepare_task

    engine = Engine(embedded, remote=RemoteSettings(mode="local"))  # registers hones_nn by value
    td = prepare_task(embedded, "vqa", split="test", limit=1)
    inputs = encode_prompts(embedded, td.images, [td.items[0].prompts[0]]).inputs
    from hones_nn.interventions.base import site_value

    cloudpickle.unregister_pickle_by_value(hones_nn)
    try:
        with pytest.raises(Exception, match="hones_nn"), engine.envoy.trace(**inputs):
            value = site_value(engine.envoy, engine.adapter, 0, "down_proj_input").sum().save()
    finally:
        cloudpickle.register_pickle_by_value(hones_nn)
    with engine.envoy.trace(**inputs):  # registered again: the same block runs
        value = site_value(engine.envoy, engine.adapter, 0, "down_proj_input").sum().save()
    assert torch.isfinite(value)


@pytest.mark.parametrize("method", ["dla", "llm-knowledge", "pan-act"])
def test_projection_methods_read_weights_inside_the_trace(embedded, embedded_engine, tmp_path, method):
    """DLA, LLM-Knowledge and Pan et al. project onto the vocabulary inside their read
    trace: the rehearsal (serialized, hones_nn hidden, run on the weights) equals the local
    run, and a dry run on the weightless model runs and sizes them."""
    kwargs = dict(batch_size=8, progress=False, split="discovery", limit=3)
    local = Runner(loaded=embedded, out_dir=tmp_path / "local", _engine=embedded_engine, **kwargs)
    rehearsal = Engine(embedded, remote=RemoteSettings(mode="local"))
    remote = Runner(loaded=embedded, out_dir=tmp_path / "remote", _engine=rehearsal, **kwargs)
    a = local.rank("vqa", method)
    b = remote.rank("vqa", method)
    assert rehearsal.remote.stats.requests == 1  # one trace for the 3 items, scores computed inside it
    assert float(abs(a.matrix() - b.matrix()).max()) <= 1e-9 * max(1.0, float(abs(a.matrix()).max()))
    settings = RemoteSettings(mode="plan", host="http://127.0.0.1:9")
    dry = Runner(loaded=load_model("tiny-llava", weights=False), out_dir=tmp_path / "dry", remote=settings, **kwargs)
    c = dry.rank("vqa", method)
    assert c.matrix().shape == a.matrix().shape
    stats = dry.engine.remote.stats
    assert stats.requests == 1 and stats.bytes_down >= 3 * 4 * 1024 * 8  # [B, L, d_ff] float64 scores


@pytest.mark.parametrize("norm", ["final", "frozen"])
def test_logit_lens_projects_inside_the_trace(embedded, embedded_engine, benchmark_dir, norm):
    """The lens projects through the final norm and W_U inside its traces: the rehearsal
    (serialized, hones_nn hidden) equals the local run, and a weightless dry run runs it."""
    from hones_nn.evaluation.logit_lens import logit_lens
    from hones_nn.tasks.task_data import prepare_task

    td = prepare_task(embedded, "vqa", split="test", limit=3)
    groups = {"g": [(1, 5), (2, 7), (3, 100)]}
    local = logit_lens(embedded_engine, td, groups, norm=norm, progress=False)
    rehearsal = Engine(embedded, remote=RemoteSettings(mode="local"))
    remote = logit_lens(rehearsal, td, groups, norm=norm, progress=False)
    assert rehearsal.remote.stats.requests == 2  # the clean run and the masked one, logits computed inside
    assert np.array_equal(local.base, remote.base) and np.array_equal(local.target_base, remote.target_base)
    assert np.array_equal(local.groups["g"].masked, remote.groups["g"].masked)
    weightless = load_model("tiny-llava", weights=False)
    dry = Engine(weightless, remote=RemoteSettings(mode="plan", host="http://127.0.0.1:9"))
    report = logit_lens(dry, prepare_task(weightless, "vqa", split="test", limit=3), groups, norm=norm, progress=False)
    assert report.base.shape == local.base.shape
