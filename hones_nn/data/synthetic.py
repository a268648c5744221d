"""The synthetic four-task benchmark: small images of shapes and a word in a blue box.

It mirrors the paper's unified COCO benchmark (HONES appendix A) in miniature: every image
serves all four tasks (VQA, OCR, caption, retrieval), which differ only in the
instruction. Everything is drawn with numpy from a seeded ``random.Random`` so an image is
pixel-identical on every machine and library version.

Layout of a 48 x 48 image (8-pixel patch grid, 6 x 6 patches):

* rows 0-31: two rows of three 16 x 16 cells; 1-3 shapes, each in its own column (so
  "left to right" is well defined), distinct kinds and distinct colours;
* patch row 4 (y 32-39): a word of 3-4 capital letters, one letter per patch, inside a
  blue box outline (the paper's OCR visual prompt), aligned to the patch grid.

Images are image-disjoint across splits: every scene has a signature (shapes, cells,
word, box position) and no signature repeats anywhere in the benchmark.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from hones_nn.data.font import GLYPH_HEIGHT, GLYPH_WIDTH, LETTERS, glyph

GENERATOR_VERSION = "synthetic-v1"
GENERATOR_REVISION = 1
# retrieval: the benchmark mines the TF-IDF-nearest captions as negatives ("hard"); training
# draws a one-attribute perturbation of the scene for this share of its negatives
RETRIEVAL_NEGATIVES = "hard"
PERTURBED_NEGATIVE_SHARE = 0.7
IMAGE_ID_PREFIX = "syn"
IMAGE_SIZE = 48
PATCH_SIZE = 8
CELL_SIZE = 16
GRID_COLUMNS = 3
GRID_ROWS = 2
TEXT_PATCH_ROW = 4
WORD_LENGTHS = (3, 4)
KINDS = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "yellow": (235, 215, 40),
    "purple": (150, 70, 220),
    "orange": (245, 140, 30),
}
BOX_BLUE = (30, 60, 255)
TEXT_WHITE = (245, 245, 245)
BACKGROUND = (16, 16, 16)
# Words the language model's vocabulary holds whole would tokenize differently.
FORBIDDEN_WORDS = frozenset({"USER"})
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

VQA_QUESTION_TYPES = ("color", "shape", "count", "existence")
CAPTION_TEMPLATES = (
    "{objects}.",
    "there is {objects}.",
    "an image of {objects}.",
    "{objects} on a black background.",
    "{objects} above a blue box with text.",
)


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    column: int
    row: int

    @property
    def phrase(self) -> str:
        article = "an" if self.color[0] in "aeiou" else "a"
        return f"{article} {self.color} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """What one image shows; every task's label is a function of it."""

    shapes: tuple[Shape, ...]  # sorted left to right
    word: str
    box_column: int  # patch column of the first letter
    jitter: tuple[int, ...] = field(default=(), compare=False)  # per-shape size/colour jitter seeds

    @property
    def signature(self) -> tuple:
        return (tuple((s.kind, s.color, s.column, s.row) for s in self.shapes), self.word, self.box_column)

    @property
    def content_key(self) -> tuple:
        """What a caption describes: the set of (colour, kind) of the shapes.

        Order-free: captions list the shapes left to right, but "a purple triangle and a
        green circle" still correctly describes an image whose circle is on the left, so
        a caption with the same shapes in another order must never be a retrieval
        negative (it would be a false negative)."""
        return tuple(sorted((s.color, s.kind) for s in self.shapes))


def caption_core(shapes: tuple[Shape, ...]) -> str:
    phrases = [s.phrase for s in shapes]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def captions_for(scene: Scene) -> list[str]:
    core = caption_core(scene.shapes)
    return [template.format(objects=core) for template in CAPTION_TEMPLATES]


# ---------------------------------------------------------------- sampling scenes


def sample_scene(rng: random.Random) -> Scene:
    n_shapes = rng.choice((1, 2, 3))
    columns = sorted(rng.sample(range(GRID_COLUMNS), n_shapes))
    kinds = rng.sample(KINDS, n_shapes)
    colors = rng.sample(sorted(COLORS), n_shapes)
    shapes = tuple(
        Shape(kind=k, color=c, column=col, row=rng.randrange(GRID_ROWS)) for k, c, col in zip(kinds, colors, columns)
    )
    while True:
        length = rng.choice(WORD_LENGTHS)
        word = "".join(rng.choice(LETTERS) for _ in range(length))
        if word not in FORBIDDEN_WORDS:
            break
    last_start = IMAGE_SIZE // PATCH_SIZE - 1 - length
    box_column = rng.randint(1, last_start)
    jitter = tuple(rng.randrange(1 << 30) for _ in shapes)
    return Scene(shapes=shapes, word=word, box_column=box_column, jitter=jitter)


def perturb_scene(scene: Scene, rng: random.Random) -> Scene:
    """A scene that differs in one caption-visible attribute (a hard negative for training)."""
    shapes = list(scene.shapes)
    used_colors = {s.color for s in shapes}
    used_kinds = {s.kind for s in shapes}
    choice = rng.randrange(4)
    i = rng.randrange(len(shapes))
    if choice == 0 and len(used_colors) < len(COLORS):
        new = rng.choice(sorted(set(COLORS) - used_colors))
        shapes[i] = Shape(shapes[i].kind, new, shapes[i].column, shapes[i].row)
    elif choice == 1 and len(used_kinds) < len(KINDS):
        new = rng.choice(sorted(set(KINDS) - used_kinds))
        shapes[i] = Shape(new, shapes[i].color, shapes[i].column, shapes[i].row)
    elif choice == 2 and len(shapes) > 1:
        # exchange the colours of two shapes: same colours and kinds overall, wrong pairing
        j = (i + 1) % len(shapes)
        shapes[i], shapes[j] = (
            Shape(shapes[i].kind, shapes[j].color, shapes[i].column, shapes[i].row),
            Shape(shapes[j].kind, shapes[i].color, shapes[j].column, shapes[j].row),
        )
    else:
        free_columns = sorted(set(range(GRID_COLUMNS)) - {s.column for s in shapes})
        if len(shapes) < GRID_COLUMNS and (len(shapes) == 1 or rng.random() < 0.5):
            kind = rng.choice(sorted(set(KINDS) - used_kinds))
            color = rng.choice(sorted(set(COLORS) - used_colors))
            shapes.append(Shape(kind, color, rng.choice(free_columns), 0))
            shapes.sort(key=lambda s: s.column)
        else:
            del shapes[i]
    perturbed = Scene(tuple(shapes), scene.word, scene.box_column, scene.jitter)
    if perturbed.content_key == scene.content_key:
        return perturb_scene(scene, rng)
    return perturbed


# ---------------------------------------------------------------- drawing


def shape_mask(kind: str, x0: int, y0: int, size: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The pixels of one shape whose bounding square is (x0, y0) .. (x0 + size) exclusive, on
    an ``image_size`` square image (v1 draws circles, squares, triangles and crosses; v2 adds
    diamonds and rings)."""
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    cx = x0 + (size - 1) / 2.0
    cy = y0 + (size - 1) / 2.0
    inside_box = (xx >= x0) & (xx < x0 + size) & (yy >= y0) & (yy < y0 + size)
    r = size / 2.0
    if kind == "square":
        return inside_box
    if kind == "circle":
        return ((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r
    if kind == "ring":
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        return (d2 <= r * r) & (d2 > (r * 0.55) ** 2)
    if kind == "diamond":
        return inside_box & ((np.abs(xx - cx) + np.abs(yy - cy)) <= r)
    if kind == "triangle":
        # apex at the top centre, base along the bottom row
        rel_y = (yy - y0 + 0.5) / size
        half_width = rel_y * size / 2.0
        return inside_box & (np.abs(xx - cx) <= half_width)
    if kind == "cross":
        bar = max(2, size // 3)
        lo = (size - bar) // 2
        horizontal = inside_box & (yy >= y0 + lo) & (yy < y0 + lo + bar)
        vertical = inside_box & (xx >= x0 + lo) & (xx < x0 + lo + bar)
        return horizontal | vertical
    raise ValueError(f"unknown shape kind {kind!r}; known kinds: circle, square, triangle, cross, diamond, ring")


@dataclass
class RenderedImage:
    pixels: np.ndarray  # uint8 (H, W, 3)
    shape_masks: list[np.ndarray]  # bool (H, W), one per shape, same order as scene.shapes
    shape_boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 (exclusive)
    text_mask: np.ndarray  # bool (H, W): the blue box and everything inside it
    text_box: tuple[int, int, int, int]  # x, y, width, height (COCO style)


def render(scene: Scene) -> RenderedImage:
    pixels = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    pixels[:] = BACKGROUND
    masks, boxes = [], []
    for shape, seed in zip(scene.shapes, scene.jitter or (0,) * len(scene.shapes)):
        jr = random.Random(seed)
        margin = jr.choice((2, 3))
        size = CELL_SIZE - 2 * margin
        x0 = shape.column * CELL_SIZE + margin
        y0 = shape.row * CELL_SIZE + margin
        mask = shape_mask(shape.kind, x0, y0, size)
        color = np.array(COLORS[shape.color], dtype=np.int16) + np.array(
            [jr.randint(-12, 12) for _ in range(3)], dtype=np.int16
        )
        pixels[mask] = color
        masks.append(mask)
        boxes.append((x0, y0, x0 + size, y0 + size))

    # the word: one letter per patch of patch row TEXT_PATCH_ROW, blue outline around it
    text_mask, text_box = draw_boxed_word(pixels, scene.word, scene.box_column, TEXT_PATCH_ROW)
    return RenderedImage(
        pixels=np.clip(pixels, 0, 255).astype(np.uint8),
        shape_masks=masks,
        shape_boxes=boxes,
        text_mask=text_mask,
        text_box=text_box,
    )


def draw_word(pixels: np.ndarray, word: str, left: int, top: int, wear=None) -> None:
    """White glyphs, one per PATCH_SIZE-wide cell from pixel column ``left``, their top at ``top``.

    ``wear``: None (clean print) or a function from a letter's glyph bitmap to the bitmap of
    its cell's white pixels (synthetic-v2's worn print), called once per letter in order."""
    for k, letter in enumerate(word):
        gx = left + k * PATCH_SIZE + (PATCH_SIZE - GLYPH_WIDTH) // 2
        region = pixels[top : top + GLYPH_HEIGHT, gx : gx + GLYPH_WIDTH]
        region[glyph(letter) if wear is None else wear(glyph(letter))] = TEXT_WHITE


def draw_boxed_word(pixels: np.ndarray, word: str, column: int, patch_row: int, wear=None):
    """The OCR visual prompt: ``word`` one letter per patch from patch ``column`` of
    ``patch_row``, in a blue outline around those patches (``wear``: as in :func:`draw_word`).
    Returns the box's mask (outline and inside) and its COCO-style (x, y, width, height)."""
    top = patch_row * PATCH_SIZE
    left = column * PATCH_SIZE
    right = left + len(word) * PATCH_SIZE  # exclusive
    bx0, by0, bx1, by1 = left - 1, top - 1, right, top + PATCH_SIZE  # outline coordinates, inclusive
    text_mask = np.zeros(pixels.shape[:2], dtype=bool)
    text_mask[by0 : by1 + 1, bx0 : bx1 + 1] = True
    outline = text_mask.copy()
    outline[by0 + 1 : by1, bx0 + 1 : bx1] = False
    pixels[outline] = BOX_BLUE
    draw_word(pixels, word, left, top + (PATCH_SIZE - GLYPH_HEIGHT) // 2, wear)
    return text_mask, (bx0, by0, bx1 - bx0 + 1, by1 - by0 + 1)


def png_bytes(array: np.ndarray) -> bytes:
    """Deterministic PNG encoding (RGB uint8 or a bool mask)."""
    if array.dtype == bool:
        image = Image.fromarray(array.astype(np.uint8) * 255, mode="L")
    else:
        image = Image.fromarray(array, mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


# ---------------------------------------------------------------- task labels


def vqa_for(scene: Scene, rng: random.Random, question_type: str | None = None) -> dict:
    """One VQA question with 10 simulated human answers (VQAv2 style)."""
    qtype = question_type or rng.choice(VQA_QUESTION_TYPES)
    shapes = scene.shapes
    alternatives: list[str]
    synonyms: list[str] = []
    if qtype == "color":
        target = rng.choice(shapes)
        question = f"What color is the {target.kind}?"
        answer = target.color
        alternatives = [c for c in sorted(COLORS) if c != answer]
        answer_type = "other"
    elif qtype == "shape":
        target = rng.choice(shapes)
        question = f"What shape is the {target.color} object?"
        answer = target.kind
        alternatives = [k for k in KINDS if k != answer]
        answer_type = "other"
    elif qtype == "count":
        question = "How many shapes are there?"
        answer = str(len(shapes))
        synonyms = [NUMBER_WORDS[len(shapes)]]
        alternatives = [str(n) for n in (1, 2, 3) if n != len(shapes)]
        answer_type = "number"
    elif qtype == "existence":
        present = {(s.color, s.kind) for s in shapes}
        if rng.random() < 0.5:
            color, kind = rng.choice(sorted(present))
            answer = "yes"
        else:
            while True:
                color = rng.choice(sorted(COLORS))
                kind = rng.choice(KINDS)
                if (color, kind) not in present:
                    break
            answer = "no"
        question = f"Is there {Shape(kind, color, 0, 0).phrase}?"
        alternatives = ["no" if answer == "yes" else "yes"]
        answer_type = "yes/no"
    else:
        raise ValueError(f"unknown VQA question type {qtype!r}; known: {', '.join(VQA_QUESTION_TYPES)}")
    return vqa_record(rng, qtype, question, answer, alternatives, synonyms, answer_type)


def vqa_record(rng: random.Random, qtype: str, question: str, answer: str, alternatives, synonyms, answer_type: str):
    """A VQA label with 10 simulated human answers (VQAv2 style): 6-10 give the answer (30%
    of them a synonym, when there is one), the rest one of the ``alternatives``."""
    n_gold = rng.choice((10, 9, 8, 8, 7, 6))
    gold = [rng.choice(synonyms) if synonyms and rng.random() < 0.3 else answer for _ in range(n_gold)]
    noise = [rng.choice(alternatives) for _ in range(10 - n_gold)]
    all_answers = gold + noise
    rng.shuffle(all_answers)
    return {
        "question": question,
        "answer": answer,
        "all_answers": all_answers,
        "question_type": qtype,
        "answer_type": answer_type,
    }


def scene_record(scene: Scene, rng: random.Random, image_id: str, split: str) -> dict:
    """Everything but retrieval candidates (those need the whole split)."""
    content_key = "|".join(f"{c} {k}" for c, k in scene.content_key)
    return record(image_id, split, scene, render(scene), vqa_for(scene, rng), captions_for(scene), content_key)


def record(image_id: str, split: str, scene, rendered: RenderedImage, vqa: dict, captions: list[str], content_key: str):
    """A benchmark record (every generator's format): the image, its shapes' and text box's
    masks and boxes, the OCR word, the VQA label, the captions."""
    objects = [
        {
            "kind": s.kind,
            "color": s.color,
            "column": s.column,
            "row": s.row,
            "bbox": list(box),
            "mask": png_bytes(mask),
        }
        for s, box, mask in zip(scene.shapes, rendered.shape_boxes, rendered.shape_masks)
    ]
    return {
        "image_id": image_id,
        "split": split,
        "image": {"bytes": png_bytes(rendered.pixels), "path": None},
        "objects": objects,
        "ocr": {
            "text": scene.word,
            "bbox": [float(v) for v in rendered.text_box],
            "mask": png_bytes(rendered.text_mask),
        },
        "vqa": vqa,
        "captions": captions,
        "content_key": content_key,
    }


# ---------------------------------------------------------------- the world


def in_train_space(signature: tuple) -> bool:
    """A fixed 3:1 partition of all possible scenes into train and evaluation scenes.

    It depends on the scene alone (not on the seed or the split sizes), so the embedded
    model's training images can never appear in any evaluation split of any build.
    """
    digest = hashlib.sha256(repr(signature).encode()).digest()
    return digest[0] % 4 != 0


class SyntheticWorld:
    """Seeded streams of distinct scenes, split image-disjointly.

    Evaluation splits are drawn in a fixed order (test, dev, discovery) from one random
    stream, with a set of signatures so no image repeats across splits; the train split
    comes from its own stream and from the train half of :func:`in_train_space`.
    """

    EVAL_SPLIT_ORDER = ("test", "dev", "discovery")

    def __init__(self, seed: int = 0):
        self.seed = seed

    @staticmethod
    def split_sizes(n_images: int) -> dict[str, int]:
        """Discovery : dev : test = 7 : 2 : 3 (paper appendix A)."""
        if n_images < 12:
            raise ValueError(f"--n-images must be at least 12 to give every split an image, got {n_images}")
        dev = round(n_images * 2 / 12)
        test = round(n_images * 3 / 12)
        return {"discovery": n_images - dev - test, "dev": dev, "test": test}

    # what a generator's world draws from (a subclass for another generator sets both)
    version = GENERATOR_VERSION
    sample_scene = staticmethod(sample_scene)

    def _stream(self, name: str, count: int, train: bool, seen: set) -> list:
        rng = random.Random(f"{self.version}:{self.seed}:{name}")
        items: list = []
        while len(items) < count:
            scene = self.sample_scene(rng)
            label_seed = rng.randrange(1 << 62)
            if scene.signature in seen or in_train_space(scene.signature) != train:
                continue
            seen.add(scene.signature)
            items.append((scene, label_seed))
        return items

    def scenes(self, sizes: dict[str, int]) -> dict[str, list[tuple[Scene, int]]]:
        """Scenes per split (keys among test, dev, discovery, train), each with a label seed."""
        unknown = set(sizes) - set(self.EVAL_SPLIT_ORDER) - {"train"}
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are train, discovery, dev, test")
        seen: set[tuple] = set()
        out: dict[str, list[tuple[Scene, int]]] = {}
        eval_total = sum(sizes.get(s, 0) for s in self.EVAL_SPLIT_ORDER)
        pooled = self._stream("eval", eval_total, train=False, seen=seen)
        start = 0
        for split in self.EVAL_SPLIT_ORDER:
            n = sizes.get(split, 0)
            out[split] = pooled[start : start + n]
            start += n
        out["train"] = self._stream("train", sizes.get("train", 0), train=True, seen=seen)
        return out


World = SyntheticWorld  # what hones_nn.data.generators looks up in every generator module


# ---------------------------------------------------------------- building a benchmark

DEFAULT_N_IMAGES = 1200  # discovery 700, dev 200, test 300
DEFAULT_N_TRAIN = 2000


def build_synthetic_benchmark(
    out,
    seed: int = 0,
    n_images: int = DEFAULT_N_IMAGES,
    n_train: int = DEFAULT_N_TRAIN,
    progress: bool = True,
    generator: str = GENERATOR_VERSION,
):
    """Generate the benchmark and write it in the shared layout (see ``hones_nn.data.dataset``).

    ``generator``: ``synthetic-v1`` (this module, the default) or ``synthetic-v2`` (the
    harder :mod:`hones_nn.data.synthetic_v2`); both write the same record format."""
    from tqdm.auto import tqdm

    from hones_nn.data.dataset import mine_retrieval_candidates, write_benchmark
    from hones_nn.data.generators import generator_module

    module = generator_module(generator)
    sizes = {**module.World.split_sizes(n_images), "train": n_train}
    scenes = module.World(seed).scenes(sizes)
    rows_by_split = {}
    for split in ("train", "discovery", "dev", "test"):
        rows = [
            module.scene_record(
                scene, random.Random(label_seed), f"{module.IMAGE_ID_PREFIX}{seed}-{split}-{i:06d}", split
            )
            for i, (scene, label_seed) in enumerate(
                tqdm(scenes[split], desc=f"drawing {split}", disable=not progress, leave=False)
            )
        ]
        if rows:
            mined = mine_retrieval_candidates(
                [r["captions"] for r in rows],
                [r["content_key"] for r in rows],
                seed=hash_seed(seed, split),
                negatives=module.RETRIEVAL_NEGATIVES,
            )
            for row, retrieval in zip(rows, mined):
                row["retrieval"] = retrieval
        rows_by_split[split] = rows
    manifest = {
        "source": "synthetic",
        "generator": module.GENERATOR_VERSION,
        "seed": seed,
        "n_images": n_images,
        "n_train": n_train,
        "image_size": module.IMAGE_SIZE,
    }
    if module.GENERATOR_REVISION > 1:  # a first revision's manifest stays as it always was
        manifest["generator_revision"] = module.GENERATOR_REVISION
    return write_benchmark(out, rows_by_split, manifest)


def hash_seed(seed: int, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{split}".encode()).digest()[:4], "little")
