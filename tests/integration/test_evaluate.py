"""`hones-nn evaluate` on the embedded model (and the shipped models' quality levels).

The tasks themselves (items, utilities, bad input) are checked in tests/unit/test_tasks.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.data.dataset import load_split


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
    result = CliRunner().invoke(
        cli, ["evaluate", "--task", "ocr", "--limit", "8", "--mask", "random", "--seeds", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    for key in ("base_metric", "masked_metric", "relative_drop"):
        assert key in payload
    assert payload["k"] == 41  # round(4 * 1024 * 0.01)
    assert len(payload["random"]["masked_metrics"]) == 2


TARGETS = {"vqa": 0.85, "ocr": 0.70, "caption": 0.40, "retrieval": 0.90}
# Measured on the shipped model (all 300 test images): vqa 0.8953, ocr 1.0000, caption
# 1.0000, retrieval 0.9839.
# tiny-qwen2.5-vl's (issue 17: it reads; OCR ANLS >= 0.70 and retrieval NDCG@5 >= 0.80), measured
# on all 300 test images: vqa 0.9387, ocr 1.0000, caption 1.0000, retrieval 0.8236.
QWEN_TARGETS = {**TARGETS, "retrieval": 0.80}
_METRICS: dict[tuple[str, str, int | None], float] = {}


def _shipped_metric(model: str, task: str, limit: int | None = None) -> float:
    """A shipped model's metric on the whole synthetic test split (or its first `limit`
    items), computed once per task."""
    if (model, task, limit) not in _METRICS:
        from hones_nn.engine.core import Engine
        from hones_nn.evaluation.evaluate import evaluate
        from hones_nn.models.loading import load_model
        from hones_nn.tasks.task_data import prepare_task

        loaded = load_model(model)
        td = prepare_task(loaded, task, split="test", limit=limit)
        assert td.n >= (limit or 300)
        _METRICS[(model, task, limit)] = evaluate(Engine(loaded), td, batch_size=64, progress=False).metric
    return _METRICS[(model, task, limit)]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vqa", "ocr", "caption", "retrieval"])
def test_shipped_model_meets_targets(task, benchmark_dir):
    """The issue's quality bar, on the whole synthetic test split (300 images per task)."""
    metric = _shipped_metric("tiny-llava", task)
    assert metric >= TARGETS[task], f"{task}: {metric:.4f} < {TARGETS[task]}"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vqa", "ocr", "caption", "retrieval"])
def test_shipped_qwen_meets_targets(task, benchmark_dir):
    """tiny-qwen2.5-vl reads (issue 17): OCR and retrieval, as well as VQA and captions, on
    the whole test split."""
    from hones_nn.models.loading import load_model

    assert type(load_model("tiny-qwen2.5-vl").model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    metric = _shipped_metric("tiny-qwen2.5-vl", task)
    assert metric >= QWEN_TARGETS[task], f"{task}: {metric:.4f} < {QWEN_TARGETS[task]}"


# The 16k models on synthetic-v2 (issue 17): the issue asks every task into [0.6, 0.95]. The
# shipped weights measure (whole test split) tiny-llava-16k: VQA 0.780, OCR 0.919, caption
# 0.747, retrieval 0.680; tiny-llava-16k-sparse: VQA 0.784, OCR 0.916, caption 0.779,
# retrieval 0.750. Each whole-split retrieval check is 300 queries x 50 candidates (about
# 3 min on one thread), so the five-phase model's uses its first 100 queries (0.699) to keep
# the suite under 15 minutes; the sparse model, the benchmarks' model, is checked on all 300.
LLAVA_16K_BANDS = dict.fromkeys(("vqa", "ocr", "caption", "retrieval"), (0.6, 0.95))
LLAVA_16K_SAMPLE = {("tiny-llava-16k", "retrieval"): 100}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-llava-16k", "tiny-llava-16k-sparse"])
@pytest.mark.parametrize("task", ["vqa", "ocr", "caption", "retrieval"])
def test_shipped_llava_16k_is_not_saturated(model, task, benchmark_dir):
    """The 16k-neuron models, on the whole synthetic-v2 test split (their own benchmark, the
    default --data): no task saturated (room for steering), none near chance."""
    from hones_nn.models.loading import load_model

    loaded = load_model(model)
    assert loaded.benchmark == "synthetic-v2"
    assert sum(layer.mlp.down_proj.in_features for layer in loaded.model.model.language_model.layers) == 16_384
    low, high = LLAVA_16K_BANDS[task]
    metric = _shipped_metric(model, task, LLAVA_16K_SAMPLE.get((model, task)))
    assert low <= metric <= high, f"{task}: {metric:.4f} outside [{low}, {high}]"


def test_hones_runs_on_the_shipped_qwen(tmp_path, benchmark_dir):
    """The whole HONES path (V-SEAM heads, then neurons) on the trained Qwen2.5-VL, from the CLI."""
    result = CliRunner().invoke(
        cli,
        [
            "rank",
            "--task",
            "vqa",
            "--method",
            "hones",
            "--model",
            "tiny-qwen2.5-vl",
            "--limit",
            "4",
            "--out-dir",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    from hones_nn.engine.tables import read_table

    table = read_table(tmp_path / "vqa.hones.parquet")
    assert table.meta["model_id"] == "tiny-qwen2.5-vl" and table.shape == (4, 1024)
    assert np.isfinite(table.score).all() and (table.score != 0).any()
