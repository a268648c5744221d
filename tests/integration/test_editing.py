"""Pan et al.'s neuron editing: the closed form, its prediction, specificity, files, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.editing.edit import (
    applied,
    find_edit_prompts,
    load_edit,
    margin_of,
    pan_scores,
    read_edit_prompts,
    required_shift,
    save_edit,
    single_token_id,
    solve_edit,
)
from hones_nn.engine.encoding import encode_prompts
from hones_nn.tasks.base import ImageSource
from hones_nn.tasks.task_data import prepare_task

# Tolerance on the unrelated prompt (an OCR transcription): the log-probability of every
# gold answer token moves by at most this many nats, and the argmax does not move.
UNRELATED_TOLERANCE = 1e-2


def test_required_shift_reaches_the_margin_exactly():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(5, 64, generator=gen, dtype=torch.float64) * 3
    u = torch.randn(64, generator=gen, dtype=torch.float64)
    eps = 1e-5
    for margin in (0.5, 2.0, 4.0):
        x = required_shift(h, u, margin, eps)
        reached = margin_of(h + x.unsqueeze(1) * (u / u.norm()), u, eps)
        before = margin_of(h, u, eps)
        expected = torch.where(before >= margin, before, torch.full_like(before, margin))
        torch.testing.assert_close(reached, expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="unreachable"):
        required_shift(h, u, float(u.norm()) * math.sqrt(64) + 1, eps)


def test_single_token_words(embedded):
    tok = embedded.tokenizer
    assert single_token_id(tok, "red") == tok.convert_tokens_to_ids("red")
    with pytest.raises(ValueError, match="not a single token"):
        single_token_id(tok, "reddish")
    with pytest.raises(ValueError, match="not a single token"):
        single_token_id(tok, "red circle")


@pytest.fixture(scope="module")
def red_edit(embedded, embedded_engine, benchmark_dir):
    from hones_nn.data.dataset import load_split

    dataset = load_split(benchmark_dir, "discovery")
    images = ImageSource(dataset)
    tok = embedded.tokenizer
    source, target = single_token_id(tok, "red"), single_token_id(tok, "green")
    prompts, _ = find_edit_prompts(
        embedded_engine, dataset, images, source, limit=3, batch_size=16, progress=False, scan=48
    )
    assert prompts, "no clean caption of the first 48 discovery images says 'red'"
    readout = read_edit_prompts(embedded_engine, images, prompts)
    last = embedded.sizes.num_layers - 1
    scores = pan_scores(embedded, readout, source)[last]
    neurons = [(last, int(i)) for i in np.argsort(-scores)[:8]]  # last layer: the prediction is exact
    edit, info = solve_edit(embedded, readout, neurons, source, target, margin=3.0, aggregate="max")
    return dict(images=images, prompts=prompts, readout=readout, edit=edit, info=info, source=source, target=target)


def test_edit_changes_the_target_logit_as_the_closed_form_predicts(embedded, embedded_engine, red_edit):
    r = red_edit
    with applied(embedded, r["edit"]):
        after = read_edit_prompts(embedded_engine, r["images"], r["prompts"])
    measured = (after.logits[:, r["target"]] - after.logits[:, r["source"]]).double()
    predicted = torch.tensor(r["info"]["margin_predicted"], dtype=torch.float64)
    torch.testing.assert_close(measured, predicted, rtol=1e-4, atol=1e-3)
    # max aggregation: every edit prompt reaches the margin, the binding one exactly
    assert measured.min().item() == pytest.approx(3.0, abs=1e-3)
    before = torch.tensor(r["info"]["margin_before"], dtype=torch.float64)
    assert (before < 3.0).all() and (measured > before).all()
    # the weights come back exactly after the block
    W = embedded.adapter.down_proj(embedded.model, r["edit"].neurons[0][0]).weight
    snapshot = W.detach().clone()
    with applied(embedded, r["edit"]):
        assert not torch.equal(W, snapshot)
    assert torch.equal(W, snapshot)


def test_edit_leaves_an_unrelated_prompt_unchanged(embedded, red_edit):
    td = prepare_task(embedded, "ocr", split="test", limit=8)
    enc = encode_prompts(embedded, td.images, [i.prompts[0] for i in td.items], with_answers=True)
    predicts = torch.zeros_like(enc.answer_mask)
    predicts[:, :-1] = enc.answer_mask[:, 1:]  # positions that predict a gold answer token
    gold = torch.zeros_like(enc.input_ids)
    gold[:, :-1] = enc.input_ids[:, 1:]
    with torch.no_grad():
        clean = embedded.model(**enc.inputs).logits.log_softmax(-1)
        with applied(embedded, red_edit["edit"]):
            edited = embedded.model(**enc.inputs).logits.log_softmax(-1)
    lp_clean = clean.gather(-1, gold.unsqueeze(-1))[..., 0][predicts]
    lp_edited = edited.gather(-1, gold.unsqueeze(-1))[..., 0][predicts]
    assert (lp_clean - lp_edited).abs().max().item() <= UNRELATED_TOLERANCE
    assert torch.equal(clean.argmax(-1)[predicts], edited.argmax(-1)[predicts])


def test_edit_file_round_trip(embedded, red_edit, tmp_path):
    edit = red_edit["edit"]
    meta = {"source": "red", "target": "green", "weights_hash": embedded.weights_hash}
    path = save_edit(tmp_path / "e.safetensors", edit, meta, {"ok": 1})
    back = load_edit(path)
    assert back.neurons == edit.neurons and back.meta == meta
    torch.testing.assert_close(back.delta, edit.delta)
    assert json.loads((tmp_path / "e.json").read_text()) == {"ok": 1}
    with pytest.raises(ValueError, match="safetensors"):
        save_edit(tmp_path / "e.bin", edit, meta)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="hones-nn edit"):
        load_edit(tmp_path / "bad.safetensors")


def test_cli_edit_and_evaluate_with_the_edit(tmp_path, benchmark_dir):
    out = tmp_path / "red_green.safetensors"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "edit",
            "--source",
            "red",
            "--target",
            "green",
            "--neurons",
            "pan:8",
            "--limit",
            "3",
            "--eval-limit",
            "8",
            "--spec-tasks",
            "ocr",
            "--spec-limit",
            "4",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert out.exists() and out.with_suffix(".json").exists()
    assert report["meta"]["k"] == 8 and report["edit_prompts"]["n"] == 3
    assert 0 <= report["held_out_captions"]["unchanged_without_source"] <= 1
    assert report["other_tasks"][0]["task"] == "ocr"
    result = runner.invoke(cli, ["evaluate", "--task", "ocr", "--limit", "4", "--edit", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metric"] == pytest.approx(report["other_tasks"][0]["edited"])
    # errors name the item and the fix
    result = runner.invoke(cli, ["edit", "--source", "reddish", "--target", "green", "--out", str(out)])
    assert result.exit_code == 2 and "reddish" in result.output and "single token" in result.output
    result = runner.invoke(
        cli,
        [
            "edit",
            "--source",
            "red",
            "--target",
            "green",
            "--neurons",
            str(tmp_path / "none.parquet"),
            "--limit",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2 and "none.parquet" in result.output
    result = runner.invoke(
        cli, ["evaluate", "--task", "ocr", "--limit", "2", "--edit", str(tmp_path / "missing.safetensors")]
    )
    assert result.exit_code == 2 and "hones-nn edit" in result.output
