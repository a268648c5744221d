"""Issue 15's end-to-end proof on a checkpoint the project was not built around.

``tests/fixtures/own-format-llava`` (built by ``tests/fixtures/build_own_format_llava.py``) is a
tiny ``LlavaForConditionalGeneration`` with its own 82-token word vocabulary, its own chat
template (``USER: <image>\\n{text}\\nASSISTANT:``) and its own instruction
(``{question} Reply in one word.``); without that instruction it answers in a sentence. From
the CLI: the built-in instruction scores 0 and is refused; with ``--instruction`` the base
metric equals the model's own evaluation (a plain Hugging Face loop, written here) on the same
items, and ``heads`` + ``rank --method hones`` give a non-degenerate table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hones_nn.cli.main import cli

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "own-format-llava"
OWN = "{question} Reply in one word."
N = 32


def _run(args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def _json(args):
    result = _run([*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


@pytest.fixture(scope="module")
def own_evaluation(benchmark_dir):
    """The model's own evaluation of the first N test items, without hones_nn's model code:
    its processor, greedy ``generate``, its own prompt string written out here, and the VQA
    task's metric on the decoded answers."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from hones_nn.data.dataset import load_split
    from hones_nn.tasks.metrics import vqa_soft_accuracy

    processor = AutoProcessor.from_pretrained(MODEL)
    model = LlavaForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval()
    tokenizer = processor.tokenizer
    rows = load_split(benchmark_dir, "test").select(range(N))
    outputs, scores, prompts = [], [], []
    for row in rows:
        prompt = f"USER: <image>\n{row['vqa']['question']} Reply in one word.\nASSISTANT:"
        enc = processor(images=row["image"].convert("RGB"), text=prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(
                **enc, max_new_tokens=24, do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=0
            )
        answer = tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        prompts.append(prompt)
        outputs.append(answer)
        scores.append(vqa_soft_accuracy(answer, row["vqa"]["all_answers"], normalize_answers=True))
    return {"prompts": prompts, "outputs": outputs, "metric": float(np.mean(scores))}


def test_the_checkpoint_is_its_own(benchmark_dir):
    info = json.loads((MODEL / "training_info.json").read_text())
    config = json.loads((MODEL / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["text_config"]["vocab_size"] == 82 and info["own_instruction"] == OWN
    assert sum(f.stat().st_size for f in MODEL.iterdir()) < 3_000_000


def test_the_built_in_instruction_does_not_fit_and_is_refused(benchmark_dir, tmp_path):
    result = _run(["evaluate", "--task", "vqa", "--model", MODEL, "--limit", N])
    assert result.exit_code == 0, result.output
    assert "vqa_accuracy: 0.0000" in result.output
    assert "warning: the metric is 0: the prompt probably does not fit the model" in result.output
    heads = _run(["heads", "--task", "vqa", "--model", MODEL, "--limit", 16, "--out-dir", tmp_path])
    assert heads.exit_code == 2, heads.output
    assert "error: the base vqa_accuracy on the first 16 items is 0.0000" in heads.output
    assert not (tmp_path / "vqa.heads.parquet").exists()


def test_its_own_instruction_gives_the_models_own_evaluation(benchmark_dir, own_evaluation):
    base = ["evaluate", "--task", "vqa", "--model", MODEL, "--limit", N, "--instruction", OWN]
    shown = _json([*base, "--show", N])
    assert [ex["prompt"] for ex in shown["examples"]] == own_evaluation["prompts"]  # its chat template
    assert [ex["output"] for ex in shown["examples"]] == own_evaluation["outputs"]
    assert shown["metric"] == pytest.approx(own_evaluation["metric"], abs=1e-12)
    assert own_evaluation["metric"] >= 0.6
    assert _json(base)["metric"] == pytest.approx(own_evaluation["metric"], abs=1e-12)


def test_heads_then_hones_rank_run_end_to_end_with_its_instruction(benchmark_dir, tmp_path):
    from hones_nn.engine.tables import read_table

    args = ["--task", "vqa", "--model", MODEL, "--limit", 8, "--out-dir", tmp_path, "--instruction", OWN]
    heads = _run(["heads", *args])
    assert heads.exit_code == 0, heads.output
    table = read_table(tmp_path / "vqa.heads.parquet")
    assert table.shape == (2, 8) and np.isfinite(table.score).all() and (table.score > 0).any()
    assert table.meta["instruction"] == OWN
    rank = _run(["rank", "--method", "hones", *args])
    assert rank.exit_code == 0, rank.output
    assert "head table reused" in rank.output
    neurons = read_table(tmp_path / "vqa.hones.parquet")
    assert neurons.shape == (2, 512) and len(neurons.score) == 2 * 512
    assert np.isfinite(neurons.score).all() and np.ptp(neurons.score) > 0
