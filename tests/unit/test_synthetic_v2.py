"""The harder synthetic benchmark (synthetic-v2): determinism, v1 untouched, disjoint splits,
records every task accepts, and answers checked against the rendered pixels."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from hones_nn.data import synthetic_v2 as v2
from hones_nn.data.dataset import SPLITS, load_split, read_manifest
from hones_nn.data.font import LETTERS, glyph
from hones_nn.data.synthetic import BOX_BLUE, TEXT_WHITE, build_synthetic_benchmark, in_train_space


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn2")
    return build_synthetic_benchmark(
        out / "a", seed=3, n_images=120, n_train=20, progress=False, generator="synthetic-v2"
    )


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_the_manifest_names_v2(bench, tmp_path):
    again = build_synthetic_benchmark(
        tmp_path / "b", seed=3, n_images=120, n_train=20, progress=False, generator="synthetic-v2"
    )
    assert _files(bench) == _files(again)
    manifest = read_manifest(bench)
    assert manifest["generator"] == "synthetic-v2" and manifest["image_size"] == 64
    assert manifest["generator_revision"] == v2.GENERATOR_REVISION == 2
    assert manifest["splits"] == {"train": 20, "discovery": 70, "dev": 20, "test": 30}


def test_v1_stays_the_default_and_differs_from_v2(tmp_path):
    default = build_synthetic_benchmark(tmp_path / "d", seed=3, n_images=120, n_train=0, progress=False)
    named = build_synthetic_benchmark(
        tmp_path / "n", seed=3, n_images=120, n_train=0, progress=False, generator="synthetic-v1"
    )
    assert _files(default) == _files(named)
    assert read_manifest(default)["generator"] == "synthetic-v1" and read_manifest(default)["image_size"] == 48
    with pytest.raises(ValueError, match="--generator 'synthetic-v9'.*synthetic-v2"):
        build_synthetic_benchmark(tmp_path / "x", n_images=120, progress=False, generator="synthetic-v9")


def test_splits_are_image_disjoint_and_train_is_train_space(bench):
    import datasets

    seen: dict[bytes, str] = {}
    for split in SPLITS:
        ds = load_split(bench, split).cast_column("image", datasets.Image(decode=False))
        for image_id, image in zip(ds["image_id"], ds["image"]):
            assert image["bytes"] not in seen, f"{image_id} repeats {seen.get(image['bytes'])}"
            seen[image["bytes"]] = image_id
    scenes = v2.SyntheticWorldV2(0).scenes({"test": 40, "dev": 10, "discovery": 40, "train": 60})
    assert all(not in_train_space(s.signature) for split in ("test", "dev", "discovery") for s, _ in scenes[split])
    assert all(in_train_space(s.signature) for s, _ in scenes["train"])
    signatures = [s.signature for split in scenes.values() for s, _ in split]
    assert len(signatures) == len(set(signatures))


@pytest.mark.parametrize("task_name", ["vqa", "ocr", "caption", "retrieval"])
def test_every_record_makes_a_valid_item_of_every_task(bench, task_name):
    from hones_nn.tasks.base import ImageSource, get_task

    for family in ("llava", "qwen"):
        ds = load_split(bench, "test")
        items, skipped = get_task(task_name, family=family).items(ds, images=ImageSource(ds))
        assert len(items) == len(ds) and not skipped


def test_the_v2_tokenizer_spells_every_label_and_keeps_v1_ids():
    from hones_nn.embedded.tokenizer import build_tokenizer, vocabulary

    v1_vocab, v2_vocab = vocabulary(), vocabulary("synthetic-v2")
    assert v2_vocab[: len(v1_vocab)] == v1_vocab and len(v2_vocab) > len(v1_vocab)
    tokenizer = build_tokenizer("synthetic-v2")
    unk = tokenizer.unk_token_id
    rng = random.Random(0)
    for _ in range(60):
        scene = v2.sample_scene(rng)
        qa = v2.vqa_for(scene, rng)
        for text in [qa["question"], *qa["all_answers"], *v2.captions_for(scene), scene.word]:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert unk not in ids, text
        assert tokenizer.decode(tokenizer(scene.word, add_special_tokens=False)["input_ids"]) == scene.word


# ---------------------------------------------------------------- answers against the pixels


def _color_cells(pixels: np.ndarray) -> dict[tuple[int, int], set[str]]:
    """(column, row) -> the palette colours seen in that shape cell (>= 4 pixels within the
    jitter of a palette colour; the background never comes near one)."""
    out: dict[tuple[int, int], set[str]] = {}
    for row in range(v2.GRID_ROWS):
        for col in range(v2.GRID_COLUMNS):
            cell = pixels[row * 16 : row * 16 + 16, col * 16 : col * 16 + 16].astype(int)
            for name, rgb in v2.COLORS.items():
                close = (np.abs(cell - np.array(rgb)) <= v2.COLOR_JITTER).all(axis=-1)
                if close.sum() >= 4:
                    out.setdefault((col, row), set()).add(name)
    return out


def _centre(pixels: np.ndarray, color: str) -> tuple[float, float]:
    close = (np.abs(pixels[:48].astype(int) - np.array(v2.COLORS[color])) <= v2.COLOR_JITTER).all(axis=-1)
    ys, xs = np.nonzero(close)
    return float(xs.mean()), float(ys.mean())


def _scenes(n: int, seed: int = 7):
    rng = random.Random(seed)
    return [v2.sample_scene(rng) for _ in range(n)]


def test_counts_match_the_coloured_cells_of_the_image():
    rng = random.Random(1)
    checked = {"count": 0, "count_color": 0}
    answers = set()
    for scene in _scenes(150):
        cells = _color_cells(v2.render(scene).pixels)
        assert all(len(colors) == 1 for colors in cells.values())
        for qtype in checked:
            qa = v2.vqa_for(scene, rng, question_type=qtype)
            if qtype == "count":
                expected = len(cells)
            else:
                color = qa["question"].split()[2]
                expected = sum(color in colors for colors in cells.values())
            assert qa["answer"] == str(expected), (qa, cells)
            checked[qtype] += 1
            answers.add(expected)
    assert max(answers) >= 5  # counting goes beyond v1's three


def test_relations_match_the_positions_in_the_image():
    rng = random.Random(2)
    n_checked = {"left_of": 0, "above": 0}
    for scene in _scenes(300):
        pixels = v2.render(scene).pixels
        colors = [s.color for s in scene.shapes]
        for qtype in n_checked:
            qa = v2.vqa_for(scene, rng, question_type=qtype)
            if qa["question_type"] != qtype:
                continue  # no two shapes differ along this axis: it fell back to a size question
            words = qa["question"].rstrip("?").split()  # Is the C K left of the C K / Is the C K above the C K
            a_color, b_color = words[2], words[-2]
            if colors.count(a_color) != 1 or colors.count(b_color) != 1:
                continue  # a colour names two shapes: its pixels do not locate one of them
            (ax, ay), (bx, by) = _centre(pixels, a_color), _centre(pixels, b_color)
            truth = ax < bx if qtype == "left_of" else ay < by
            assert qa["answer"] == ("yes" if truth else "no"), qa
            n_checked[qtype] += 1
    assert min(n_checked.values()) >= 20, n_checked


def _read_box(pixels: np.ndarray) -> str:
    """The letters inside the blue outline, read back by matching the font's bitmaps."""
    blue = (pixels == np.array(BOX_BLUE)).all(axis=-1)
    ys, xs = np.nonzero(blue)
    x0, x1, y0 = xs.min() + 1, xs.max(), ys.min() + 1  # the inside of the outline
    white = (pixels == np.array(TEXT_WHITE)).all(axis=-1)
    letters = []
    for left in range(x0, x1, 8):
        patch = white[y0 : y0 + 8, left : left + 8]
        matches = [c for c in LETTERS if any((patch[:7, dx : dx + 5] == glyph(c)).all() for dx in range(4))]
        assert len(matches) == 1, matches
        letters.append(matches[0])
    return "".join(letters)


def test_the_boxed_word_reads_back_and_the_distractor_lies_outside_the_box(monkeypatch):
    monkeypatch.setattr(v2, "WORN_DROP", 0.0)  # clean print: the font's bitmaps match exactly
    monkeypatch.setattr(v2, "WORN_SPECKLE", 0.0)
    n_distractors = 0
    for scene in _scenes(60, seed=3):
        rendered = v2.render(scene)
        assert _read_box(rendered.pixels) == scene.word
        white = (rendered.pixels == np.array(TEXT_WHITE)).all(axis=-1)
        outside = white & ~rendered.text_mask
        assert outside.any() == bool(scene.distractor)
        n_distractors += bool(scene.distractor)
        x, y, w, h = rendered.text_box
        assert x >= 0 and x + w <= v2.IMAGE_SIZE and y + h <= v2.IMAGE_SIZE
    assert 0 < n_distractors < 60


def _letter_log_likelihoods(cell: np.ndarray) -> np.ndarray:
    """log P(white pixels of a 7 x 5 letter cell | letter) under the worn-print model."""
    glyphs = np.stack([glyph(c) for c in LETTERS]).astype(bool)
    on = np.where(glyphs, np.log(1 - v2.WORN_DROP), np.log(v2.WORN_SPECKLE))
    off = np.where(glyphs, np.log(v2.WORN_DROP), np.log(1 - v2.WORN_SPECKLE))
    return np.where(cell[None], on, off).sum(axis=(1, 2))


def test_worn_print_leaves_an_ideal_reader_about_95_percent_of_letters():
    """Bayes decoding of the rendered boxed letters (the font and the noise model known): the
    best any model can read. It must stay below 1 (OCR cannot saturate) and well above chance."""
    right = total = 0
    for scene in _scenes(300, seed=11):
        pixels = v2.render(scene).pixels
        white = (pixels == np.array(TEXT_WHITE)).all(axis=-1)
        top = v2.TEXT_PATCH_ROW * v2.PATCH_SIZE + (v2.PATCH_SIZE - 7) // 2
        for k, letter in enumerate(scene.word):
            left = (scene.box_column + k) * v2.PATCH_SIZE + (v2.PATCH_SIZE - 5) // 2
            best = LETTERS[int(np.argmax(_letter_log_likelihoods(white[top : top + 7, left : left + 5])))]
            right += best == letter
            total += 1
    assert total > 1000
    assert 0.92 <= right / total <= 0.97, right / total


def test_retrieval_negatives_are_random_captions_of_other_content(bench):
    from hones_nn.data.dataset import _TfidfIndex, mine_retrieval_candidates

    rows = list(load_split(bench, "discovery"))
    captions, keys = [r["captions"] for r in rows], [r["content_key"] for r in rows]
    owners = {c: i for i, refs in enumerate(captions) for c in refs}
    mined = {
        kind: mine_retrieval_candidates(captions, keys, seed=0, n_negatives=5, negatives=kind)
        for kind in ("hard", "random")
    }
    index = _TfidfIndex([c for refs in captions for c in refs])
    row_of = {c: j for j, c in enumerate(c for refs in captions for c in refs)}
    mean_similarity = {}
    for kind, items in mined.items():
        sims = []
        for i, item in enumerate(items):
            positive = item["candidates"][item["positive_index"]]
            assert positive in captions[i]
            negatives = [c for k, c in enumerate(item["candidates"]) if k != item["positive_index"]]
            assert len(set(negatives)) == 5
            assert all(keys[owners[c]] != keys[i] for c in negatives)  # never a correct description
            similarity = index.similarities(row_of[positive])
            sims += [similarity[row_of[c]] for c in negatives]
        mean_similarity[kind] = float(np.mean(sims))
    assert mean_similarity["random"] < 0.8 * mean_similarity["hard"], mean_similarity
    assert rows[0]["retrieval"]["candidates"]  # the benchmark itself was built with v2's choice
    assert v2.RETRIEVAL_NEGATIVES == "random"
    with pytest.raises(ValueError, match="negatives='easy'"):
        mine_retrieval_candidates(captions, keys, seed=0, n_negatives=20, negatives="easy")


def test_question_types_captions_and_negatives_vary():
    rng = random.Random(4)
    scenes = _scenes(300, seed=5)
    types = {v2.vqa_for(s, rng)["question_type"] for s in scenes}
    assert types == set(v2.VQA_QUESTION_TYPES)
    structures = set()
    for scene in scenes[:50]:
        captions = v2.captions_for(scene)
        assert len(captions) == len(set(captions)) == v2.CAPTIONS_PER_IMAGE
        for shape in scene.shapes:
            assert all(shape.phrase in c for c in captions)  # every caption names every shape
        markers = ("there ", " background.", "an image of", "from left to right.", "box with text.", " image with")
        structures.update(m for c in captions for m in markers if m in c)
        other = v2.perturb_scene(scene, rng)
        assert other.content_key != scene.content_key
    assert len(structures) == 6
    assert {s.size for sc in scenes for s in sc.shapes} == set(v2.SIZES)
    assert {sc.background for sc in scenes} == set(v2.BACKGROUNDS)
    assert max(len(sc.word) for sc in scenes) == max(v2.WORD_LENGTHS)


def test_a_scene_with_one_colour_in_every_kind_still_perturbs():
    """Six shapes of one colour, one of each kind: no other kind is free for that colour, so
    a kind change must become a colour change (training crashed on such a scene at step
    2,537 of a run, the first time the generator drew one into a perturbed negative)."""
    scene = v2.sample_scene(random.Random(0))
    cells = [(i % v2.GRID_COLUMNS, i // v2.GRID_COLUMNS) for i in range(len(v2.KINDS))]
    shapes = tuple(v2.Shape(kind, "red", "small", *cell) for kind, cell in zip(v2.KINDS, cells, strict=True))
    scene = v2.Scene(shapes, scene.word, scene.box_column, scene.background, "", 0, scene.jitter)
    changed = set()
    for seed in range(200):  # every branch of perturb_scene is drawn
        other = v2.perturb_scene(scene, random.Random(seed))
        assert other.content_key != scene.content_key
        pairs = [(s.color, s.kind) for s in other.shapes]
        assert len(pairs) == len(set(pairs))  # still one shape per (colour, kind)
        changed.update(s.color for s in other.shapes)
    assert changed - {"red"}  # kind changes became colour changes


def test_images_are_64_pixels_and_open_with_pil(bench):
    ds = load_split(bench, "dev").cast_column("image", __import__("datasets").Image(decode=False))
    image = Image.open(io.BytesIO(ds[0]["image"]["bytes"]))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_no_question_type_is_answered_by_its_prior():
    """Guessing each type's most common answer stays far from the 0.6 a model must reach."""
    import collections

    rng = random.Random(6)
    answers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for scene in _scenes(1200, seed=8):
        qa = v2.vqa_for(scene, rng)
        answers[qa["question_type"]][qa["answer"]] += 1
    shares = {t: c.most_common(1)[0][1] / sum(c.values()) for t, c in answers.items()}
    assert max(shares.values()) < 0.6, shares
    majority = sum(c.most_common(1)[0][1] for c in answers.values()) / 1200
    assert majority < 0.45, majority


def test_a_correct_caption_in_one_fixed_structure_scores_above_the_band():
    """Caption BLEU-4 is limited by what a model sees, not by the five references it cannot
    predict: naming every shape right in the plainest structure ("{objects}.") scores above
    0.95 on the test split, so the issue's band [0.6, 0.95] is reachable; naming one shape
    fewer (a scene of one shape keeps it) scores far lower."""
    from hones_nn.data.synthetic import DEFAULT_N_IMAGES
    from hones_nn.tasks.metrics import corpus_bleu4

    world = v2.SyntheticWorldV2(seed=0)
    scenes = [scene for scene, _ in world.scenes(world.split_sizes(DEFAULT_N_IMAGES))["test"]]
    assert len(scenes) == 300
    references = [v2.captions_for(scene) for scene in scenes]
    plain = v2.CAPTION_TEMPLATES[0]  # "{objects}."
    correct = [plain.format(objects=v2._listing(scene.shapes)) for scene in scenes]
    one_fewer = [plain.format(objects=v2._listing(scene.shapes[:-1] or scene.shapes)) for scene in scenes]
    assert corpus_bleu4(correct, references) > 0.95
    assert corpus_bleu4(one_fewer, references) < 0.85
