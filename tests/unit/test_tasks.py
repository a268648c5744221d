"""Tasks: items, utilities, bad input (`hones-nn evaluate` is in tests/integration/test_evaluate.py)."""

from __future__ import annotations

import shutil

import pytest

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
        all_special_ids = (0,)
        unk_token_id = 1

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [7, 8 if "Yes" in text else 9]}  # " Yes" and " No" both start with id 7

    with pytest.raises(ValueError, match="degenerate"):
        decision_token_ids(SplitsSpace())
