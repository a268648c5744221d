"""The harder synthetic benchmark (``synthetic-v2``, issue 17): same four tasks, same record
format as :mod:`hones_nn.data.synthetic` (v1, still the default), more to get wrong.

What makes it harder than v1:

* 8 colours x 6 shapes x 2 sizes ("a small pink diamond"); 1-6 shapes per image, colours
  (2-4 per scene) and kinds repeat (a scene's (colour, kind) pairs are distinct, so "the
  pink diamond" always names one shape);
* backgrounds that are not black: plain, noisy, striped or checkered dark textures;
* a word of 3-6 letters in the blue box, in worn print (glyph pixels missing, white specks:
  an ideal reader gets 94.7% of letters), and (7 images in 10) a distractor word of 2-5
  letters in the same white font outside the box, so OCR must find the box;
* VQA about colour, shape, size, counts up to six (all shapes, or shapes of one colour),
  existence (with or without size) and relations ("Is the red circle left of the cyan
  ring?", "... above ...");
* captions in eight structures (five per image, chosen per scene): object lists in
  row-major, left-to-right or shuffled order, with the count, the background or the box;
* retrieval over 1 positive and 49 random captions of other images (the paper mines hard
  negatives; revision 1 did, and a 3.7 M-parameter model ranked them at chance).

Layout of a 64 x 64 image (8-pixel patch grid, 8 x 8 patches):

* rows 0-47: three rows of four 16 x 16 cells, at most one shape per cell; a large shape
  is 12-14 pixels, a small one 7-9 pixels at a random place in its cell;
* patch row 6 (y 48-55): the word, one letter per patch, in a blue outline (1 pixel
  outside the letter patches, as in v1);
* patch row 7 (y 57-63): the distractor word, if any, one letter per patch.

Why 64 x 64 and 8-pixel patches: every letter and every quarter of a shape cell stays one
8 x 8 patch, so a LLaVA with an 8-pixel patch tower (64 image tokens) and a Qwen2.5-VL
with 4-pixel patches merged 2 x 2 (64 merged tokens) both see one letter per image token
(v1's tiny Qwen merged 2 x 2 letters into one token and never learned to read); six
letters plus the outline fit in one patch row, and four cell columns make "left of" and
counting to six possible with room to spare.

Deterministic from a seed (pure Python ``random`` and numpy arithmetic, no library
drawing), image-disjoint across splits exactly as v1 (scene signatures never repeat; the
train split comes from the train half of the scene space).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from hones_nn.data.font import LETTERS
from hones_nn.data.synthetic import (
    RenderedImage,
    SyntheticWorld,
    draw_boxed_word,
    draw_word,
    record,
    shape_mask,
    vqa_record,
)

GENERATOR_VERSION = "synthetic-v2"
# revision 2: worn print in the box, random retrieval negatives (see the module docstring);
# the cache folder and the manifest name it, so a benchmark built by revision 1 is not reused
GENERATOR_REVISION = 2
IMAGE_ID_PREFIX = "syn2-"
IMAGE_SIZE = 64
PATCH_SIZE = 8
CELL_SIZE = 16
GRID_COLUMNS = 4
GRID_ROWS = 3
TEXT_PATCH_ROW = 6
DISTRACTOR_PATCH_ROW = 7
WORD_LENGTHS = (3, 4, 5, 6)
DISTRACTOR_LENGTHS = (2, 3, 4, 5)
DISTRACTOR_PROBABILITY = 0.7
# worn print: each pixel of a boxed letter's glyph is missing with this probability, and
# each blank pixel of its 5 x 7 cell is a white speck with the other; an ideal reader
# (Bayes decoding with the font known) then reads 94.7% of letters (measured by
# simulation, tests/unit/test_synthetic_v2.py), so OCR cannot saturate
WORN_DROP = 0.30
WORN_SPECKLE = 0.02
# retrieval: the benchmark's 49 negatives are random captions of other images (revision 1
# mined the TF-IDF-nearest ones, which differ in one attribute: a 3.7 M-parameter model
# trained for 4,500 steps ranked them at chance, NDCG@5 0.048); training draws a
# one-attribute perturbation for this share of its negatives, a random scene otherwise
RETRIEVAL_NEGATIVES = "random"
PERTURBED_NEGATIVE_SHARE = 0.3
MAX_SHAPES = 6
PALETTE_SIZES = (2, 4)  # a scene's shapes take their colours from 2-4 of the 8
KINDS = ("circle", "square", "triangle", "cross", "diamond", "ring")
SIZES = ("small", "large")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "yellow": (235, 215, 40),
    "purple": (150, 70, 220),
    "orange": (245, 140, 30),
    "pink": (250, 130, 200),
    "cyan": (40, 210, 220),
    "brown": (150, 90, 40),
}
COLOR_JITTER = 12
BACKGROUNDS = ("plain", "noisy", "striped", "checkered")
BACKGROUND_MAX = 70  # no background pixel channel exceeds this (shapes stay far from it)
# all-capital words the tokenizer holds whole would tokenize differently from their letters
FORBIDDEN_WORDS = frozenset({"USER", "ASSISTANT"})
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

VQA_QUESTION_TYPES = ("color", "shape", "size", "count", "count_color", "existence", "left_of", "above")
CAPTION_TEMPLATES = (
    "{objects}.",
    "there {be} {count} {noun}: {objects}.",
    "{objects} on a {background} background.",
    "an image of {objects}.",
    "{objects_ltr}, from left to right.",
    "{objects} above a blue box with text.",
    "a {background} image with {objects}.",
    "{objects_shuffled}.",
)
CAPTIONS_PER_IMAGE = 5
# every word the questions, answers and captions use (the v2 tokenizer's extra words)
VOCABULARY_TEXT = (
    "What color is the How many shapes shape are there ? Is a an and object yes no size of left above "
    "with from to right image on background blue box text : , . " + " ".join(NUMBER_WORDS.values())
)


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    column: int
    row: int

    @property
    def name(self) -> str:
        """What names the shape uniquely in its scene: its colour and kind."""
        return f"{self.color} {self.kind}"

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """What one image shows; every task's label is a function of it."""

    shapes: tuple[Shape, ...]  # sorted row-major (row, then column)
    word: str
    box_column: int  # patch column of the first letter
    background: str
    distractor: str = ""  # "" when the image has none
    distractor_column: int = 0
    jitter: tuple[int, ...] = field(default=(), compare=False)  # background seed, then one per shape

    @property
    def signature(self) -> tuple:
        return (
            tuple((s.kind, s.color, s.size, s.column, s.row) for s in self.shapes),
            self.word,
            self.box_column,
            self.background,
            self.distractor,
            self.distractor_column,
        )

    @property
    def content_key(self) -> tuple:
        """What every caption describes: the multiset of (size, colour, kind) of the shapes
        (captions list every shape, so another image's caption describes this one only if
        the multisets are equal; such captions are never retrieval negatives)."""
        return tuple(sorted((s.size, s.color, s.kind) for s in self.shapes))


def _listing(shapes) -> str:
    phrases = [s.phrase for s in shapes]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def captions_for(scene: Scene) -> list[str]:
    """Five distinct references in structures chosen per scene (deterministic from the scene)."""
    rng = random.Random(f"{GENERATOR_VERSION}:captions:{scene.signature!r}")
    shuffled = list(scene.shapes)
    rng.shuffle(shuffled)
    n = len(scene.shapes)
    fields = {
        "objects": _listing(scene.shapes),
        "objects_ltr": _listing(sorted(scene.shapes, key=lambda s: (s.column, s.row))),
        "objects_shuffled": _listing(shuffled),
        "be": "is" if n == 1 else "are",
        "count": NUMBER_WORDS[n],
        "noun": "shape" if n == 1 else "shapes",
        "background": scene.background,
    }
    # the shuffled listing may come out in the row-major order: keep each text once
    distinct = list(dict.fromkeys(t.format(**fields) for t in CAPTION_TEMPLATES))
    return rng.sample(distinct, CAPTIONS_PER_IMAGE)


# ---------------------------------------------------------------- sampling scenes


def _random_word(rng: random.Random, lengths: tuple[int, ...]) -> str:
    while True:
        word = "".join(rng.choice(LETTERS) for _ in range(rng.choice(lengths)))
        if word not in FORBIDDEN_WORDS:
            return word


def _sorted_shapes(shapes) -> tuple[Shape, ...]:
    return tuple(sorted(shapes, key=lambda s: (s.row, s.column)))


def sample_scene(rng: random.Random) -> Scene:
    n_shapes = rng.randint(1, MAX_SHAPES)
    cells = rng.sample(range(GRID_COLUMNS * GRID_ROWS), n_shapes)
    # a scene draws its colours from a few (so "how many red shapes" is not almost always 1)
    palette = rng.sample(sorted(COLORS), rng.randint(*PALETTE_SIZES))
    pairs: set[tuple[str, str]] = set()
    shapes = []
    for cell in cells:
        while True:
            color, kind = rng.choice(palette), rng.choice(KINDS)
            if (color, kind) not in pairs:
                break
        pairs.add((color, kind))
        shapes.append(Shape(kind, color, rng.choice(SIZES), cell % GRID_COLUMNS, cell // GRID_COLUMNS))
    word = _random_word(rng, WORD_LENGTHS)
    n_patches = IMAGE_SIZE // PATCH_SIZE
    box_column = rng.randint(1, n_patches - 1 - len(word))
    background = rng.choice(BACKGROUNDS)
    distractor, distractor_column = "", 0
    if rng.random() < DISTRACTOR_PROBABILITY:
        distractor = _random_word(rng, DISTRACTOR_LENGTHS)
        distractor_column = rng.randint(0, n_patches - len(distractor))
    jitter = tuple(rng.randrange(1 << 30) for _ in range(n_shapes + 1))
    return Scene(_sorted_shapes(shapes), word, box_column, background, distractor, distractor_column, jitter)


def perturb_scene(scene: Scene, rng: random.Random) -> Scene:
    """A scene that differs in one caption-visible attribute (a hard negative for training)."""
    shapes = list(scene.shapes)
    pairs = {(s.color, s.kind) for s in shapes}
    i = rng.randrange(len(shapes))
    s = shapes[i]
    choice = rng.randrange(4)
    if choice == 0:
        color = rng.choice(sorted(c for c in COLORS if (c, s.kind) not in pairs))
        shapes[i] = Shape(s.kind, color, s.size, s.column, s.row)
    elif choice == 1:
        kinds = [k for k in KINDS if (s.color, k) not in pairs]
        if kinds:
            shapes[i] = Shape(rng.choice(kinds), s.color, s.size, s.column, s.row)
        else:  # the scene has this colour in every kind: change the colour instead
            color = rng.choice(sorted(c for c in COLORS if (c, s.kind) not in pairs))
            shapes[i] = Shape(s.kind, color, s.size, s.column, s.row)
    elif choice == 2:
        shapes[i] = Shape(s.kind, s.color, "small" if s.size == "large" else "large", s.column, s.row)
    else:
        free = sorted(set(range(GRID_COLUMNS * GRID_ROWS)) - {x.row * GRID_COLUMNS + x.column for x in shapes})
        if len(shapes) < MAX_SHAPES and (len(shapes) == 1 or rng.random() < 0.5):
            while True:
                color, kind = rng.choice(sorted(COLORS)), rng.choice(KINDS)
                if (color, kind) not in pairs:
                    break
            cell = rng.choice(free)
            shapes.append(Shape(kind, color, rng.choice(SIZES), cell % GRID_COLUMNS, cell // GRID_COLUMNS))
        else:
            del shapes[i]
    jitter = scene.jitter + tuple(rng.randrange(1 << 30) for _ in range(max(0, len(shapes) + 1 - len(scene.jitter))))
    perturbed = Scene(
        _sorted_shapes(shapes),
        scene.word,
        scene.box_column,
        scene.background,
        scene.distractor,
        scene.distractor_column,
        jitter,
    )
    if perturbed.content_key == scene.content_key:
        return perturb_scene(scene, rng)
    return perturbed


# ---------------------------------------------------------------- drawing


def _background(kind: str, rng: random.Random) -> np.ndarray:
    base = np.array([rng.randint(8, 40) for _ in range(3)], dtype=np.int16)
    pixels = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    pixels[:] = base
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    if kind == "noisy":
        noise = np.frombuffer(rng.randbytes(IMAGE_SIZE * IMAGE_SIZE * 3), dtype=np.uint8)
        pixels += (noise.reshape(IMAGE_SIZE, IMAGE_SIZE, 3) % 26).astype(np.int16)
    elif kind == "striped":
        width = rng.randint(2, 4)
        along = xx if rng.random() < 0.5 else yy
        pixels[(along // width) % 2 == 1] += 22
    elif kind == "checkered":
        width = rng.randint(3, 5)
        pixels[((xx // width) + (yy // width)) % 2 == 1] += 22
    elif kind != "plain":
        raise ValueError(f"unknown background {kind!r}; known: {', '.join(BACKGROUNDS)}")
    return pixels


def render(scene: Scene) -> RenderedImage:
    seeds = scene.jitter or (0,) * (len(scene.shapes) + 1)
    pixels = _background(scene.background, random.Random(seeds[0]))
    masks, boxes = [], []
    for shape, seed in zip(scene.shapes, seeds[1:]):
        jr = random.Random(seed)
        size = jr.choice((12, 13, 14)) if shape.size == "large" else jr.choice((7, 8, 9))
        x0 = shape.column * CELL_SIZE + jr.randint(1, CELL_SIZE - 1 - size)
        y0 = shape.row * CELL_SIZE + jr.randint(1, CELL_SIZE - 1 - size)
        mask = shape_mask(shape.kind, x0, y0, size, IMAGE_SIZE)
        color = np.array(COLORS[shape.color], dtype=np.int16) + np.array(
            [jr.randint(-COLOR_JITTER, COLOR_JITTER) for _ in range(3)], dtype=np.int16
        )
        pixels[mask] = color
        masks.append(mask)
        boxes.append((x0, y0, x0 + size, y0 + size))

    worn = _worn_print(random.Random(f"{GENERATOR_VERSION}:worn:{seeds[0]}"))
    text_mask, text_box = draw_boxed_word(pixels, scene.word, scene.box_column, TEXT_PATCH_ROW, wear=worn)
    if scene.distractor:
        # one row lower than in the box: the box's bottom outline is the patch row's first line
        draw_word(pixels, scene.distractor, scene.distractor_column * PATCH_SIZE, DISTRACTOR_PATCH_ROW * PATCH_SIZE + 1)
    return RenderedImage(
        pixels=np.clip(pixels, 0, 255).astype(np.uint8),
        shape_masks=masks,
        shape_boxes=boxes,
        text_mask=text_mask,
        text_box=text_box,
    )


def _worn_print(rng: random.Random):
    """Worn print for :func:`~hones_nn.data.synthetic.draw_word`: a glyph pixel stays white
    with probability 1 - :data:`WORN_DROP`, a blank pixel of the letter cell turns white
    with :data:`WORN_SPECKLE` (one draw per pixel, row by row, so the image is deterministic)."""

    def wear(bits: np.ndarray) -> np.ndarray:
        draws = np.array([rng.random() for _ in range(bits.size)]).reshape(bits.shape)
        return np.where(bits, draws >= WORN_DROP, draws < WORN_SPECKLE)

    return wear


# ---------------------------------------------------------------- task labels


def _unique(shapes, target: Shape, attrs: tuple[str, ...]) -> bool:
    key = tuple(getattr(target, a) for a in attrs)
    return sum(tuple(getattr(s, a) for a in attrs) == key for s in shapes) == 1


def _question(scene: Scene, rng: random.Random, qtype: str):
    """(question, answer, alternatives, synonyms, answer_type), or None where ``qtype``
    has no unambiguous question about this scene."""
    shapes = scene.shapes
    if qtype == "color":
        for attrs in (("kind",), ("size", "kind")):
            targets = [s for s in shapes if _unique(shapes, s, attrs)]
            if targets:
                t = rng.choice(targets)
                what = " ".join(getattr(t, a) for a in attrs)
                return f"What color is the {what}?", t.color, [c for c in sorted(COLORS) if c != t.color], [], "other"
        return None
    if qtype == "shape":
        for attrs in (("color",), ("size", "color")):
            targets = [s for s in shapes if _unique(shapes, s, attrs)]
            if targets:
                t = rng.choice(targets)
                what = " ".join(getattr(t, a) for a in attrs)
                return f"What shape is the {what} object?", t.kind, [k for k in KINDS if k != t.kind], [], "other"
        return None
    if qtype == "size":
        t = rng.choice(shapes)
        return f"What size is the {t.name}?", t.size, [z for z in SIZES if z != t.size], [], "other"
    if qtype in ("count", "count_color"):
        if qtype == "count":
            question, n = "How many shapes are there?", len(shapes)
        else:
            color = rng.choice(shapes).color  # a colour by its number of shapes: fewer answers of 1
            question, n = f"How many {color} shapes are there?", sum(s.color == color for s in shapes)
        others = [str(k) for k in NUMBER_WORDS if k != n]
        return question, str(n), others, [NUMBER_WORDS[n]], "number"
    if qtype == "existence":
        with_size = rng.random() < 0.5
        present = {(s.size, s.color, s.kind) if with_size else (s.color, s.kind) for s in shapes}
        if rng.random() < 0.5:
            item = rng.choice(sorted(present))
            answer = "yes"
        else:
            while True:
                item = (rng.choice(SIZES),) if with_size else ()
                item += (rng.choice(sorted(COLORS)), rng.choice(KINDS))
                if item not in present:
                    break
            answer = "no"
        return f"Is there a {' '.join(item)}?", answer, ["no" if answer == "yes" else "yes"], [], "yes/no"
    if qtype in ("left_of", "above"):
        axis = "column" if qtype == "left_of" else "row"
        pairs = [(a, b) for a in shapes for b in shapes if getattr(a, axis) != getattr(b, axis)]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        relation = "left of" if qtype == "left_of" else "above"
        answer = "yes" if getattr(a, axis) < getattr(b, axis) else "no"
        question = f"Is the {a.name} {relation} the {b.name}?"
        return question, answer, ["no" if answer == "yes" else "yes"], [], "yes/no"
    raise ValueError(f"unknown VQA question type {qtype!r}; known: {', '.join(VQA_QUESTION_TYPES)}")


def vqa_for(scene: Scene, rng: random.Random, question_type: str | None = None) -> dict:
    """One VQA question with 10 simulated human answers (VQAv2 style). A type with no
    unambiguous question about the scene (e.g. "left of" with every shape in one
    column) falls back to a size question (always answerable, and not skewing the counts
    towards one shape)."""
    qtype = question_type or rng.choice(VQA_QUESTION_TYPES)
    asked = _question(scene, rng, qtype)
    if asked is None:
        qtype = "size"
        asked = _question(scene, rng, qtype)
        assert asked is not None
    question, answer, alternatives, synonyms, answer_type = asked
    return vqa_record(rng, qtype, question, answer, alternatives, synonyms, answer_type)


def scene_record(scene: Scene, rng: random.Random, image_id: str, split: str) -> dict:
    """Everything but retrieval candidates (those need the whole split); v1's record format."""
    content_key = "|".join(f"{z} {c} {k}" for z, c, k in scene.content_key)
    return record(image_id, split, scene, render(scene), vqa_for(scene, rng), captions_for(scene), content_key)


class SyntheticWorldV2(SyntheticWorld):
    """v1's seeded, image-disjoint split streams over v2 scenes."""

    version = GENERATOR_VERSION
    sample_scene = staticmethod(sample_scene)


World = SyntheticWorldV2
