"""The head budget (HONES appendix D.2) on real tiny models: head sets on every sweep path
against hand-hooked forwards and the plain paths, the curve against V-SEAM's own numbers,
and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hones_nn.engine.core import Engine
from hones_nn.engine.sweep import _run_rows, generated_texts, sweep
from hones_nn.tasks.retrieval import decision_token_ids
from hones_nn.tasks.task_data import prepare_task
from tests.helpers.torch_hooks import text_layers, torch_hooks


def _replace_heads(heads: list[int], num_heads: int):
    """A pre-hook on o_proj: each head in ``heads`` <- the mean of the other heads' clean slices."""

    def hook(module, args):
        x = args[0]
        b, s, w = x.shape
        clean = x.reshape(b, s, num_heads, w // num_heads)
        v = clean.clone()
        for head in heads:
            v[:, :, head] = clean[:, :, [k for k in range(num_heads) if k != head]].mean(dim=2)
        return (v.reshape(b, s, w),) + tuple(args[1:])

    return hook


def _hand_decisions(loaded, td, item, head_set) -> list[float]:
    """logit(" Yes") - logit(" No") at T of each candidate: one unpadded HF forward each,
    the set's heads replaced by plain torch hooks."""
    yes, no = decision_token_ids(loaded.processor.tokenizer)
    num_heads = loaded.sizes.num_heads
    by_layer: dict[int, list[int]] = {}
    for layer, head in head_set:
        by_layer.setdefault(layer, []).append(head)
    out = []
    with torch_hooks() as handles, torch.no_grad():
        for layer, heads in by_layer.items():
            o_proj = text_layers(loaded.model)[layer].self_attn.o_proj
            handles.append(o_proj.register_forward_pre_hook(_replace_heads(heads, num_heads)))
        for prompt in item.prompts:
            enc = loaded.adapter.encode(loaded.processor, [td.images[prompt.image_index]], [prompt.user_text])
            logits = loaded.model(**enc.inputs).logits[0, -1]
            out.append(float(logits[yes] - logits[no]))
    return out


@pytest.mark.parametrize("arch", ["tiny-llava", "qwen2.5-vl"])
def test_head_set_decisions_equal_hand_hooked_forwards(arch, embedded, tiny_model, benchmark_dir):
    loaded = embedded if arch == "tiny-llava" else tiny_model(arch)
    engine = Engine(loaded)
    td = prepare_task(loaded, "retrieval", limit=2)
    L, H = loaded.sizes.num_layers, loaded.sizes.num_heads
    head_set = ((1, 0), (1, H - 1), (L - 1, 1))
    conditions = [None, head_set]
    items = td.items[:2]
    _, shared = _run_rows(engine, td, items, conditions, "logprob", 16, "mean", 0, share_prefix=True)
    _, plain = _run_rows(engine, td, items, conditions, "logprob", 16, "mean", 0, share_prefix=False)
    keys = sorted(plain)
    np.testing.assert_allclose([shared[k] for k in keys], [plain[k] for k in keys], rtol=1e-5, atol=1e-5)
    hand = _hand_decisions(loaded, td, items[1], head_set)
    np.testing.assert_allclose([shared[(1, p, 1)] for p in range(50)], hand, rtol=1e-5, atol=1e-5)
    clean = [shared[(1, p, 0)] for p in range(50)]
    assert not np.allclose(clean, hand)  # the set acts


def test_head_sets_skip_the_clean_layers_below_their_lowest_head(embedded, benchmark_dir):
    """Teacher-forced and generated utilities of head sets equal the plain path's."""
    engine = Engine(embedded, min_new_tokens=12)
    td = prepare_task(embedded, "vqa", split="discovery", limit=2)
    L, H = embedded.sizes.num_layers, embedded.sizes.num_heads
    conditions = [None, ((1, 0), (L - 1, H - 1)), ((2, 1), (2, 3)), (1, 2)]
    for utility in ("logprob", "prob"):
        fast = sweep(engine, td, [0, 1], conditions, utility=utility, batch_size=8, skip_clean_layers=True)
        plain = sweep(engine, td, [0, 1], conditions, utility=utility, batch_size=8, skip_clean_layers=False)
        np.testing.assert_allclose(fast, plain, rtol=1e-6, atol=1e-7, err_msg=utility)
        assert not np.allclose(fast[:, 0], fast[:, 1])
    fast = generated_texts(engine, td, [0, 1], conditions, batch_size=8, skip_clean_layers=True)
    plain = generated_texts(engine, td, [0, 1], conditions, batch_size=8, skip_clean_layers=False)
    assert fast == plain


def test_the_curve_starts_at_the_top_heads_vseam_utility(embedded, embedded_engine, benchmark_dir, tmp_path):
    """K = 1 replaces the top head alone: the curve's first utility is the V-SEAM table's own
    intervened utility of its rank-1 head (a different condition type, the same intervention);
    the base is the table's base; a rerun gives the same numbers."""
    from hones_nn.engine.tables import read_table
    from hones_nn.methods.head_budget import elbow
    from hones_nn.runner.pipeline import Runner

    runner = Runner(embedded, out_dir=tmp_path, limit=12, batch_size=64, progress=False, _engine=embedded_engine)
    heads = runner.heads("vqa")
    table = read_table(heads.path)
    top = table.top(1)[0]
    total = embedded.sizes.num_layers * embedded.sizes.num_heads
    result = runner.head_budget("vqa", budgets=[4, 1, 2, total])
    assert result["budgets"] == [1, 2, 4, total]
    assert result["heads_reused"] is True
    assert result["ranked_heads"][0] == list(top)
    frame = heads.table.to_pandas()
    row = frame[(frame["layer"] == top[0]) & (frame["head"] == top[1])].iloc[0]
    assert result["base"] == pytest.approx(float(row.base_utility), abs=1e-9)
    assert result["utilities"][0] == pytest.approx(float(row.intervened_utility), abs=1e-9)
    drops = [(result["base"] - u) / result["base"] for u in result["utilities"]]
    assert result["relative_drops"] == pytest.approx(drops)
    assert result["elbow"] == elbow(result["budgets"], drops)
    assert max(drops) > 0.1  # the top heads matter on this model: the test is not empty
    saved = json.loads((tmp_path / "vqa.head-budget.json").read_text())
    assert saved["utilities"] == result["utilities"] and saved["weights_hash"] == embedded.weights_hash
    again = runner.head_budget("vqa", budgets=[1, 2, 4, total])
    assert again["utilities"] == result["utilities"]


def test_caption_curve_reads_corpus_bleu(embedded, embedded_engine, benchmark_dir, tmp_path):
    """Caption's curve is on corpus BLEU-4, the number `evaluate` reports: its base equals
    the corpus metric of the clean generations."""
    from hones_nn.runner.pipeline import Runner

    runner = Runner(embedded, out_dir=tmp_path, limit=8, batch_size=64, progress=False, _engine=embedded_engine)
    result = runner.head_budget("caption", budgets=[1, 3])
    td = prepare_task(embedded, "caption", split="discovery", limit=8)
    outputs = embedded_engine.run_task(td.task, td.items, td.images, batch_size=64, progress=False)
    assert result["metric"] == "bleu4 (corpus)"
    assert result["base"] == pytest.approx(td.task.corpus_metric(td.items, outputs), abs=1e-9)


def test_head_budget_command(benchmark_dir, tmp_path):
    from hones_nn.cli.main import cli

    out = tmp_path / "runs"
    args = ["head-budget", "--task", "ocr", "--limit", "8", "--batch-size", "64", "--out-dir", str(out)]
    result = CliRunner().invoke(cli, [*args, "--budgets", "1,2,8", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["budgets"] == [1, 2, 8] and len(data["utilities"]) == 3
    assert (out / "ocr.heads.parquet").exists() and (out / "ocr.head-budget.json").exists()
    text = CliRunner().invoke(cli, [*args, "--budgets", "1,2,8"])
    assert text.exit_code == 0, text.output
    assert "head table reused" in text.output and "relative drop %" in text.output
    bad = CliRunner().invoke(cli, [*args, "--budgets", "0,2,99"])
    assert bad.exit_code != 0
    assert "--budgets: [0, 99] outside 1..32" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(cli, [*args, "--budgets", ","])
    assert bad.exit_code != 0 and "--budgets is empty" in bad.output
    bad = CliRunner().invoke(cli, [*args, "--budgets", "1,two"])
    assert bad.exit_code != 0 and "--budgets expects comma-separated head counts" in bad.output
    bad = CliRunner().invoke(cli, [*args, "--utility", "logprob"])
    assert bad.exit_code != 0 and "logprob" in bad.output
