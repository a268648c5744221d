"""Issue 15: bad input gets a clear message (the item, the option, the fix), never a traceback.

Each case is the bad input of the issue, and the assertion is on the message printed."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.engine.tables import read_table, write_neuron_table
from hones_nn.utils.io import OutputLock, check_output_path

# ---------------------------------------------------------------- score tables validated on read


def _neuron_table(tmp_path, layers=2, width=3):
    scores = np.arange(layers * width, dtype=np.float64).reshape(layers, width)
    return write_neuron_table(tmp_path / "n.parquet", scores, {"method": "test", "task": "vqa"})


def _rewrite(path, mutate):
    table = pq.read_table(path)
    meta = table.schema.metadata
    out = mutate(table).replace_schema_metadata(meta)
    pq.write_table(out, path)
    return path


def test_valid_table_reads(tmp_path):
    table = read_table(_neuron_table(tmp_path))
    assert table.shape == (2, 3) and len(table.rank) == 6


def test_string_score_column(tmp_path):
    path = _rewrite(
        _neuron_table(tmp_path),
        lambda t: t.set_column(t.column_names.index("score"), "score", pa.array([str(v) for v in range(6)])),
    )
    with pytest.raises(ValueError, match=r"column 'score' must hold numbers without nulls, not string"):
        read_table(path)


def test_out_of_range_neuron_index(tmp_path):
    path = _rewrite(
        _neuron_table(tmp_path),
        lambda t: t.set_column(1, "neuron", pa.array([0, 1, 2, 0, 1, 7], pa.int32())),
    )
    with pytest.raises(ValueError, match=r"1 row\(s\) have a neuron out of range 0\.\.2 \(first: row 5, neuron 7\)"):
        read_table(path)


def test_missing_rows(tmp_path):
    path = _rewrite(_neuron_table(tmp_path), lambda t: t.slice(0, 4))
    with pytest.raises(ValueError, match=r"4 rows but its shape 2 x 3 needs 6 .* 2 missing"):
        read_table(path)


def test_duplicate_rows(tmp_path):
    path = _rewrite(
        _neuron_table(tmp_path),
        lambda t: t.set_column(1, "neuron", pa.array([0, 1, 1, 0, 1, 2], pa.int32())),
    )
    with pytest.raises(ValueError, match=r"1 \(layer, neuron\) pair\(s\) appear more than once \(first: \(0, 1\)\)"):
        read_table(path)


# ---------------------------------------------------------------- outputs checked before the run


def test_out_is_an_existing_directory(tmp_path):
    with pytest.raises(ValueError, match=r"--out .* is an existing directory; give a file name"):
        check_output_path(tmp_path)


def test_output_folder_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"cannot create the output folder .*a-file.* choose a folder you can write"):
        check_output_path(blocker / "sub" / "t.parquet")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_output_folder_not_writable(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"is not writable"):
            check_output_path(folder / "t.parquet")
    finally:
        folder.chmod(0o700)


def test_lock_stops_a_second_writer_and_takes_over_a_stale_one(tmp_path):
    out = tmp_path / "vqa.hones.parquet"
    with OutputLock(out):
        assert (tmp_path / "vqa.hones.parquet.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(ValueError, match=rf"another hones-nn process \(pid {os.getpid()}\) is writing .*vqa"):
            OutputLock(out).acquire()
    assert not (tmp_path / "vqa.hones.parquet.lock").exists()
    # a lock left by a process that no longer runs: taken over
    dead = 2**22 + 12345
    (tmp_path / "vqa.hones.parquet.lock").write_text(f"{dead}\n")
    with OutputLock(out):
        assert (tmp_path / "vqa.hones.parquet.lock").read_text().strip() == str(os.getpid())


# ---------------------------------------------------------------- option ranges (click), no model loaded


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1"),
        (["--limit", "0"], "Invalid value for '--limit': 0 is not in the range x>=1"),
        (["--limit", "-3"], "Invalid value for '--limit': -3 is not in the range x>=1"),
        (["--show", "-1"], "Invalid value for '--show': -1 is not in the range x>=0"),
    ],
)
def test_option_ranges(args, message):
    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_limit_below_one_through_the_api():
    from hones_nn.tasks import get_task

    with pytest.raises(ValueError, match=r"--limit must be at least 1 \(got 0\)"):
        get_task("vqa").items(SimpleNamespace(column_names=["vqa"]), limit=0)


# ---------------------------------------------------------------- models


def test_model_folder_that_does_not_exist(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", "--model", str(missing)])
    assert result.exit_code == 2
    assert f"error: --model {missing}: no such folder; give an existing model folder" in result.output
    assert "Traceback" not in result.output


def test_model_folder_without_weights(tmp_path):
    from hones_nn.models.loading import EMBEDDED_MODELS

    (tmp_path / "config.json").write_text((EMBEDDED_MODELS["tiny-llava"] / "config.json").read_text())
    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", "--model", str(tmp_path)])
    assert result.exit_code == 2
    assert f"error: --model {tmp_path}: the folder holds no weights (no *.safetensors or *.bin)" in result.output


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", "--model", "nobody-hones/no-such-model"])
    assert result.exit_code == 2
    assert "error: --model nobody-hones/no-such-model: cannot load the config of this hub id" in result.output
    assert "HF_HUB_OFFLINE is set" in result.output


# ---------------------------------------------------------------- --debug, Ctrl-C, NaN


def _command(exc):
    from hones_nn.cli.common import friendly_errors

    @click.command("boom")
    @click.option("--out-dir", default="runs-x")
    @friendly_errors
    def boom(out_dir):
        raise exc

    group = click.Group(params=[click.Option(["--debug"], is_flag=True)], commands={"boom": boom})
    return group


def test_ctrl_c_says_what_was_kept_and_how_to_resume():
    result = CliRunner().invoke(_command(KeyboardInterrupt()), ["boom"])
    assert result.exit_code == 130
    assert "interrupted. Finished shards are kept in runs-x/.checkpoints; run the same command again" in result.output
    assert "Aborted!" not in result.output


def test_debug_shows_the_traceback():
    plain = CliRunner().invoke(_command(ValueError("bad thing")), ["boom"])
    assert plain.exit_code == 2 and "error: bad thing" in plain.output
    debug = CliRunner().invoke(_command(ValueError("bad thing")), ["--debug", "boom"])
    assert isinstance(debug.exception, ValueError)  # raised, so click prints the traceback


def test_nan_is_never_a_figure(capsys):
    from hones_nn.cli.common import emit_json
    from hones_nn.cli.evaluate import _drop

    assert _drop(float("nan")) == "undefined (base metric 0)"
    assert _drop(0.25) == "25.00%"
    emit_json({"relative_drop": float("nan"), "random": {"drops": [float("nan"), 0.5]}})
    assert json.loads(capsys.readouterr().out) == {"relative_drop": None, "random": {"drops": [None, 0.5]}}


# ---------------------------------------------------------------- the user's instructions


def _vqa_record(answer="red"):
    return {"image_id": "img-1", "vqa": {"question": "What color is the ball?", "answer": answer}}


def test_instruction_replaces_the_built_in_one():
    from hones_nn.tasks import get_task

    task = get_task("vqa", instructions={"vqa": "Q: {question}\nShort answer:"})
    item = task.make_item(_vqa_record(), 0)
    assert item.prompts[0].user_text == "What color is the ball?".join(["Q: ", "\nShort answer:"])
    assert task.instruction_template() == "Q: {question}\nShort answer:"
    # the built-in one is untouched for a task without a user instruction
    from hones_nn.tasks.prompts import INSTRUCTIONS

    assert get_task("vqa").instruction_template() == INSTRUCTIONS["llava"]["vqa"]


@pytest.mark.parametrize(
    ("task", "text", "message"),
    [
        ("vqa", "Answer briefly.", r"must contain \{question\}, where each item's text goes"),
        ("ocr", "Read {word}", r"unknown field\(s\) \['word'\]; ocr fills no field"),
        ("vqa", "{question", r"is not a valid template"),
        ("vqa", "  ", r"must be a non-empty text"),
    ],
)
def test_bad_instructions(task, text, message):
    from hones_nn.tasks.prompts import check_instruction

    with pytest.raises(ValueError, match=message):
        check_instruction(task, text)


def test_prompt_file_yaml_and_json(tmp_path):
    from hones_nn.tasks.prompts import read_prompt_file, resolve_instructions

    yaml_file = tmp_path / "tasks.yaml"
    yaml_file.write_text('vqa:\n  instruction: "Q: {question} A:"\nocr: "Read the boxed word."\n')
    assert read_prompt_file(yaml_file) == {"vqa": "Q: {question} A:", "ocr": "Read the boxed word."}
    json_file = tmp_path / "tasks.json"
    json_file.write_text(json.dumps({"caption": "Caption this."}))
    assert resolve_instructions("caption", None, json_file) == {"caption": "Caption this."}
    assert resolve_instructions("ocr", "OCR it.", yaml_file)["ocr"] == "OCR it."  # --instruction wins
    bad = tmp_path / "bad.yaml"
    bad.write_text("vqa: {prompt: x}\n")
    with pytest.raises(
        ValueError, match=r"task 'vqa' has unknown key\(s\) \['prompt'\]; the keys are 'instruction' and 'answer'"
    ):
        read_prompt_file(bad)


# ---------------------------------------------------------------- targets checked before work


class _Tokenizer:
    """Every word is one token, except "<pad>", which is the unk id (special)."""

    all_special_ids = (0,)
    unk_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [0 if w == "<pad>" else 1 + len(w) for w in text.split()]}


def _runner_with_items(answers, skip_bad):
    from hones_nn.runner.pipeline import Runner
    from hones_nn.tasks import get_task
    from hones_nn.tasks.task_data import TaskData

    task = get_task("vqa")
    items = [task.make_item(_vqa_record(a) | {"image_id": f"img-{i}"}, i) for i, a in enumerate(answers)]
    loaded = SimpleNamespace(tokenizer=_Tokenizer(), model_id="stub-model")
    td = TaskData(task, items, images=None, skipped=[], data_dir="d", split="discovery")
    return Runner(loaded=loaded, skip_bad=skip_bad), td


def test_target_without_tokens_stops_before_any_head():
    runner, td = _runner_with_items(["red", "<pad>", "blue"], skip_bad=False)
    with pytest.raises(
        ValueError, match=r"item 'img-1': the target '<pad>' has no non-special token .* pass --skip-bad to drop"
    ):
        runner.check_targets(td, "direction")


def test_skip_bad_drops_items_without_target_tokens():
    runner, td = _runner_with_items(["red", "<pad>", "blue"], skip_bad=True)
    runner.check_targets(td, "direction")
    assert [i.item_id for i in td.items] == ["img-0", "img-2"]
    assert [s["item_id"] for s in td.skipped] == ["img-1"]
