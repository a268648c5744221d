"""Issue 15 (open parts): the answer template, a processor without a chat template, and the
output check and lock of every writer."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.tasks import Prompt, get_task
from hones_nn.tasks.prompts import (
    check_answer_template,
    read_prompt_file,
    resolve_instructions,
    split_answer_template,
)

# ---------------------------------------------------------------- the answer template


def test_answer_template_split_and_checked():
    assert split_answer_template("Answer: {answer}") == ("Answer: ", "")
    assert split_answer_template("{answer}.") == ("", ".")
    assert split_answer_template("{{A}} {answer} }}") == ("{A} ", " }")
    for bad in ("Answer:", "{answer} {answer}", "{answer} {question}", "", "{answer"):
        with pytest.raises(ValueError, match="--answer-template"):
            check_answer_template("vqa", bad)


def test_answer_template_from_file_and_option(tmp_path):
    file = tmp_path / "tasks.yaml"
    file.write_text('vqa: {instruction: "Q: {question}", answer: "Answer: {answer}"}\nocr: {answer: "{answer}."}\n')
    assert read_prompt_file(file) == {
        "vqa": "Q: {question}",
        "vqa.answer": "Answer: {answer}",
        "ocr.answer": "{answer}.",
    }
    out = resolve_instructions("caption", None, file, "It shows {answer}")
    assert out["caption.answer"] == "It shows {answer}" and out["vqa"] == "Q: {question}"
    with pytest.raises(ValueError, match="--answer-template needs --task"):
        resolve_instructions(None, None, None, "{answer}")
    file.write_text('vqa: {answers: "x"}\n')
    with pytest.raises(ValueError, match="'instruction' and 'answer'"):
        read_prompt_file(file)


def test_prompt_clean_strips_the_template():
    prompt = Prompt("i", 0, "q", "red", prefix="Answer: ", suffix=".")
    assert prompt.teacher_forced == "red."
    assert prompt.clean(" red.") == "red"
    assert prompt.clean("Answer: red.\nmore") == "red"
    assert Prompt("i", 0, "q", "red").clean("red.") == "red."  # no template: nothing stripped


def test_answer_template_on_items(embedded, benchmark_dir):
    from hones_nn.data.dataset import load_split

    dataset = load_split(benchmark_dir, "discovery")
    plain = get_task("vqa").items(dataset, limit=2)[0]
    task = get_task("vqa", instructions={"vqa.answer": "Answer: {answer}."})
    templated = task.items(dataset, limit=2)[0]
    assert task.answer_template() == "Answer: {answer}." and get_task("vqa").answer_template() == "{answer}"
    for a, b in zip(plain, templated):
        p, q = a.prompts[0], b.prompts[0]
        assert (q.user_text, q.answer, q.prefix, q.suffix) == (p.user_text, p.answer, "Answer: ", ".")
        # the HONES targets stay the gold answer's tokens
        assert task.gold_token_ids(embedded.tokenizer, b) == get_task("vqa").gold_token_ids(embedded.tokenizer, a)


def test_answer_template_encoding_by_hand(embedded, benchmark_dir):
    """prompt + " Answer:" ends the prompt (T is its last token); answer + "." + EOS are teacher-forced."""
    from hones_nn.data.dataset import load_split
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.tasks.base import ImageSource

    images = ImageSource(load_split(benchmark_dir, "discovery"))
    prompt = Prompt("i", 0, "What color is the circle?", "red", prefix="Answer: ", suffix=".")
    enc = encode_prompts(embedded, images, [prompt], with_answers=True)
    processor, tok = embedded.processor, embedded.tokenizer
    text = embedded.adapter.prompt(processor, prompt.user_text) + " Answer:"
    want_prompt = processor(images=[images[0]], text=[text], return_tensors="pt")["input_ids"][0].tolist()
    want_answer = tok("red.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = enc.inputs["input_ids"][0].tolist()
    assert ids == want_prompt + want_answer
    assert int(enc.last_prompt_index[0]) == len(want_prompt) - 1
    assert enc.answer_mask[0].tolist() == [False] * len(want_prompt) + [True] * len(want_answer)
    # without a template: the plain prompt, as before
    plain = encode_prompts(embedded, images, [Prompt("i", 0, prompt.user_text, "red")], with_answers=True)
    text = embedded.adapter.prompt(processor, prompt.user_text)
    want = processor(images=[images[0]], text=[text], return_tensors="pt")["input_ids"][0].tolist()
    assert plain.inputs["input_ids"][0].tolist() == want + tok("red", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]


# ---------------------------------------------------------------- a processor without a chat template


def _folder_without_template(tmp_path) -> Path:
    from hones_nn.models.loading import resolve_model_path

    source = Path(resolve_model_path("tiny-llava")[0])
    folder = tmp_path / "no-template-llava"
    shutil.copytree(source, folder)
    (folder / "chat_template.jinja").unlink()
    for name in ("tokenizer_config.json", "processor_config.json", "chat_template.json"):
        file = folder / name
        if file.exists():
            data = json.loads(file.read_text())
            data.pop("chat_template", None)
            file.write_text(json.dumps(data))
    return folder


def test_missing_chat_template_error_and_option(tmp_path, embedded):
    from hones_nn.models.loading import load_model, resolve_model_path

    folder = _folder_without_template(tmp_path)
    loaded = load_model(folder)
    with pytest.raises(ValueError) as info:
        loaded.adapter.prompt(loaded.processor, "Describe the image.")
    message = str(info.value)
    assert str(folder) in message and "--chat-template FILE" in message and "no chat template" in message
    # the official code's raw LLaVA prompt needs no template
    assert loaded.adapter.prompt(loaded.processor, "x", reference_compat=True).endswith("\nASSISTANT:")
    template = Path(resolve_model_path("tiny-llava")[0]) / "chat_template.jinja"
    fixed = load_model(folder, chat_template=template)
    want = embedded.adapter.prompt(embedded.processor, "Describe the image.")
    assert fixed.adapter.prompt(fixed.processor, "Describe the image.") == want
    empty = tmp_path / "empty.jinja"
    empty.write_text("")
    with pytest.raises(ValueError, match="--chat-template .*empty"):
        load_model(folder, chat_template=empty)


def test_missing_chat_template_cli(tmp_path, benchmark_dir):
    from hones_nn.models.loading import resolve_model_path

    folder = _folder_without_template(tmp_path)
    args = ["evaluate", "--task", "vqa", "--model", str(folder), "--limit", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"--model {folder}" in result.output and "--chat-template FILE" in result.output
    assert "Traceback" not in result.output
    template = Path(resolve_model_path("tiny-llava")[0]) / "chat_template.jinja"
    result = CliRunner().invoke(cli, [*args, "--chat-template", str(template), "--json"])
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- every writer: checked before work, locked


@pytest.fixture
def no_model(monkeypatch):
    """A model load fails the test: the output check must come first."""
    import hones_nn.models.loading as loading

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise ValueError("MODEL-LOADED")

    monkeypatch.setattr(loading, "load_model", refuse)
    return calls


def _writers(tmp_path) -> dict[str, tuple[list[str], str]]:
    """command -> (arguments before the output option, the output option)."""
    records = tmp_path / "records.json"
    records.write_text("[]")
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    sets = tmp_path / "sets"
    sets.mkdir(exist_ok=True)
    return {
        "steer": (["steer", "--task", "vqa"], "--out-dir"),
        "edit": (["edit", "--source", "red", "--target", "green"], "--out"),
        "fuzzy build": (["fuzzy", "build"], "--out-dir"),
        "fuzzy table": (["fuzzy", "table", "--sets", str(sets)], "--out"),
        "compare": (["compare", "--tasks", "vqa"], "--out-dir"),
        "overlap": (["overlap"], "--out-dir"),
        "lens": (["lens", "--task", "vqa", "--group", "general"], "--out"),
        "data import-hones": (
            ["data", "import-hones", "--records", str(records), "--images", str(images)],
            "--out-dir",
        ),
        "data import-gqa": (
            ["data", "import-gqa", "--annotations", str(records), "--images", str(images)],
            "--out-dir",
        ),
        "data build-synthetic": (["data", "build-synthetic", "--n-images", "10"], "--out-dir"),
        "heads": (["heads", "--task", "vqa"], "--out-dir"),
        "rank": (["rank", "--task", "vqa", "--method", "dla"], "--out-dir"),
    }


WRITERS = [
    "steer",
    "edit",
    "fuzzy build",
    "fuzzy table",
    "compare",
    "overlap",
    "lens",
    "data import-hones",
    "data import-gqa",
    "data build-synthetic",
    "heads",
    "rank",
]


@pytest.mark.parametrize("name", WRITERS)
def test_unwritable_output_fails_before_any_model(tmp_path, no_model, name):
    args, option = _writers(tmp_path)[name]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = blocker / "sub" / ("out.json" if option == "--out" else "folder")  # its folder cannot be created
    start = time.monotonic()
    result = CliRunner().invoke(cli, [*args, option, str(bad)])
    assert time.monotonic() - start < 10
    assert result.exit_code == 2, result.output
    assert "cannot create the output folder" in result.output and option in result.output, result.output
    assert not no_model and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["edit", "fuzzy table", "lens"])
def test_output_that_is_a_directory_fails_before_any_model(tmp_path, no_model, name):
    args, option = _writers(tmp_path)[name]
    result = CliRunner().invoke(cli, [*args, option, str(tmp_path)])
    assert result.exit_code == 2 and "is an existing directory" in result.output, result.output
    assert not no_model


def _lock_path(tmp_path, name) -> tuple[Path, list[str]]:
    args, option = _writers(tmp_path)[name]
    out = tmp_path / "result"
    inner = {
        "steer": "report.json",
        "fuzzy build": "fuzzy_sets.parquet",
        "compare": "compare.parquet",
        "overlap": "overlap.parquet",
        "data import-hones": ".benchmark",
        "data import-gqa": ".benchmark",
        "data build-synthetic": ".benchmark",
    }.get(name)
    target = out / inner if inner else out.with_suffix(".safetensors" if name == "edit" else ".json")
    value = out if inner else target
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(target.name + ".lock"), [*args, option, str(value)]


@pytest.mark.parametrize("name", [w for w in WRITERS if w not in ("heads", "rank")])  # those lock in the runner
def test_held_lock_stops_a_second_writer(tmp_path, no_model, name):
    lock, args = _lock_path(tmp_path, name)
    lock.write_text(f"{os.getppid()}\n")  # a live process holds it
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"pid {os.getppid()}" in result.output and "is writing" in result.output, result.output
    assert not no_model and lock.exists()


@pytest.mark.parametrize("name", ["edit", "compare", "data import-hones"])
def test_lock_wait_waits_then_proceeds(tmp_path, no_model, name):
    lock, args = _lock_path(tmp_path, name)
    lock.write_text(f"{os.getppid()}\n")
    threading.Timer(1.0, lambda: lock.unlink()).start()
    start = time.monotonic()
    result = CliRunner().invoke(cli, [*args, "--lock-wait", "30"])
    waited = time.monotonic() - start
    assert waited >= 1.0, result.output
    assert "is writing" not in result.output
    # past the lock, the command ran: it loaded the model (edit, compare) or read the records
    assert no_model or name == "data import-hones", result.output
    assert not lock.exists()  # released after the run
