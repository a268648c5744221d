"""Passes and peak-memory estimates from a config (`hones-nn methods --model M`), checked
against the torch profiler's measured activation peak on the tiny configs."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.embedded.tiny_random import save_tiny
from hones_nn.engine.encoding import encode_prompts
from hones_nn.engine.sweep import Row, make_intervention, teacher_forced_scores
from hones_nn.methods.atp_screen import atp_scores
from hones_nn.runner.estimates import (
    ESTIMATE_FACTOR,
    KNOWN_CONFIGS,
    activation_bytes,
    measure_peak_bytes,
    model_shape,
)
from hones_nn.runner.pipeline import Runner

CONFIGS = [
    "tiny-llava",
    "tiny-random-llava",
    "tiny-random-llava-next",
    "tiny-random-qwen2-vl",
    "tiny-random-qwen2.5-vl",
]


def test_measure_peak_bytes_by_hand():
    lin = torch.nn.Linear(100, 1000)
    x = torch.randn(64, 100)

    def f():
        with torch.no_grad():
            y = lin(x)
            z = torch.relu(y)  # y and z alive together: 2 x 64 x 1000 floats
            del y
            return float(z.sum())

    peak, _ = measure_peak_bytes(f)
    assert 2 * 64 * 1000 * 4 <= peak <= 2 * 64 * 1000 * 4 + 4096


@pytest.mark.parametrize("name", CONFIGS)
def test_estimate_within_factor_of_measured_peak(name, embedded, tiny_model, benchmark_dir, tmp_path):
    loaded = embedded if name == "tiny-llava" else tiny_model(name[len("tiny-random-") :])
    shape = model_shape(name)
    sizes = loaded.sizes
    assert (shape.num_layers, shape.num_heads, shape.d_ff, shape.vocab_size) == (
        sizes.num_layers,
        sizes.num_heads,
        sizes.d_ff,
        sizes.vocab_size,
    )
    assert shape.params == sum(p.numel() for p in loaded.model.parameters())
    B = 3
    ctx = Runner(loaded=loaded, out_dir=tmp_path, progress=False, limit=B, batch_size=B).context("vqa", {})
    prompts = [item.prompts[0] for item in ctx.td.items]
    enc = encode_prompts(loaded, ctx.td.images, prompts)
    enc_a = encode_prompts(loaded, ctx.td.images, prompts, with_answers=True)
    S, Sa = enc.inputs["input_ids"].shape[1], enc_a.inputs["input_ids"].shape[1]
    # Qwen's image patches depend on the image size: give the estimate the real ones
    patches = enc.inputs["pixel_values"].shape[0] // B if "image_grid_thw" in enc.inputs else None
    interv = make_intervention([None, (0, 1)], [Row(i, 0, 1) for i in range(B)], sizes.num_heads, "mean")

    def forward():
        with torch.no_grad():
            return loaded.model(**enc.inputs).logits[:, -1].clone()

    runs = {
        "forward": (forward, S),
        "forward-logprob": (lambda: teacher_forced_scores(ctx.engine, enc_a, interv, "logprob"), Sa),
        "backward": (lambda: atp_scores(ctx, list(range(B))), Sa),
        "generation": (lambda: ctx.engine.generate(enc.inputs, interv), S),
    }
    for kind, (fn, seq) in runs.items():
        measured, _ = measure_peak_bytes(fn)
        estimate = B * activation_bytes(shape, kind, seq, 4, vision_patches=patches)
        assert measured <= estimate <= ESTIMATE_FACTOR * measured, (kind, measured, estimate)


def test_config_sources_agree(tmp_path):
    folder = save_tiny("qwen2-vl", tmp_path / "m")
    by_folder = model_shape(str(folder))
    by_file = model_shape(str(folder / "config.json"))
    builtin = model_shape("tiny-random-qwen2-vl")
    for shape in (by_folder, by_file):
        assert shape.params == builtin.params and shape.num_kv_heads == builtin.num_kv_heads == 2
    assert "config" in by_file.source and "tiny random" in builtin.source


def test_methods_cli_estimates_for_a_hub_id_without_network():
    result = CliRunner().invoke(
        cli, ["methods", "--model", "llava-hf/llava-1.5-7b-hf", "--dtype", "bfloat16", "--batch-size", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert "built-in" in payload["source"]
    rows = {r["method"]: r for r in payload["methods"]}
    params = KNOWN_CONFIGS["llava-hf/llava-1.5-7b-hf"]["params"]
    assert rows["vseam"]["rows per example"] == 32 * 32 + 1 and rows["vseam"]["pass kind"] == "generation"
    assert rows["hones"]["rows per example"] == 31  # 1 + K_h, K_h = 30
    assert rows["atp-screen"]["rows per example"] == 2 + 4 * 30
    for r in rows.values():
        if r["pass kind"] != "none":
            assert r["weights bytes"] == 2 * params
            assert r["peak bytes"] == r["weights bytes"] + 4 * r["activations per row"]
    assert rows["grad"]["activations per row"] > rows["hones"]["activations per row"]  # backward keeps activations
    text = CliRunner().invoke(cli, ["methods", "--model", "tiny-random-llava-next"])
    assert text.exit_code == 0 and ("GiB" in text.output or "MiB" in text.output)
    bad = CliRunner().invoke(cli, ["methods", "--model", "nobody/nothing"])
    assert bad.exit_code == 2 and "config.json" in bad.output and "llava-hf/llava-1.5-7b-hf" in bad.output


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is not None, reason="accelerate is installed")
def test_device_map_without_accelerate_names_the_fix(benchmark_dir, tmp_path):
    result = CliRunner().invoke(
        cli, ["heads", "--task", "vqa", "--limit", "1", "--device-map", "auto", "--out-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "pip install accelerate" in result.output


def test_bfloat16_runs_the_screen_and_the_exact_sweep(benchmark_dir, tmp_path):
    from hones_nn.models.loading import load_model

    loaded = load_model("tiny-llava", dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    runner = Runner(loaded=loaded, out_dir=tmp_path, progress=False, limit=1)
    table = runner.heads("vqa", utility="logprob", screen="atp", verify_top=2)
    assert len(table.meta["verified_heads"]) == 2
    assert np.isfinite(table.score).all()


def test_hones_batch_peak_close_to_a_plain_forward(embedded, benchmark_dir, tmp_path):
    """apply_edits releases each layer's activation after its last edit: reading z(T) of every
    layer (HONES) must not keep every layer's [B, S, d_ff] alive (that was ~1.8 x a forward)."""
    from hones_nn.engine.sweep import all_heads
    from hones_nn.methods.hones import contributions, target_tokens

    ctx = Runner(loaded=embedded, out_dir=tmp_path, progress=False, limit=2, batch_size=18).context("vqa", {})
    conditions = [None] + all_heads(4, 8)[::4]  # 9 conditions x 2 examples = one batch of 18 rows
    targets = target_tokens(ctx, ctx.td.items, None)
    enc = encode_prompts(
        embedded, ctx.td.images, [ctx.td.task.attribution_prompt(item) for item in ctx.td.items for _ in conditions]
    )

    def forward():
        with torch.no_grad():
            embedded.model(**enc.inputs)

    plain, _ = measure_peak_bytes(forward)
    hones, c = measure_peak_bytes(lambda: contributions(ctx, [0, 1], conditions, targets=targets))
    assert c.shape == (2, 9, 4, 1024)
    assert hones < 1.3 * plain, (hones, plain)
