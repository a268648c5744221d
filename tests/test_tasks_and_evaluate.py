"""Tasks (items, utilities, bad input) and `hones-nn evaluate` on the embedded model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.data.dataset import load_split
from hones_nn.tasks import BadItemError, ImageSource, clean_generation, get_task
from hones_nn.tasks.retrieval import decision_token_ids


def test_clean_generation_matches_reference_rules():
    assert clean_generation("Answer: red") == "red"
    assert clean_generation("assistant: A: 'KATE'\nmore") == "KATE"
    assert clean_generation('Caption: "a red circle."') == "a red circle."
    assert clean_generation("  yes ") == "yes"


def test_items_and_utilities(benchmark_dir):
    ds = load_split(benchmark_dir, "dev")
    vqa = get_task("vqa")
    items, skipped = vqa.items(ds, limit=5)
    assert len(items) == 5 and not skipped
    item = items[0]
    assert "Question:" in item.prompts[0].user_text
    assert vqa.utility(item, [item.data["answer"]]) == pytest.approx(1.0)
    assert vqa.utility(item, ["zzz"]) == 0.0
    ret = get_task("retrieval")
    items, _ = ret.items(ds, limit=2)
    assert len(items[0].prompts) == 50
    pos = items[0].data["positive_index"]
    scores = [0.0] * 50
    scores[pos] = 1.0
    assert ret.utility(items[0], scores) == 1.0
    scores[pos] = -1.0  # positive ranked last
    assert ret.utility(items[0], scores) == 0.0
    caption = get_task("caption")
    items, _ = caption.items(ds, limit=20)
    refs = [i.data["references"] for i in items]
    assert caption.corpus_metric(items, [[r[0]] for r in refs]) == pytest.approx(1.0)


def test_unknown_task():
    with pytest.raises(ValueError, match="choose one of"):
        get_task("segmentation")


def _copy_with(benchmark_dir, tmp_path, split, mutate):
    """A copy of the benchmark whose `split` rows are changed by `mutate(rows)`."""
    from hones_nn.data.dataset import read_manifest, write_benchmark

    out = tmp_path / "bench"
    shutil.copytree(benchmark_dir, out)
    rows = load_split(benchmark_dir, split).cast_column("image", __import__("datasets").Image(decode=False))
    rows = [dict(r) for r in rows.select(range(6))]
    mutate(rows)
    manifest = read_manifest(benchmark_dir)
    manifest.pop("splits")
    write_benchmark(out, {split: rows}, manifest)
    return out


def test_empty_answer_names_the_item(benchmark_dir, tmp_path):
    def empty(rows):
        rows[2]["vqa"]["answer"] = ""
    bad = _copy_with(benchmark_dir, tmp_path, "test", empty)
    ds = load_split(bad, "test")
    bad_id = ds.select_columns(["image_id"])[2]["image_id"]
    with pytest.raises(BadItemError, match=bad_id):
        get_task("vqa").items(ds)
    items, skipped = get_task("vqa").items(ds, skip_bad=True)
    assert len(items) == 5 and skipped[0]["item_id"] == bad_id


def test_corrupt_image_names_the_item(benchmark_dir, tmp_path):
    def corrupt(rows):
        rows[1]["image"] = {"bytes": b"not a png", "path": None}
    bad = _copy_with(benchmark_dir, tmp_path, "test", corrupt)
    ds = load_split(bad, "test")
    images = ImageSource(ds)
    with pytest.raises(BadItemError, match=ds.select_columns(["image_id"])[1]["image_id"] + ".*corrupt"):
        get_task("ocr").items(ds, images=images)
    items, skipped = get_task("ocr").items(ds, images=images, skip_bad=True)
    assert len(skipped) == 1 and len(items) == 5


def test_missing_field_is_reported(benchmark_dir):
    ds = load_split(benchmark_dir, "test").remove_columns(["captions"])
    with pytest.raises(ValueError, match="captions"):
        get_task("caption").items(ds)


def test_degenerate_decision_tokens_fail():
    class SplitsSpace:
        all_special_ids = [0]
        unk_token_id = 1

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [7, 8 if "Yes" in text else 9]}  # " Yes" and " No" both start with id 7

    with pytest.raises(ValueError, match="degenerate"):
        decision_token_ids(SplitsSpace())


def test_missing_split_and_benchmark(benchmark_dir, tmp_path):
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_split(benchmark_dir, "validation")
    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", "--data", str(tmp_path), "--limit", "2"])
    assert result.exit_code == 2 and "build-synthetic" in result.output


def test_evaluate_json(benchmark_dir):
    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", "--limit", "16", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["task"] == "vqa" and payload["metric_name"] == "vqa_accuracy" and payload["n"] == 16
    assert 0.0 <= payload["metric"] <= 1.0


def test_evaluate_mask_random_json(benchmark_dir):
    result = CliRunner().invoke(cli, ["evaluate", "--task", "ocr", "--limit", "8", "--mask", "random",
                                      "--seeds", "2", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    for key in ("base_metric", "masked_metric", "relative_drop"):
        assert key in payload
    assert payload["k"] == 41  # round(4 * 1024 * 0.01)
    assert len(payload["random"]["masked_metrics"]) == 2


TARGETS = {"vqa": 0.85, "ocr": 0.70, "caption": 0.40, "retrieval": 0.90}
# Measured on the shipped model (all 300 test images): vqa 0.8953, ocr 1.0000, caption
# 1.0000, retrieval 0.9839.
_METRICS: dict[str, float] = {}


def _shipped_metric(task, embedded) -> float:
    """The shipped model's metric on the whole synthetic test split, computed once per task."""
    if task not in _METRICS:
        from hones_nn.evaluation.engine import Engine
        from hones_nn.evaluation.evaluate import evaluate, prepare_task

        td = prepare_task(embedded, task, split="test")
        assert td.n >= 300
        _METRICS[task] = evaluate(Engine(embedded), td, batch_size=64, progress=False).metric
    return _METRICS[task]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vqa", "ocr", "caption", "retrieval"])
def test_shipped_model_meets_targets(task, benchmark_dir, embedded):
    """The issue's quality bar, on the whole synthetic test split (300 images per task)."""
    metric = _shipped_metric(task, embedded)
    assert metric >= TARGETS[task], f"{task}: {metric:.4f} < {TARGETS[task]}"


# tiny-qwen2.5-vl, measured on all 300 test images: vqa 0.8530, ocr 0.0000, caption 0.9976,
# retrieval 0.5154. It meets the VQA and caption targets; OCR and retrieval are not learned
# (stated in the README): these guard what it does reach.
QWEN_LEVELS = {"vqa": 0.85, "caption": 0.40}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(QWEN_LEVELS))
def test_shipped_qwen_keeps_its_measured_level(task, benchmark_dir):
    from hones_nn.evaluation.engine import Engine
    from hones_nn.evaluation.evaluate import evaluate, prepare_task
    from hones_nn.models.loading import load_model

    loaded = load_model("tiny-qwen2.5-vl")
    assert type(loaded.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    td = prepare_task(loaded, task, split="test")
    assert td.n >= 300
    metric = evaluate(Engine(loaded), td, batch_size=64, progress=False).metric
    assert metric >= QWEN_LEVELS[task], f"{task}: {metric:.4f} < {QWEN_LEVELS[task]}"


def test_hones_runs_on_the_shipped_qwen(tmp_path, benchmark_dir):
    """The whole HONES path (V-SEAM heads, then neurons) on the trained Qwen2.5-VL, from the CLI."""
    result = CliRunner().invoke(cli, ["rank", "--task", "vqa", "--method", "hones", "--model", "tiny-qwen2.5-vl",
                                      "--limit", "4", "--out-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    from hones_nn.runner.tables import read_table

    table = read_table(tmp_path / "vqa.hones.parquet")
    assert table.meta["model_id"] == "tiny-qwen2.5-vl" and table.shape == (4, 1024)
    assert np.isfinite(table.score).all() and (table.score != 0).any()
