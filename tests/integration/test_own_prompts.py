"""Issue 15 on the shipped tiny-llava, from the CLI: the user's instructions reach the model,
results that mean nothing are refused, a matching head table is reused, and outputs are
checked before any work."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.tasks.prompts import INSTRUCTIONS

# a VQA instruction tiny-llava was not trained on: it describes the image instead of answering
WRONG_VQA = "Describe the image in one sentence. {question}"


def _json(args):
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def test_the_shipped_instruction_given_by_hand_gives_the_default_metric(benchmark_dir, tmp_path):
    base = ["evaluate", "--task", "vqa", "--limit", "8"]
    default = _json(base)
    given = _json([*base, "--instruction", INSTRUCTIONS["llava"]["vqa"]])
    assert given["metric"] == default["metric"] > 0
    prompt_file = tmp_path / "tasks.yaml"
    prompt_file.write_text(f"vqa:\n  instruction: {json.dumps(INSTRUCTIONS['llava']['vqa'])}\n")
    assert _json([*base, "--prompt-file", str(prompt_file)])["metric"] == default["metric"]


def test_show_prints_the_prompts_the_model_receives(benchmark_dir):
    result = CliRunner().invoke(
        cli, ["evaluate", "--task", "vqa", "--limit", "3", "--show", "2", "--instruction", "Q: {question} A:"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("--- example") == 2
    prompts = [line for line in result.output.splitlines() if line.startswith("  prompt: ")]
    assert len(prompts) == 2 and all("Q: " in p and " A:" in p and "<image>" in p for p in prompts)
    assert "  output: " in result.output and "  gold:   " in result.output


def test_a_prompt_that_does_not_fit_stops_heads(benchmark_dir, tmp_path):
    shown = _json(["evaluate", "--task", "vqa", "--split", "discovery", "--limit", "16", "--instruction", WRONG_VQA])
    assert shown["metric"] == 0.0
    result = CliRunner().invoke(
        cli,
        ["heads", "--task", "vqa", "--limit", "16", "--out-dir", str(tmp_path), "--instruction", WRONG_VQA],
    )
    assert result.exit_code == 2, result.output
    assert "error: the base vqa_accuracy on the first 16 items is 0.0000" in result.output
    assert "The prompt probably does not fit the model" in result.output
    assert "--show 5" in result.output and "--allow-degenerate" in result.output
    assert not (tmp_path / "vqa.heads.parquet").exists()


def test_rank_reuses_a_matching_head_table_and_refuses_an_all_zero_one(benchmark_dir, tmp_path):
    from hones_nn.engine.tables import read_table, write_head_table

    args = ["--task", "vqa", "--utility", "logprob", "--limit", "4", "--batch-size", "8", "--out-dir", str(tmp_path)]
    assert CliRunner().invoke(cli, ["heads", *args]).exit_code == 0
    heads = tmp_path / "vqa.heads.parquet"
    stamp = heads.stat().st_mtime_ns
    result = CliRunner().invoke(cli, ["rank", "--method", "hones", *args])
    assert result.exit_code == 0, result.output
    assert "head table reused" in result.output and heads.stat().st_mtime_ns == stamp
    assert read_table(tmp_path / "vqa.hones.parquet").meta["heads_reused"] is True
    # another limit is another head table: not reused
    other = CliRunner().invoke(cli, ["rank", "--method", "hones", *args[:-4], "--limit", "3", *args[-2:]])
    assert other.exit_code == 0 and "head table reused" not in other.output

    # the same table with every score 0 (a prompt the model did not fit): rank refuses it
    table = read_table(heads)
    zero = tmp_path / "zero.heads.parquet"
    write_head_table(zero, np.zeros(table.shape), 0.0, np.zeros(table.shape), table.meta)
    refused = CliRunner().invoke(cli, ["rank", "--method", "hones", *args, "--heads", str(zero)])
    assert refused.exit_code == 2
    assert f"error: {zero}: every head scores 0 (base utility 0.0000), so a ranking guided by it" in refused.output
    assert "the prompt probably does not fit the model" in refused.output and "--allow-degenerate" in refused.output


def test_output_checked_before_any_work(benchmark_dir, tmp_path):
    result = CliRunner().invoke(cli, ["heads", "--task", "vqa", "--limit", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert f"error: --out {tmp_path} is an existing directory; give a file name" in result.output


def test_answer_template_ends_the_prompt_and_is_stored(benchmark_dir, tmp_path):
    """--answer-template: its prefix follows the chat template's 'ASSISTANT:' in the prompt the
    model receives, and the heads table's metadata records it (the default records '{answer}')."""
    result = CliRunner().invoke(
        cli, ["evaluate", "--task", "vqa", "--limit", "1", "--show", "1", "--answer-template", "Answer: {answer}."]
    )
    assert result.exit_code == 0, result.output
    prompt = next(line for line in result.output.splitlines() if line.startswith("  prompt: "))
    assert prompt.endswith("ASSISTANT: Answer:'"), prompt
    base = ["heads", "--task", "vqa", "--limit", "2", "--utility", "logprob"]
    _json([*base, "--out-dir", str(tmp_path / "t"), "--answer-template", "Answer: {answer}."])
    _json([*base, "--out-dir", str(tmp_path / "p")])
    from hones_nn.engine.tables import read_table

    templated, plain = (
        read_table(tmp_path / "t" / "vqa.heads.parquet"),
        read_table(tmp_path / "p" / "vqa.heads.parquet"),
    )
    assert templated.meta["answer_template"] == "Answer: {answer}." and plain.meta["answer_template"] == "{answer}"
    # the teacher-forced text differs ("red." after "ASSISTANT: Answer:"), so the base log-prob does
    base_utility = [t.table.column("base_utility")[0].as_py() for t in (templated, plain)]
    assert base_utility[0] != base_utility[1]
