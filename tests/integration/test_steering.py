"""Steering: scales applied exactly, frozen weights, KL at init, bootstrap, resume, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.engine.encoding import encode_prompts
from hones_nn.interventions.base import apply_edits
from hones_nn.interventions.neurons import NeuronScale
from hones_nn.steering.baselines import (
    BASELINES,
    _pick,
    parse_baselines,
    random_neurons_like,
)
from hones_nn.steering.bootstrap import bleu_metric, item_statistics, paired_bootstrap
from hones_nn.steering.io import load_scales, read_neuron_file, save_scales, select_neurons
from hones_nn.steering.scales import (
    SteeringConfig,
    batch_losses,
    cosine_factor,
    dev_loss,
    epoch_rows,
    make_batch,
    scale_hooks,
    train_scales,
)
from hones_nn.tasks.task_data import prepare_task

NEURONS = [(0, 5), (1, 7), (1, 100), (2, 3), (3, 1000)]
SCALES = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.7])


@pytest.fixture(scope="module")
def vqa_dev(embedded, benchmark_dir):
    return prepare_task(embedded, "vqa", split="dev", limit=6)


def manual_hook(loaded, neurons, scales):
    """An independent reference: z[..., i] *= s_i on down_proj's input, by plain hooks."""
    handles = []
    for k, (layer, i) in enumerate(neurons):

        def hook(_module, args, i=i, s=float(scales[k])):
            z = args[0].clone()
            z[..., i] = z[..., i] * s
            return (z,)

        handles.append(loaded.adapter.down_proj(loaded.model, layer).register_forward_pre_hook(hook))
    return handles


def test_scales_applied_exactly(embedded, embedded_engine, vqa_dev):
    enc = encode_prompts(embedded, vqa_dev.images, [i.prompts[0] for i in vqa_dev.items], with_answers=True)
    engine = embedded_engine
    with torch.no_grad():
        with engine.envoy.trace(**enc.inputs):
            apply_edits(engine.envoy, engine.adapter, NeuronScale(NEURONS, SCALES).edits(enc.batch_size))
            traced = engine.adapter.lm_head(engine.envoy).output.save()
        handles = manual_hook(embedded, NEURONS, SCALES)
        try:
            manual = embedded.model(**enc.inputs).logits
        finally:
            for h in handles:
                h.remove()
        with scale_hooks(embedded, NEURONS, SCALES):
            training_path = embedded.model(**enc.inputs).logits
        clean = embedded.model(**enc.inputs).logits
    assert torch.equal(traced, manual)
    assert torch.equal(training_path, manual)
    assert not torch.allclose(clean, manual)  # the scales do change the model
    # hooks are gone after the block
    with torch.no_grad():
        assert torch.equal(embedded.model(**enc.inputs).logits, clean)


def test_scales_applied_during_generation(embedded, embedded_engine, vqa_dev):
    """Every generation step is steered: the engine's greedy tokens equal HF generate with the hook."""
    engine = embedded_engine
    enc = encode_prompts(embedded, vqa_dev.images, [i.prompts[0] for i in vqa_dev.items[:3]])
    steered = engine.generate(enc.inputs, NeuronScale(NEURONS, SCALES))
    handles = manual_hook(embedded, NEURONS, SCALES)
    try:
        with torch.no_grad():
            out = embedded.model.generate(
                **enc.inputs, max_new_tokens=engine.max_new_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0
            )
    finally:
        for h in handles:
            h.remove()
    eos = engine.tokenizer.eos_token_id
    width = enc.inputs["input_ids"].shape[1]
    for row, ids in zip(out[:, width:].tolist(), steered):
        if eos in row:
            row = row[: row.index(eos)]
        assert row == ids


def test_kl_is_zero_at_init(embedded, vqa_dev):
    config = SteeringConfig()
    rows = epoch_rows(vqa_dev, config, 0)
    batch = make_batch(embedded, vqa_dev, rows, config, torch.device("cpu"))
    delta = torch.zeros(len(NEURONS), requires_grad=True)
    parts = batch_losses(embedded, batch, NEURONS, 1.0 + delta, beta=0.05)
    assert parts["kl"].item() == 0.0
    assert parts["ce"].item() > 0
    # and it is a real function of delta: nonzero once the scales move
    parts = batch_losses(embedded, batch, NEURONS, SCALES, beta=0.05)
    assert parts["kl"].item() > 0


def test_only_the_scales_get_gradients(embedded, vqa_dev):
    params = list(embedded.model.parameters())
    flags_before = [p.requires_grad for p in params]
    params[0].requires_grad_(False)  # a mixed state must come back as it was
    flags = [p.requires_grad for p in params]
    try:
        config = SteeringConfig(epochs=1, batch_size=3, grad_accum=1, lr=0.01)
        result = train_scales(embedded, vqa_dev, NEURONS, config, progress=False)
        assert all(p.grad is None for p in params)
        assert [p.requires_grad for p in params] == flags
        assert result.delta.abs().max() > 0  # the scales did receive gradients and move
        assert result.curve[0]["kl"] == pytest.approx(0.0, abs=1e-12)  # first step starts at delta = 0
        assert len(result.curve) == 2 and result.curve[0]["lr"] == pytest.approx(0.01)
        assert result.curve[1]["lr"] == pytest.approx(0.001)  # cosine down to 0.1 lr
    finally:
        for p, flag in zip(params, flags_before):
            p.requires_grad_(flag)


def test_training_lowers_the_dev_loss(embedded, vqa_dev):
    config = SteeringConfig(epochs=2, batch_size=6, grad_accum=1, lr=0.05, beta=0.0, l2=0.0)
    neurons = [(layer, i) for layer in range(4) for i in range(0, 1024, 64)]
    before = dev_loss(embedded, vqa_dev, neurons, torch.ones(len(neurons)), config)["ce"]
    result = train_scales(embedded, vqa_dev, neurons, config, progress=False)
    after = dev_loss(embedded, vqa_dev, neurons, result.scales, config)["ce"]
    assert after < before
    assert result.delta.abs().max() <= config.clamp


def test_clamp(embedded, vqa_dev):
    config = SteeringConfig(epochs=1, batch_size=6, grad_accum=1, lr=5.0, clamp=0.1)
    result = train_scales(embedded, vqa_dev, NEURONS, config, progress=False)
    assert result.delta.abs().max() <= 0.1 + 1e-7


def test_retrieval_rows_positive_and_negatives(embedded, benchmark_dir):
    td = prepare_task(embedded, "retrieval", split="dev", limit=3)
    config = SteeringConfig(negatives=4)
    rows = epoch_rows(td, config, 0)
    assert len(rows) == 15 and sum(r.yes for r in rows) == 3
    assert [r.prompt.user_text for r in epoch_rows(td, config, 0)] == [r.prompt.user_text for r in rows]
    assert [r.prompt.user_text for r in epoch_rows(td, config, 1)] != [r.prompt.user_text for r in rows]
    batch = make_batch(embedded, td, rows[:5], config, torch.device("cpu"))
    assert batch.keep == 1 and batch.targets.shape == (5, 1)


def test_resume_from_epoch_checkpoint(embedded, vqa_dev, tmp_path):
    config = SteeringConfig(epochs=2, batch_size=3, grad_accum=1, lr=0.01)
    straight = train_scales(embedded, vqa_dev, NEURONS, config, progress=False)
    folder = tmp_path / "ckpt"
    train_scales(embedded, vqa_dev, NEURONS, config, checkpoint_dir=folder, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-1.safetensors", "epoch-2.safetensors"]
    (folder / "epoch-2.safetensors").unlink()  # as if killed during epoch 2
    resumed = train_scales(embedded, vqa_dev, NEURONS, config, checkpoint_dir=folder, progress=False)
    assert resumed.resumed_from_epoch == 1
    assert torch.equal(resumed.delta, straight.delta)
    assert [c["loss"] for c in resumed.curve] == pytest.approx([c["loss"] for c in straight.curve])
    # other settings: the old checkpoints are not used
    other = SteeringConfig(epochs=2, batch_size=3, grad_accum=1, lr=0.02)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = train_scales(embedded, vqa_dev, NEURONS, other, checkpoint_dir=folder, progress=False)
    assert fresh.resumed_from_epoch == 0 and any("other settings" in str(w.message) for w in caught)


def test_cosine_schedule():
    assert cosine_factor(0, 10, 0.1) == pytest.approx(1.0)
    assert cosine_factor(9, 10, 0.1) == pytest.approx(0.1)
    assert cosine_factor(1, 1, 0.1) == 1.0


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_constant_gain_is_significant():
    base = np.random.default_rng(0).uniform(size=50)
    b = paired_bootstrap(base + 0.1, base, n_resamples=1000, seed=3)
    assert b.observed == pytest.approx(0.1)
    assert b.mean == pytest.approx(0.1) and b.sd == pytest.approx(0.0, abs=1e-12)
    assert b.p_one_sided == 0.0 and b.p_two_sided == 0.0


def test_bootstrap_zero_gain():
    u = np.random.default_rng(1).uniform(size=40)
    b = paired_bootstrap(u, u.copy(), n_resamples=500, seed=0)
    assert b.observed == 0.0 and b.mean == 0.0
    assert b.p_one_sided == 1.0 and b.p_two_sided == 1.0


def test_bootstrap_is_paired_seeded_and_sensible():
    rng = np.random.default_rng(2)
    base = rng.uniform(size=200)
    noise = rng.normal(0, 0.05, size=200)
    a = paired_bootstrap(base + noise, base, seed=7)
    assert a == paired_bootstrap(base + noise, base, seed=7)
    assert 0.0 < a.p_one_sided < 1.0
    assert a.p_two_sided == pytest.approx(min(1.0, 2 * min(a.p_one_sided, 1 - a.p_one_sided)), abs=2e-3)
    # pairing: a huge per-item spread shared by both conditions does not hide a small gain
    wide = rng.uniform(0, 100, size=200)
    assert paired_bootstrap(wide + 0.01, wide).p_one_sided == 0.0
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(base, base[:10])


def test_bootstrap_caption_corpus_bleu(embedded, benchmark_dir):
    from hones_nn.tasks.metrics import corpus_bleu4

    td = prepare_task(embedded, "caption", split="test", limit=12)
    refs = [item.data["references"] for item in td.items]
    outputs = [[r[0]] for r in refs[:6]] + [["a thing"] for _ in refs[6:]]
    stats, metric = item_statistics(td, outputs, [0.0] * td.n, "metric")
    assert float(metric(stats.sum(0), td.n)) == pytest.approx(corpus_bleu4([o[0] for o in outputs], refs))
    assert float(bleu_metric(np.zeros(10), 1)) == 0.0
    _, mean = item_statistics(td, outputs, [0.5] * td.n, "utility")
    assert mean.__name__ == "mean_metric"


# ------------------------------------------------------------------ files and baselines


def test_scales_file_round_trip(embedded, tmp_path):
    path = save_scales(
        tmp_path / "s.safetensors",
        NEURONS,
        SCALES - 1,
        {
            "task": "vqa",
            "model_id": embedded.model_id,
            "weights_hash": embedded.weights_hash,
            "curve": [{"step": 0, "loss": 1.5}],
        },
    )
    f = load_scales(path)
    assert f.neurons == NEURONS and torch.equal(f.scales, SCALES) and f.meta["curve"][0]["loss"] == 1.5
    f.check_model(embedded)
    assert torch.equal(f.intervention().scales, SCALES)
    f.meta["weights_hash"] = "0000"
    with pytest.raises(ValueError, match="re-learn"):
        f.check_model(embedded)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="safetensors"):
        load_scales(tmp_path / "bad.safetensors")


def test_neuron_files_and_selection(embedded, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hones_nn.engine.tables import write_neuron_table

    (tmp_path / "a.json").write_text(json.dumps([[1, 2], [0, 3]]))
    (tmp_path / "b.json").write_text(json.dumps({"neurons": [{"layer": 3, "neuron": 9}]}))
    pq.write_table(pa.table({"layer": [2, 2], "neuron": [5, 6]}), tmp_path / "c.parquet")
    assert read_neuron_file(tmp_path / "a.json") == [(1, 2), (0, 3)]
    assert read_neuron_file(tmp_path / "b.json") == [(3, 9)]
    assert read_neuron_file(tmp_path / "c.parquet") == [(2, 5), (2, 6)]
    neurons, info = select_neurons(embedded, neurons_file=str(tmp_path / "a.json"))
    assert neurons == [(0, 3), (1, 2)] and info["source"] == "file"
    (tmp_path / "d.json").write_text(json.dumps([[9, 2]]))
    with pytest.raises(ValueError, match="outside the model"):
        select_neurons(embedded, neurons_file=str(tmp_path / "d.json"))
    scores = np.arange(4 * 1024, dtype=float).reshape(4, 1024)
    table = write_neuron_table(
        tmp_path / "t.parquet",
        scores,
        {"model_id": embedded.model_id, "weights_hash": embedded.weights_hash, "task": "vqa"},
    )
    top, info = select_neurons(embedded, scores=str(table), top_k=3)
    assert top == [(3, 1021), (3, 1022), (3, 1023)] and info["k"] == 3
    assert len(select_neurons(embedded, scores=str(table))[0]) == round(4 * 1024 * 0.01)
    with pytest.raises(ValueError, match="--scores"):
        read_neuron_file(table)
    with pytest.raises(ValueError, match="either"):
        select_neurons(embedded)


def test_baseline_helpers():
    chosen = [(0, 1), (0, 2), (2, 7)]
    rand = random_neurons_like(chosen, 16, seed=0)
    assert sorted(layer for layer, _ in rand) == [0, 0, 2] and not set(rand) & set(chosen)
    assert rand == random_neurons_like(chosen, 16, seed=0) != random_neurons_like(chosen, 16, seed=1)
    assert parse_baselines("grid,no_kl") == ["grid", "no-kl"] and parse_baselines("none") == []
    assert parse_baselines(None) == list(BASELINES)
    with pytest.raises(ValueError, match="unknown baseline"):
        parse_baselines("lora")
    assert _pick({0.5: 0.2, 1.0: 0.3, 2.0: 0.3}, True) == 1.0
    assert _pick({0.5: 0.3, 1.5: 0.3, 2.0: 0.1}, True) == 0.5
    assert _pick({0.5: 1.0, 2.0: 0.4}, False) == 2.0


# ------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def score_table(embedded, tmp_path_factory):
    from hones_nn.engine.tables import write_neuron_table

    scores = np.random.default_rng(0).standard_normal((4, 1024))
    return str(
        write_neuron_table(
            tmp_path_factory.mktemp("steer") / "scores.parquet",
            scores,
            {"method": "random", "model_id": embedded.model_id, "weights_hash": embedded.weights_hash},
        )
    )


@pytest.mark.parametrize("task", ["vqa", "ocr", "caption", "retrieval"])
def test_cli_steer_end_to_end(task, score_table, benchmark_dir, tmp_path):
    out = tmp_path / "out"
    args = [
        "steer",
        "--task",
        task,
        "--scores",
        score_table,
        "--top-k",
        "24",
        "--limit",
        "4",
        "--epochs",
        "1",
        "--train-batch-size",
        "4",
        "--resamples",
        "200",
        "--out-dir",
        str(out),
        "--json",
    ]
    if task != "vqa":
        args.append("--no-other-tasks")
    if task == "retrieval":
        args += ["--grid-criterion", "loss"]  # the fast criterion (and 5 fewer dev evaluations)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [c["condition"] for c in report["conditions"]]
    assert names == ["base", "fixed-amp", "grid", "rand-neuron", "no-kl", "ours"]
    assert [b["baseline"] for b in report["bootstrap"]["comparisons"]] == names[:-1]
    assert all(0.0 <= b["p_one_sided"] <= 1.0 for b in report["bootstrap"]["comparisons"])
    assert report["test"]["n"] == 4 and report["dev"]["n"] == 4 and report["neurons"]["k"] == 24
    assert report["grid"]["factor"] in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
    assert report["grid"]["criterion"] == ("loss" if task == "retrieval" else "metric")
    if task == "vqa":
        assert sorted(o["task"] for o in report["other_tasks"]) == ["caption", "ocr", "retrieval"]
    scales = load_scales(out / "scales.safetensors")
    assert len(scales.neurons) == 24 and scales.meta["task"] == task
    assert scales.meta["hyperparameters"]["beta"] == 0.05 and scales.meta["curve"]
    rand = load_scales(out / "baselines" / "rand-neuron.safetensors")
    assert not set(rand.neurons) & set(scales.neurons)
    assert load_scales(out / "baselines" / "fixed-amp.safetensors").scales.eq(2.0).all()
    assert json.loads((out / "report.json").read_text())["task"] == task
    if task == "ocr":
        # the scales apply through `evaluate --steer` (zero-shot transfer is this, with --data)
        ev = CliRunner().invoke(
            cli, ["evaluate", "--task", "ocr", "--limit", "4", "--steer", str(out / "scales.safetensors"), "--json"]
        )
        assert ev.exit_code == 0, ev.output
        ev = json.loads(ev.stdout)
        assert {"base_metric", "steered_metric", "gain", "bootstrap"} <= set(ev)
        both = CliRunner().invoke(
            cli,
            [
                "evaluate",
                "--task",
                "ocr",
                "--limit",
                "4",
                "--steer",
                str(out / "scales.safetensors"),
                "--mask",
                "random",
            ],
        )
        assert both.exit_code == 2 and "one of them" in both.output


def test_cli_steer_text_and_relearn(score_table, benchmark_dir, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "steer",
            "--task",
            "vqa",
            "--scores",
            score_table,
            "--top-k",
            "8",
            "--limit",
            "4",
            "--epochs",
            "1",
            "--baselines",
            "fixed-amp",
            "--no-other-tasks",
            "--resamples",
            "100",
            "--out-dir",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "paired bootstrap" in result.output and "fixed-amp (s=2)" in result.output
    result = CliRunner().invoke(
        cli,
        [
            "steer",
            "--task",
            "vqa",
            "--zero-shot",
            str(tmp_path / "s" / "scales.safetensors"),
            "--split",
            "test",
            "--limit",
            "5",
            "--epochs",
            "1",
            "--relearn-fraction",
            "0.4",
            "--repeats",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["condition"] for s in report["summary"]] == ["base", "fixed-amp", "zero-shot", "ours", "rand-neuron"]
    assert [p["n_train"] for p in report["per_repeat"]] == [2, 2] and report["neurons"]["k"] == 8


def test_cli_steer_errors(score_table, benchmark_dir):
    result = CliRunner().invoke(cli, ["steer", "--task", "vqa", "--limit", "2"])
    assert result.exit_code == 2 and "--scores" in result.output
    result = CliRunner().invoke(
        cli, ["steer", "--task", "vqa", "--scores", score_table, "--top-k", "4", "--baselines", "lora", "--limit", "2"]
    )
    assert result.exit_code == 2 and "unknown baseline" in result.output


def test_kl_is_frozen_to_steered_not_reversed(embedded, vqa_dev):
    """The stated KL(p_frozen || p_steered) = sum_v p_frozen (log p_frozen - log p_steered),
    computed by hand from the model's logits with plain hooks; the reversed KL differs."""
    config = SteeringConfig()
    rows = epoch_rows(vqa_dev, config, 0)
    batch = make_batch(embedded, vqa_dev, rows, config, torch.device("cpu"))
    scales = torch.tensor([4.0, -3.0, 5.0, -2.0, 6.0])
    with torch.no_grad():
        parts = batch_losses(embedded, batch, NEURONS, scales, beta=0.05)

        def logp():
            out = embedded.model(**batch.inputs, logits_to_keep=batch.keep, use_cache=False).logits.float()
            out = out[:, :-1] if batch.keep > 1 else out
            return torch.log_softmax(out, -1)[batch.mask].double()

        frozen = logp()
        handles = manual_hook(embedded, NEURONS, scales)
        try:
            steered = logp()
        finally:
            for h in handles:
                h.remove()
    forward = (frozen.exp() * (frozen - steered)).sum(-1).mean().item()
    reverse = (steered.exp() * (steered - frozen)).sum(-1).mean().item()
    assert forward > 0
    assert abs(forward - reverse) > 1e-3 * forward  # the two directions are told apart here
    assert parts["kl"].item() == pytest.approx(forward, rel=1e-4)
    assert parts["kl"].item() != pytest.approx(reverse, rel=1e-4)
