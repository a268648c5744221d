"""Real-data importers: the HONES unified records (on the shipped dev JSON) and the OOD loaders.

The HONES test reads the real records file from the shared folder but never the COCO
images: ``standin_images`` are solid-colour images of each record's size, written under
the record's file name. They are stand-ins for the layout, not COCO images.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hones_nn.data.dataset import load_split, read_manifest
from hones_nn.data.hones_records import (
    OCR_BOX_COLOR,
    BadRecordError,
    box_line_width,
    caption_content_keys,
    import_hones,
    ocr_box_pixels,
    partition,
)
from hones_nn.data.ood import load_flickr30k, load_gqa, load_textvqa

N_RECORDS = 60


def _shared_dir() -> Path:
    env = os.environ.get("HONES_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared"


HONES_JSON = _shared_dir() / "data" / "hones_coco_dev_split.json"
needs_hones_json = pytest.mark.skipif(
    not HONES_JSON.is_file(),
    reason=f"the HONES records file {HONES_JSON} is absent (set HONES_SHARED to the shared folder holding data/)",
)


def _solid(path: Path, size, color) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")


def _decode(row_image) -> np.ndarray:
    return np.asarray(row_image.convert("RGB"))


# ---------------------------------------------------------------- HONES records


@pytest.fixture(scope="module")
def first_records():
    if not HONES_JSON.is_file():
        pytest.skip(f"the HONES records file {HONES_JSON} is absent (set HONES_SHARED)")
    return json.loads(HONES_JSON.read_text())["data"][:N_RECORDS]


@pytest.fixture(scope="module")
def standin_images(tmp_path_factory, first_records):
    """Solid-colour stand-ins (NOT COCO images) of each record's size, under its file name."""
    folder = tmp_path_factory.mktemp("standin_images")
    for i, record in enumerate(first_records):
        info = record["image_info"]
        _solid(folder / info["file_name"], (info["width"], info["height"]), (60 + 2 * i, 140, 90))
    return folder


@pytest.fixture(scope="module")
def hones_dev(tmp_path_factory, standin_images):
    out = tmp_path_factory.mktemp("hones_dev")
    report = import_hones(HONES_JSON, standin_images, out, limit=N_RECORDS, progress=False)
    return report, out


@needs_hones_json
def test_import_hones_counts_and_manifest(hones_dev, first_records):
    report, out = hones_dev
    assert report["splits"] == {"dev": N_RECORDS}
    assert report["n_written"] == N_RECORDS and report["n_skipped"] == 0 and report["skipped_ids"] == []
    manifest = read_manifest(out)
    assert manifest["source"] == "hones-coco" and manifest["splits"] == {"dev": N_RECORDS}
    ds = load_split(out, "dev")
    assert len(ds) == N_RECORDS
    assert ds["image_id"] == [str(r["image_id"]) for r in first_records]
    row, record = ds[0], first_records[0]
    assert row["vqa"]["answer"] == record["vqa"]["answer"]
    assert row["vqa"]["all_answers"] == record["vqa"]["all_answers"]
    assert row["ocr"]["text"] == record["ocr"]["text"]
    assert row["captions"] == [c["caption"].strip() for c in record["captions"]][:5]
    assert row["ocr"]["mask"] is not None  # the COCO-Text polygon, rasterised


@needs_hones_json
def test_blue_box_at_bbox_and_size_unchanged(hones_dev, first_records, standin_images):
    _, out = hones_dev
    ds = load_split(out, "dev")
    for row, record in zip(ds, first_records):
        info = record["image_info"]
        pixels = _decode(row["image"])
        source = np.asarray(Image.open(standin_images / info["file_name"]).convert("RGB"))
        assert pixels.shape == source.shape == (info["height"], info["width"], 3)
        x0, y0, x1, y1 = ocr_box_pixels(record["ocr"]["bbox"], info["width"], info["height"])
        lw = box_line_width(info["width"], info["height"])
        blue = np.all(pixels == OCR_BOX_COLOR, axis=-1)
        sides = []
        if y0 - lw >= 0:
            sides.append(blue[y0 - lw : y0, x0 : x1 + 1])  # the band just above the box
        if y1 + lw < info["height"]:
            sides.append(blue[y1 + 1 : y1 + 1 + lw, x0 : x1 + 1])  # just below
        if x0 - lw >= 0:
            sides.append(blue[y0 : y1 + 1, x0 - lw : x0])  # just left
        assert sides and all(side.all() for side in sides), row["image_id"]
        # the text region itself is untouched, and so is everything away from the box
        assert np.array_equal(pixels[y0 : y1 + 1, x0 : x1 + 1], source[y0 : y1 + 1, x0 : x1 + 1])
        assert blue.sum() <= 2 * lw * ((x1 - x0 + 1) + (y1 - y0 + 1) + 4 * lw)
        assert np.array_equal(pixels[~blue], source[~blue])


@needs_hones_json
def test_retrieval_candidates_are_mined(hones_dev):
    _, out = hones_dev
    for row in load_split(out, "dev"):
        candidates = row["retrieval"]["candidates"]
        own = set(row["captions"])
        assert len(candidates) == 50 and len(set(candidates)) == 50
        assert candidates[row["retrieval"]["positive_index"]] in own
        assert sum(c in own for c in candidates) == 1  # no negative is one of the image's captions


@needs_hones_json
def test_opens_with_plain_load_dataset(hones_dev, tmp_path):
    from datasets import load_dataset

    _, out = hones_dev
    loaded = load_dataset("parquet", data_dir=str(out / "data"), cache_dir=str(tmp_path / "hf"))
    (split,) = loaded.values()
    assert len(split) == N_RECORDS
    assert sorted(split["image_id"]) == sorted(load_split(out, "dev")["image_id"])
    assert split[0]["image"].size == load_split(out, "dev")[0]["image"].size
    assert len(split[0]["retrieval"]["candidates"]) == 50


@needs_hones_json
def test_split_sizes_partition_image_disjointly(standin_images, tmp_path):
    report = import_hones(
        HONES_JSON, standin_images, tmp_path / "b", split_sizes={"dev": 25, "test": 30}, limit=N_RECORDS, progress=False
    )
    assert report["splits"] == {"dev": 25, "test": 30} and report["n_unused"] == 5
    dev, test = load_split(tmp_path / "b", "dev"), load_split(tmp_path / "b", "test")
    assert not set(dev["image_id"]) & set(test["image_id"])
    assert set(dev["split"]) == {"dev"} and set(test["split"]) == {"test"}
    rows = [{"image_id": str(i)} for i in range(20)]
    assert partition(rows, "dev", {"dev": 5, "test": 15}, 1) == partition(rows, "dev", {"dev": 5, "test": 15}, 1)
    assert partition(rows, "dev", {"dev": 5, "test": 15}, 1) != partition(rows, "dev", {"dev": 5, "test": 15}, 2)
    with pytest.raises(ValueError, match="only 20 usable"):
        partition(rows, "dev", {"dev": 15, "test": 15}, 1)


def _write_records(path: Path, records) -> Path:
    path.write_text(json.dumps({"data": records}))
    return path


def _mutations(records, images_dir: Path):
    """(reason, mutated record) pairs, one per kind of bad input."""
    corrupt = images_dir / "COCO_train2014_corrupt_standin.jpg"
    corrupt.write_bytes(b"this is not an image")
    out = []

    def mutate(reason, index, change):
        record = copy.deepcopy(records[index])
        change(record)
        out.append((reason, record))

    mutate("missing_image", 5, lambda r: r["image_info"].update(file_name="COCO_train2014_000000000000.jpg"))
    mutate("corrupt_image", 6, lambda r: r["image_info"].update(file_name=corrupt.name))
    mutate("empty_answer", 7, lambda r: r["vqa"].update(answer="  "))
    mutate("missing_field", 8, lambda r: r.pop("ocr"))
    mutate("empty_ocr_text", 9, lambda r: r["ocr"].update(text=""))
    mutate("size_mismatch", 10, lambda r: r["image_info"].update(width=r["image_info"]["width"] + 1))
    mutate("too_few_captions", 11, lambda r: r.update(captions=r["captions"][:3]))
    return out


@needs_hones_json
def test_missing_image_names_image_id_and_path(first_records, standin_images, tmp_path):
    record = copy.deepcopy(first_records[3])
    record["image_info"]["file_name"] = "COCO_train2014_000000000000.jpg"
    path = _write_records(tmp_path / "r.json", [record])
    with pytest.raises(BadRecordError) as caught:
        import_hones(path, standin_images, tmp_path / "out", progress=False)
    message = str(caught.value)
    assert f"image_id={record['image_id']}" in message
    assert str(standin_images / "COCO_train2014_000000000000.jpg") in message
    assert "images_dir" in message and "skip_bad" in message
    assert caught.value.reason == "missing_image"


@needs_hones_json
def test_each_bad_input_is_a_clear_error(first_records, standin_images, tmp_path):
    for reason, record in _mutations(first_records, standin_images):
        path = _write_records(tmp_path / f"{reason}.json", [record])
        with pytest.raises(BadRecordError) as caught:
            import_hones(path, standin_images, tmp_path / reason, progress=False)
        assert caught.value.reason == reason
        assert f"image_id={record['image_id']}" in str(caught.value) and "Fix:" in str(caught.value)


@needs_hones_json
def test_skip_bad_counts_and_lists_skipped(first_records, standin_images, tmp_path):
    records = copy.deepcopy(first_records)
    mutations = _mutations(records, standin_images)
    for (reason, record), index in zip(mutations, range(5, 12)):
        records[index] = record
    records.append(copy.deepcopy(records[0]))  # a duplicate image
    path = _write_records(tmp_path / "r.json", records)
    with pytest.raises(BadRecordError):
        import_hones(path, standin_images, tmp_path / "strict", progress=False)
    report = import_hones(path, standin_images, tmp_path / "lenient", skip_bad=True, progress=False)
    expected = {reason: 1 for reason, _ in mutations} | {"duplicate_image_id": 1}
    assert report["skipped_by_reason"] == expected
    assert report["n_skipped"] == len(expected) and report["n_written"] == N_RECORDS - len(mutations)
    assert sorted(report["skipped_ids"]) == sorted(
        [str(r["image_id"]) for _, r in mutations] + [str(records[0]["image_id"])]
    )
    assert len(load_split(tmp_path / "lenient", "dev")) == N_RECORDS - len(mutations)
    assert read_manifest(tmp_path / "lenient")["n_skipped"] == len(expected)


def test_caption_content_keys_group_shared_captions():
    keys = caption_content_keys([["A dog.", "b"], ["c", "a dog"], ["d", "e"], ["e!", "f"], ["g", "h"]])
    assert keys[0] == keys[1] and keys[2] == keys[3]
    assert len(set(keys)) == 3


# ---------------------------------------------------------------- GQA


@pytest.fixture
def gqa(tmp_path):
    images = tmp_path / "images"
    questions = {}
    for i in range(14):
        _solid(images / f"n{i:05d}.jpg", (40, 30), (10 * i, 50, 200))
        questions[f"{i}01"] = {
            "imageId": f"n{i:05d}",
            "question": f"Is the thing {i} red?",
            "answer": "yes",
            "fullAnswer": "Yes, it is.",
            "types": {"structural": "verify", "semantic": "attr"},
        }
        questions[f"{i}02"] = {
            "imageId": f"n{i:05d}",
            "question": f"What is left of thing {i}?",
            "answer": "car",
            "fullAnswer": "It is a car.",
            "types": {"structural": "query", "semantic": "rel"},
        }
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps(questions))
    return path, images, questions


def test_gqa_rows(gqa, tmp_path):
    path, images, _ = gqa
    report = load_gqa(path, images, tmp_path / "out", progress=False)
    assert report["splits"] == {"test": 14} and report["n_skipped"] == 0
    ds = load_split(tmp_path / "out", "test")
    assert read_manifest(tmp_path / "out")["source"] == "gqa"
    assert sorted(ds["image_id"]) == [f"n{i:05d}" for i in range(14)]
    for row in ds:
        vqa = row["vqa"]
        assert vqa["all_answers"] == [vqa["answer"]] * 10
        assert (vqa["question_type"], vqa["answer_type"]) in {("verify", "yes/no"), ("query", "other")}
        assert row["image"].size == (40, 30) and row["captions"] == [] and row["retrieval"]["positive_index"] == -1
    every = load_gqa(path, images, tmp_path / "all", questions_per_image=None, progress=False)
    assert every["splits"] == {"test": 28}
    assert all("#" in i for i in load_split(tmp_path / "all", "test")["image_id"])


def test_gqa_bad_input(gqa, tmp_path):
    path, images, questions = gqa
    (images / "n00003.jpg").unlink()
    questions["1301"]["answer"] = ""
    questions["1302"]["answer"] = ""
    path.write_text(json.dumps(questions))
    with pytest.raises(BadRecordError, match=r"image_id=n00003.*n00003\.jpg") as caught:
        load_gqa(path, images, tmp_path / "out", progress=False)
    assert caught.value.reason == "missing_image"
    report = load_gqa(path, images, tmp_path / "out", skip_bad=True, progress=False)
    assert report["skipped_by_reason"] == {"missing_image": 1, "empty_answer": 1}
    assert sorted(report["skipped_ids"]) == ["n00003", "n00013"] and report["splits"] == {"test": 12}


# ---------------------------------------------------------------- TextVQA


@pytest.fixture
def textvqa(tmp_path):
    images = tmp_path / "train_images"
    data = []
    for i in range(12):
        image_id = f"{i:016x}"
        _solid(images / f"{image_id}.jpg", (32, 48), (200, 10 * i, 30))
        answers = ["coca cola"] * 6 + ["coke"] * 3 + ["cola"] if i % 2 else ["12"] * 4 + ["twelve"] * 4 + ["2"] * 2
        data.append(
            {
                "question_id": 100 + i,
                "image_id": image_id,
                "question": "what does the sign say?",
                "answers": answers,
                "set_name": "val",
            }
        )
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps({"dataset_name": "textvqa", "data": data}))
    return path, images, data


def test_textvqa_rows(textvqa, tmp_path):
    path, images, _ = textvqa
    report = load_textvqa(path, images, tmp_path / "out", progress=False)
    assert report["splits"] == {"test": 12}
    ds = load_split(tmp_path / "out", "test")
    assert read_manifest(tmp_path / "out")["source"] == "textvqa"
    for row in ds:
        odd = int(row["image_id"], 16) % 2
        assert row["vqa"]["answer"] == row["ocr"]["text"] == ("coca cola" if odd else "12")  # ties: first given
        assert row["vqa"]["answer_type"] == ("other" if odd else "number")
        assert len(row["vqa"]["all_answers"]) == 10
        assert row["ocr"]["bbox"] == [] and row["ocr"]["mask"] is None


def test_textvqa_bad_input(textvqa, tmp_path):
    path, images, data = textvqa
    del data[2]["answers"]  # as in the TextVQA test file
    (images / f"{data[4]['image_id']}.jpg").write_bytes(b"\x89PNG broken")
    path.write_text(json.dumps({"data": data}))
    with pytest.raises(BadRecordError, match="test answers are not public") as caught:
        load_textvqa(path, images, tmp_path / "out", progress=False)
    assert caught.value.image_id == data[2]["image_id"] and data[2]["image_id"] in str(caught.value)
    report = load_textvqa(path, images, tmp_path / "out", skip_bad=True, progress=False)
    assert report["skipped_by_reason"] == {"corrupt_image": 1, "missing_field": 1}
    assert report["splits"] == {"test": 10}


# ---------------------------------------------------------------- Flickr30k

SUBJECTS = [
    "man",
    "woman",
    "dog",
    "child",
    "cyclist",
    "surfer",
    "chef",
    "girl",
    "boy",
    "horse",
    "band",
    "skier",
    "cat",
    "runner",
]


@pytest.fixture
def flickr(tmp_path):
    images = tmp_path / "flickr30k-images"
    entries = []
    for i, subject in enumerate(SUBJECTS):
        name = f"{1000 + i}.jpg"
        _solid(images / name, (50, 40), (i * 15, 200, 100))
        sentences = [
            {"raw": f"A {subject} {verb} in the park ."} for verb in ("walks", "stands", "sits", "waits", "plays")
        ]
        entries.append({"filename": name, "imgid": i, "split": "test" if i < 12 else "train", "sentences": sentences})
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return path, images, entries


def test_flickr30k_rows(flickr, tmp_path):
    path, images, entries = flickr
    report = load_flickr30k(path, images, tmp_path / "out", progress=False)
    assert report["splits"] == {"test": 12}  # the two Karpathy-train images are left out
    ds = load_split(tmp_path / "out", "test")
    assert read_manifest(tmp_path / "out")["source"] == "flickr30k"
    for row in ds:
        own = set(row["captions"])
        candidates = row["retrieval"]["candidates"]
        assert len(row["captions"]) == 5 and len(candidates) == 50
        assert candidates[row["retrieval"]["positive_index"]] in own
        assert sum(c in own for c in candidates) == 1
        assert row["vqa"]["question"] == "" and row["ocr"]["text"] == ""


def test_flickr30k_bad_input(flickr, tmp_path):
    path, images, entries = flickr
    entries[0]["sentences"] = entries[0]["sentences"][:2]
    missing = [{"raw": f"A missing photo {k} ."} for k in range(5)]
    entries.append({"filename": "1999.jpg", "split": "test", "sentences": missing})
    path.write_text(json.dumps({"images": entries}))
    with pytest.raises(BadRecordError, match=r"image_id=1000.*needs 5") as caught:
        load_flickr30k(path, images, tmp_path / "out", progress=False)
    assert caught.value.reason == "too_few_captions"
    report = load_flickr30k(path, images, tmp_path / "out", skip_bad=True, progress=False)
    assert report["skipped_by_reason"] == {"missing_image": 1, "too_few_captions": 1}
    assert sorted(report["skipped_ids"]) == ["1000", "1999"] and report["splits"] == {"test": 11}
    entries_small = [e for e in entries if e["split"] == "test"][1:6]
    path.write_text(json.dumps({"images": entries_small}))
    with pytest.raises(ValueError, match="too small to mine retrieval"):
        load_flickr30k(path, images, tmp_path / "small", progress=False)


def _has_box_colour(image) -> bool:
    return bool((_decode(image) == np.array(OCR_BOX_COLOR, dtype=np.uint8)).all(-1).any())


@needs_hones_json
def test_ocr_box_drawn_by_default_kept_out_on_request(first_records, standin_images, tmp_path):
    n = 12  # the fewest images that still mine 49 retrieval negatives
    records = copy.deepcopy(first_records[:n])
    path = _write_records(tmp_path / "r.json", records)
    drawn = import_hones(path, standin_images, tmp_path / "drawn", progress=False)
    assert drawn["ocr_box_drawn"] == n
    assert all(_has_box_colour(row["image"]) for row in load_split(tmp_path / "drawn", "dev"))

    plain = import_hones(path, standin_images, tmp_path / "plain", progress=False, draw_box=False)
    assert plain["ocr_box_drawn"] == 0
    for row in load_split(tmp_path / "plain", "dev"):
        record = next(r for r in records if str(r["image_id"]) == str(row["image_id"]))
        source = Image.open(standin_images / record["image_info"]["file_name"])
        np.testing.assert_array_equal(_decode(row["image"]), _decode(source))
    assert read_manifest(tmp_path / "plain")["ocr_box"]["draw_box"] is False

    # the records file says the box is already in the pixels: one record, then the whole file
    records[1]["ocr"]["box_drawn"] = True
    marked = import_hones(_write_records(tmp_path / "m.json", records), standin_images, tmp_path / "m", progress=False)
    assert marked["ocr_box_drawn"] == n - 1
    whole = tmp_path / "w.json"
    whole.write_text(json.dumps({"data": first_records[:n], "ocr_box_drawn": True}))
    assert import_hones(whole, standin_images, tmp_path / "w", progress=False)["ocr_box_drawn"] == 0


@needs_hones_json
def test_records_carrying_only_the_studied_tasks(first_records, standin_images, tmp_path):
    """Issue 15: a VQA-only record set imports with --tasks vqa; missing tasks are counted,
    and running a task the records lack names the item."""
    records = copy.deepcopy(first_records[:6])
    for record in records:
        del record["ocr"], record["captions"]
    path = _write_records(tmp_path / "vqa-only.json", records)
    with pytest.raises(BadRecordError, match=r"field captions is missing"):  # all four tasks by default
        import_hones(path, standin_images, tmp_path / "strict", progress=False)
    report = import_hones(path, standin_images, tmp_path / "vqa", tasks=["vqa"], progress=False)
    assert report["n_written"] == 6 and report["n_skipped"] == 0
    assert report["missing_task_fields"] == {"caption": 6, "ocr": 6}
    assert read_manifest(tmp_path / "vqa")["tasks"] == ["vqa"]
    split = load_split(tmp_path / "vqa", "dev")
    assert [r["vqa"]["question"] for r in split] == [r["vqa"]["question"] for r in records]
    # the image is the record's own, with no OCR box drawn
    first = records[0]["image_info"]
    assert _decode(split[0]["image"]).shape == (first["height"], first["width"], 3)
    assert (_decode(split[0]["image"]) == (60, 140, 90)).all()

    from hones_nn.tasks import get_task

    items, _ = get_task("vqa").items(split)
    assert len(items) == 6
    with pytest.raises(ValueError, match=r"OCR item .* (empty|no)"):
        get_task("ocr").items(split)
    with pytest.raises(ValueError, match=r"--tasks: unknown task\(s\) \['vqqa'\]"):
        import_hones(path, standin_images, tmp_path / "x", tasks=["vqqa"], progress=False)
