"""The synthetic benchmark: determinism, masks, labels, disjoint splits, the layout."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from hones_nn.data.dataset import load_split, read_manifest
from hones_nn.data.font import LETTERS, glyph
from hones_nn.data.synthetic import (
    BOX_BLUE,
    COLORS,
    IMAGE_SIZE,
    PATCH_SIZE,
    SyntheticWorld,
    build_synthetic_benchmark,
    captions_for,
    in_train_space,
    perturb_scene,
    render,
    sample_scene,
    vqa_for,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return build_synthetic_benchmark(out / "a", seed=3, n_images=120, n_train=40, progress=False)


def _png(b):
    return np.array(Image.open(io.BytesIO(b)))


def test_same_seed_same_bytes(small, tmp_path):
    again = build_synthetic_benchmark(tmp_path / "b", seed=3, n_images=120, n_train=40, progress=False)
    for split in ("train", "discovery", "dev", "test"):
        assert (small / "data" / f"{split}-00000-of-00001.parquet").read_bytes() == (
            again / "data" / f"{split}-00000-of-00001.parquet"
        ).read_bytes()


def test_other_seed_other_images(small, tmp_path):
    other = build_synthetic_benchmark(tmp_path / "c", seed=4, n_images=120, n_train=0, progress=False)
    a = load_split(small, "test")["ocr"]
    b = load_split(other, "test")["ocr"]
    assert [x["text"] for x in a] != [x["text"] for x in b]


def test_split_ratio_and_disjoint(small):
    manifest = read_manifest(small)
    assert manifest["splits"] == {"train": 40, "discovery": 70, "dev": 20, "test": 30}
    seen = {}
    for split in manifest["splits"]:
        ds = load_split(small, split)
        for image_id, image in zip(
            ds["image_id"], ds.cast_column("image", __import__("datasets").Image(decode=False))["image"]
        ):
            key = image["bytes"]
            assert key not in seen, f"{image_id} repeats {seen.get(key)}"
            seen[key] = image_id


def test_train_scenes_never_in_eval_space():
    world = SyntheticWorld(0)
    scenes = world.scenes({"test": 50, "dev": 20, "discovery": 50, "train": 200})
    assert all(not in_train_space(s.signature) for split in ("test", "dev", "discovery") for s, _ in scenes[split])
    assert all(in_train_space(s.signature) for s, _ in scenes["train"])
    # a bigger build keeps the eval/train partition: its test scenes are still outside train space
    bigger = SyntheticWorld(0).scenes({"test": 400})
    assert all(not in_train_space(s.signature) for s, _ in bigger["test"])


def test_masks_cover_the_drawn_shapes():
    rng = random.Random(1)
    for _ in range(20):
        scene = sample_scene(rng)
        r = render(scene)
        for shape, mask in zip(scene.shapes, r.shape_masks):
            colour = np.array(COLORS[shape.color])
            pixels = r.pixels[mask].astype(int)
            assert mask.sum() > 20
            assert np.abs(pixels - colour).max() <= 12  # colour jitter bound
            assert not (r.shape_masks[0] & r.text_mask).any()
        # the blue outline is inside the text mask and nowhere else
        blue = np.all(r.pixels == np.array(BOX_BLUE), axis=-1)
        assert blue.any() and not (blue & ~r.text_mask).any()
        # each letter is drawn in its own patch of the text row
        x, y, w, h = r.text_box
        for k, letter in enumerate(scene.word):
            left = (scene.box_column + k) * PATCH_SIZE
            patch = r.pixels[4 * PATCH_SIZE : 5 * PATCH_SIZE, left : left + PATCH_SIZE]
            white = np.all(patch == 245, axis=-1)
            assert white.sum() == glyph(letter).sum()


def test_font_has_every_letter():
    assert len(LETTERS) == 26
    assert len({glyph(c).tobytes() for c in LETTERS}) == 26
    with pytest.raises(ValueError, match="A-Z"):
        glyph("a")


def test_vqa_labels_follow_the_scene():
    rng = random.Random(7)
    for _ in range(50):
        scene = sample_scene(rng)
        for qtype in ("color", "shape", "count", "existence"):
            qa = vqa_for(scene, random.Random(3), qtype)
            assert len(qa["all_answers"]) == 10
            assert qa["all_answers"].count(qa["answer"]) >= 4 or qtype == "count"
            if qtype == "count":
                assert qa["answer"] == str(len(scene.shapes))
            if qtype == "color":
                kind = qa["question"].split()[-1].rstrip("?")
                assert qa["answer"] == next(s.color for s in scene.shapes if s.kind == kind)
            if qtype == "existence":
                present = any(f"{s.color} {s.kind}" in qa["question"] for s in scene.shapes)
                assert qa["answer"] == ("yes" if present else "no")


def test_captions_are_five_paraphrases_left_to_right():
    scene = sample_scene(random.Random(11))
    caps = captions_for(scene)
    assert len(caps) == 5 and len(set(caps)) == 5
    order = [s.kind for s in sorted(scene.shapes, key=lambda s: s.column)]
    positions = [caps[0].index(kind) for kind in order]
    assert positions == sorted(positions)


def test_perturbed_scene_differs_in_content():
    rng = random.Random(5)
    for _ in range(100):
        scene = sample_scene(rng)
        assert perturb_scene(scene, rng).content_key != scene.content_key


def test_retrieval_candidates(small):
    ds = load_split(small, "test")
    for captions, retrieval, key in zip(ds["captions"], ds["retrieval"], ds["content_key"]):
        cands = retrieval["candidates"]
        assert len(cands) == 50 and len(set(cands)) == 50
        assert cands[retrieval["positive_index"]] in captions
        negatives = [c for i, c in enumerate(cands) if i != retrieval["positive_index"]]
        assert not set(negatives) & set(captions)


def test_opens_with_plain_datasets(small):
    import datasets

    loaded = datasets.load_dataset(str(small))
    assert set(loaded) == {"train", "discovery", "dev", "test"}
    row = loaded["test"][0]
    assert row["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert _png(row["objects"][0]["mask"]).shape == (IMAGE_SIZE, IMAGE_SIZE)
    assert row["ocr"]["text"].isupper()


def test_too_few_images_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="at least 12"):
        build_synthetic_benchmark(tmp_path / "x", n_images=5, progress=False)
