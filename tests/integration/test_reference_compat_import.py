"""``--reference-compat`` end to end on records imported with ``data import-hones`` (images
kept as they are, as the reference reads them): for each task, ``rank --method hones`` gives
what docs/reference-code-behaviour.md implies, computed here by hand from the raw records:
the reference's instruction text, its target tokens (VQA answer, OCR text, the five
references joined by spaces with IDF over images, "Yes" without a space), non-positive
heads dropped, importance = sum_h S_h max(0, E c - E c_h) / sum_h S_h."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hones_nn.cli.main import cli
from hones_nn.data.dataset import load_split
from hones_nn.engine.tables import read_table
from tests.integration.test_hones_engine import (
    crafted_head_table,
    hand_contributions,
    hand_importance,
    hand_target_ids,
    hand_top_heads,
    hand_u,
    runner_for,
)


def _records_file() -> Path:
    env = os.environ.get("HONES_SHARED")
    shared = Path(env) if env else Path(__file__).resolve().parents[3] / "shared"
    return shared / "data" / "hones_coco_dev_split.json"


REFERENCE_TEXT = {
    "vqa": "Question: {question}\nAnswer the question with a short phrase.",
    "ocr": "Transcribe the text inside the blue box.\nOutput text only.",
    "caption": "Describe the image in one sentence.",
    "retrieval": "Candidate: {candidate}\nDoes the candidate correctly describe the image?\nAnswer exactly Yes or No.",
}
N = 12  # the fewest images that mine 49 retrieval negatives


@pytest.fixture(scope="module")
def imported(tmp_path_factory, embedded):
    path = _records_file()
    if not path.is_file():
        pytest.skip(f"the HONES records file {path} is absent (set HONES_SHARED)")
    # the first N records whose VQA answer and OCR text the shipped model's small vocabulary
    # can spell (a target of unknown tokens only has no direction: the reference would fail too)
    tokenizer = embedded.processor.tokenizer
    records = [
        copy.deepcopy(r)
        for r in json.loads(path.read_text())["data"]
        if hand_target_ids(tokenizer, r["vqa"]["answer"].strip())
        and hand_target_ids(tokenizer, r["ocr"]["text"].strip())
    ][:N]
    assert len(records) == N
    root = tmp_path_factory.mktemp("compat_import")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for record in records:  # noise stand-ins (not COCO images) of each record's size
        info = record["image_info"]
        pixels = rng.integers(0, 256, (info["height"], info["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / info["file_name"], format="PNG")
    (root / "records.json").write_text(json.dumps({"data": records}))
    out = root / "bench"
    result = CliRunner().invoke(
        cli,
        [
            "data", "import-hones", "--records", str(root / "records.json"), "--images", str(images),
            "--out-dir", str(out), "--split", "discovery", "--no-draw-ocr-box", "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    by_id = {str(r["image_id"]): r for r in records}
    return out, by_id, images


def test_images_are_kept_as_they_are(imported):
    out, by_id, images = imported
    for row in load_split(out, "discovery"):
        record = by_id[str(row["image_id"])]
        source = np.asarray(Image.open(images / record["image_info"]["file_name"]).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(row["image"].convert("RGB")), source)


@pytest.mark.parametrize("task", ["vqa", "ocr", "caption", "retrieval"])
def test_compat_hones_on_imported_records_by_hand(embedded, embedded_engine, imported, tmp_path, task):
    out, by_id, _ = imported
    entries = {(2, 5): 0.5, (0, 2): 0.3, (3, 1): 0.1, (1, 4): 2.2e-16, (1, 6): -0.2}
    heads_path = crafted_head_table(tmp_path / f"{task}.heads.parquet", task, "tiny-llava", (4, 8), entries)
    runner = runner_for(embedded, embedded_engine, tmp_path, limit=3, reference_compat=True, data=str(out))
    table = runner.rank(task, "hones", heads=heads_path, top_heads=5)
    heads, weights = hand_top_heads(read_table(heads_path).matrix(), 5)
    assert heads == [(2, 5), (0, 2), (3, 1)]  # the noise and the negative head never run
    assert [tuple(h) for h in table.meta["heads"]] == heads

    td = runner.context(task, {}).td
    rows = load_split(out, "discovery")
    tokenizer = embedded.processor.tokenizer
    if task == "caption":  # IDF over images: df = images whose references hold the token
        docs = [
            {t for c in by_id[str(item.item_id)]["captions"] for t in hand_target_ids(tokenizer, c["caption"].strip())}
            for item in td.items
        ]
    u = []
    for item in td.items:
        record = by_id[str(item.item_id)]
        prompt = item.prompts[item.data["positive_index"]] if task == "retrieval" else item.prompts[0]
        if task == "retrieval":
            candidate = rows[item.row]["retrieval"]["candidates"][item.data["positive_index"]]
            assert prompt.user_text == REFERENCE_TEXT[task].format(candidate=candidate)
            ids, w = hand_target_ids(tokenizer, "Yes")[:1], None
        elif task == "vqa":
            assert prompt.user_text == REFERENCE_TEXT[task].format(question=record["vqa"]["question"].strip())
            ids, w = hand_target_ids(tokenizer, record["vqa"]["answer"].strip()), None
        elif task == "ocr":
            assert prompt.user_text == REFERENCE_TEXT[task]
            ids, w = hand_target_ids(tokenizer, record["ocr"]["text"].strip()), None
        else:
            assert prompt.user_text == REFERENCE_TEXT[task]
            refs = [c["caption"].strip() for c in record["captions"] if c["caption"].strip()][:5]
            ids = hand_target_ids(tokenizer, " ".join(refs))
            n = len(docs)
            w = [math.log((n + 1) / (sum(t in d for d in docs) + 1)) + 1 for t in ids]
        u.append(hand_u(embedded, ids, w))
    c = hand_contributions(embedded, td, [None, *heads], torch.stack(u), compat=True)
    want = hand_importance(c, heads, weights, compat=True)
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(table.matrix(), want, rtol=1e-4, atol=1e-5 * scale)
