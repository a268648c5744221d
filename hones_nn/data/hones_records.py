"""Import the official HONES unified COCO records into the benchmark layout.

The HONES authors ship their benchmark as "unified records" (e.g.
``hones_coco_dev_split.json``: ``{"data": [record, ...]}``), one per COCO train2014
image, holding the annotations of all four tasks::

    image_id, image_info {file_name, width, height, ...},
    vqa {question, answer, all_answers (10), question_type, answer_type, question_id},
    captions [{caption_id, caption}] (5, a few images have 6),
    ocr {bbox [x, y, w, h], text, mask (COCO-Text polygon), ...},
    retrieval [...]   (the image's own captions: not used, see below)

The images are not in the file: :func:`import_hones` reads them from ``images_dir``
(the COCO ``train2014`` folder) and writes the layout of :mod:`hones_nn.data.dataset`.

Choices (paper appendix A where it says, ours where it does not):

* OCR visual prompt (A.2): a blue (0, 0, 255) rectangle outline around the COCO-Text
  box, drawn onto the full image "without cropping or changing image resolution". The
  line is :func:`box_line_width` = ``max(2, round(max(W, H) / 160))`` pixels wide (4 px on
  a 640-pixel COCO image, about 2 px after LLaVA's resize to 336) and lies just
  *outside* the box, so no pixel of the annotated text is covered; it is clipped at the
  image border (COCO-Text boxes may overshoot it by a pixel or two). EXIF orientation is
  not applied: COCO annotations refer to the stored pixel grid.
* ``ocr.bbox`` keeps the COCO-Text annotation as given ([x, y, w, h]); ``ocr.mask`` is its
  polygon rasterised to a full-size PNG mask (null where the polygon is missing).
* Captions: outer whitespace stripped; the first 5 are kept (the paper's 5-reference
  setting; 4 records of the dev file have 6).
* Retrieval candidates are mined per split with
  :func:`hones_nn.data.dataset.mine_retrieval_candidates` (1 positive + 49 hard
  negatives), not taken from the record's ``retrieval`` field (the reference code rebuilds
  them too). ``content_key`` (:func:`caption_content_keys`): images whose captions share
  a normalised caption (lower case, punctuation and spacing ignored) are one content
  group, transitively; the key is the group's smallest normalised first caption. So no
  negative of an image is, up to normalisation, one of its own captions, and identical
  captions of two images are never each other's negatives.
* Splits: every record goes into one split (``split``, default "dev": the file is the
  paper's development split), or, with ``split_sizes``, the records are shuffled with the
  seed and cut image-disjointly into the named splits.

Bad input (a missing or unreadable image, a record without a field the four tasks need,
an empty answer or OCR text, a size that does not match ``image_info``, a duplicate
image) stops the import with a :class:`BadRecordError` naming the record's image id, the
image path and the fix; with ``skip_bad=True`` such records are skipped, counted by reason
and listed in the returned report. The shipped dev file has one such record (image
491229: its OCR text is a blank), so importing all of it needs ``skip_bad=True``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from hones_nn.data.dataset import SPLITS, mine_retrieval_candidates, write_benchmark
from hones_nn.data.synthetic import hash_seed, png_bytes

IMPORTER_VERSION = "hones-records-v1"
OCR_BOX_COLOR = (0, 0, 255)
N_CAPTIONS = 5
ALL_TASKS = ("vqa", "ocr", "caption", "retrieval")
SKIP_HINT = "or pass skip_bad=True (--skip-bad) to skip such records and count them in the report"

EMPTY_OCR = {"text": "", "bbox": [], "mask": None}
EMPTY_VQA = {"question": "", "answer": "", "all_answers": [], "question_type": "", "answer_type": ""}
EMPTY_RETRIEVAL = {"candidates": [], "positive_index": -1}


# ---------------------------------------------------------------- bad input


class BadRecordError(ValueError):
    """One input record cannot be used; says which, why, and how to fix it."""

    def __init__(self, image_id, path, reason: str, problem: str, fix: str):
        self.image_id = None if image_id is None else str(image_id)
        self.path = None if path is None else str(path)
        self.reason = reason
        self.problem = problem
        self.fix = fix
        super().__init__(
            f"bad record (image_id={self.image_id}, image file {self.path}): {problem}. Fix: {fix}; {SKIP_HINT}."
        )


@dataclass
class SkipLog:
    """What ``skip_bad=True`` skipped, by reason."""

    skip_bad: bool
    skipped: list[dict] = field(default_factory=list)

    def handle(self, error: BadRecordError) -> None:
        """Re-raise unless skipping; otherwise record the skip."""
        if not self.skip_bad:
            raise error
        self.skipped.append(
            {"image_id": error.image_id, "path": error.path, "reason": error.reason, "problem": error.problem}
        )

    def report(self) -> dict:
        return {
            "n_skipped": len(self.skipped),
            "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in self.skipped).items())),
            "skipped_ids": [s["image_id"] for s in self.skipped],
            "skipped": list(self.skipped),
        }


def require(mapping, key: str, image_id, path, where: str):
    """``mapping[key]``, or a BadRecordError for a missing field."""
    if not isinstance(mapping, dict) or key not in mapping or mapping[key] is None:
        raise BadRecordError(
            image_id,
            path,
            "missing_field",
            f"field {where}{key} is missing",
            f"give every record a {where}{key} (as in the official annotation files)",
        )
    return mapping[key]


def require_text(mapping, key: str, image_id, path, where: str, reason: str = "empty_answer") -> str:
    value = require(mapping, key, image_id, path, where)
    if not isinstance(value, str) or not value.strip():
        raise BadRecordError(
            image_id,
            path,
            reason,
            f"field {where}{key} is empty ({value!r})",
            f"drop the record or give it a non-empty {where}{key}",
        )
    return value.strip()


def load_rgb(path: Path, image_id, source_hint: str) -> Image.Image:
    """The image at ``path`` as RGB, or a BadRecordError (missing / unreadable)."""
    if not path.is_file():
        raise BadRecordError(
            image_id,
            path,
            "missing_image",
            "the image file does not exist",
            f"point images_dir at the folder holding the {source_hint} images",
        )
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadRecordError(
            image_id,
            path,
            "corrupt_image",
            f"the image cannot be decoded ({type(error).__name__}: {error})",
            f"replace the file with an intact copy of the {source_hint} image",
        ) from error


def image_bytes(image: Image.Image) -> dict:
    """An `Image` feature value: deterministic PNG bytes."""
    return {"bytes": png_bytes(np.asarray(image.convert("RGB"), dtype=np.uint8)), "path": None}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def derived_answer_type(answer: str) -> str:
    """VQAv2-style answer type for sources that have none: yes/no, number or other."""
    a = answer.strip().lower()
    if a in ("yes", "no"):
        return "yes/no"
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", a) or a in _NUMBER_WORDS:
        return "number"
    return "other"


_NUMBER_WORDS = frozenset(
    [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ]
)


# ---------------------------------------------------------------- captions and retrieval

_WORD = re.compile(r"[a-z0-9]+")


def normalise_caption(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def caption_content_keys(captions: list[list[str]]) -> list[str]:
    """One content key per image: images sharing a normalised caption share a key.

    Union-find over images linked by any identical normalised caption; a group's key is
    its smallest normalised first caption, so keys do not depend on the input order.
    """
    parent = list(range(len(captions)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, refs in enumerate(captions):
        for ref in refs:
            norm = normalise_caption(ref)
            if norm in owner:
                a, b = find(owner[norm]), find(i)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[norm] = i
    firsts: dict[int, str] = {}
    for i, refs in enumerate(captions):
        root = find(i)
        first = normalise_caption(refs[0])
        firsts[root] = min(firsts.get(root, first), first)
    return ["caption:" + firsts[find(i)] for i in range(len(captions))]


def attach_retrieval(rows: list[dict], seed: int, split: str) -> None:
    """Mine 1 + 49 candidates over one split's rows (in place)."""
    try:
        mined = mine_retrieval_candidates(
            [r["captions"] for r in rows], [r["content_key"] for r in rows], seed=hash_seed(seed, split)
        )
    except ValueError as error:
        raise ValueError(
            f"split {split!r} ({len(rows)} images) is too small to mine retrieval candidates: {error}"
        ) from error
    for row, retrieval in zip(rows, mined):
        row["retrieval"] = retrieval


def partition(rows: list[dict], split: str, split_sizes: dict[str, int] | None, seed: int) -> dict[str, list[dict]]:
    """All rows in ``split``, or a seeded image-disjoint cut into ``split_sizes``."""
    if split_sizes is None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        return {split: list(rows)}
    unknown = sorted(set(split_sizes) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown} in split_sizes; splits are {', '.join(SPLITS)}")
    bad = {k: v for k, v in split_sizes.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"split_sizes must be positive integers, got {bad}")
    total = sum(split_sizes.values())
    if total > len(rows):
        raise ValueError(
            f"split_sizes ask for {total} images but only {len(rows)} usable records were read; "
            "lower the sizes (records left over are not written)"
        )
    order = list(range(len(rows)))
    random.Random(f"hones-split:{seed}").shuffle(order)
    out, start = {}, 0
    for name in SPLITS:  # a fixed order, whatever the order of the dict
        if name in split_sizes:
            out[name] = [rows[i] for i in order[start : start + split_sizes[name]]]
            start += split_sizes[name]
    return out


def finish_rows(rows_by_split: dict[str, list[dict]], seed: int, mine: bool) -> None:
    """Set each row's split and, where asked, its retrieval candidates."""
    for name, split_rows in rows_by_split.items():
        for row in split_rows:
            row["split"] = name
        if mine and split_rows:
            attach_retrieval(split_rows, seed, name)


# ---------------------------------------------------------------- the OCR visual prompt


def box_line_width(width: int, height: int) -> int:
    """Outline width in pixels: max(2, round(max(W, H) / 160)); 4 px on 640-pixel COCO."""
    return max(2, round(max(width, height) / 160))


def ocr_box_pixels(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel rectangle [x0, y0, x1, y1] (inclusive) a COCO [x, y, w, h] box covers."""
    x, y, w, h = bbox
    x0, y0 = math.floor(x), math.floor(y)
    x1, y1 = math.ceil(x + w) - 1, math.ceil(y + h) - 1
    return max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)


def draw_ocr_box(image: Image.Image, bbox) -> int:
    """Draw the blue outline just outside ``bbox`` in place; return its line width."""
    lw = box_line_width(*image.size)
    x, y, w, h = bbox
    outer = [math.floor(x) - lw, math.floor(y) - lw, math.ceil(x + w) - 1 + lw, math.ceil(y + h) - 1 + lw]
    ImageDraw.Draw(image).rectangle(outer, outline=OCR_BOX_COLOR, width=lw)
    return lw


def polygon_mask(polygon, width: int, height: int) -> bytes | None:
    """A COCO-Text polygon [x1, y1, x2, y2, ...] rasterised to PNG bytes (None if unusable)."""
    if not isinstance(polygon, (list, tuple)) or len(polygon) < 6 or len(polygon) % 2:
        return None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in polygon):
        return None
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).polygon([(polygon[i], polygon[i + 1]) for i in range(0, len(polygon), 2)], fill=255)
    return png_bytes(np.asarray(mask) > 0)


def _valid_bbox(bbox) -> bool:
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        and bbox[2] > 0
        and bbox[3] > 0
    )


# ---------------------------------------------------------------- one record


def _record_fields(record: dict, images_dir: Path, tasks=ALL_TASKS, missing: Counter | None = None) -> dict:
    """Check one unified record's fields (no image opened yet): the row but its image."""
    if not isinstance(record, dict):
        raise BadRecordError(
            None,
            None,
            "not_a_record",
            f"a record is a {type(record).__name__}, not an object",
            "give every entry of data a JSON object",
        )
    image_id = record.get("image_id")
    info = record.get("image_info")
    file_name = info.get("file_name") if isinstance(info, dict) else None
    path = images_dir / file_name if isinstance(file_name, str) and file_name else None
    if image_id is None:
        raise BadRecordError(
            None, path, "missing_field", "field image_id is missing", "give every record its COCO image_id"
        )
    if path is None:
        raise BadRecordError(
            image_id,
            None,
            "missing_field",
            "field image_info.file_name is missing",
            "give every record image_info.file_name (the COCO train2014 file name)",
        )
    return _task_fields(record, image_id, info, path, tasks, Counter() if missing is None else missing)


def _task_fields(record: dict, image_id, info: dict, path: Path, tasks, missing: Counter) -> dict:
    """The row of ``record`` with the fields of ``tasks`` checked; the fields of the other
    tasks are kept when usable, else left empty and counted in ``missing`` (per task)."""
    parts = {}
    for name, read in (("vqa", _vqa_part), ("caption", _caption_part), ("ocr", _ocr_part)):
        needed = name in tasks or (name == "caption" and "retrieval" in tasks)  # negatives are captions
        try:
            parts[name] = read(record, image_id, path)
        except BadRecordError:
            if needed:
                raise
            missing[name] += 1
            parts[name] = None
    vqa, ocr, captions = parts["vqa"], parts["ocr"], parts["caption"]
    return {
        "image_id": str(image_id),
        "split": "",
        "image": None,
        "objects": [],
        "ocr": ocr or dict(EMPTY_OCR),
        "vqa": vqa or dict(EMPTY_VQA),
        "captions": (captions or [])[:N_CAPTIONS],
        "retrieval": dict(EMPTY_RETRIEVAL),
        "content_key": "",
        "_path": path,
        "_size": (info.get("width"), info.get("height")),
        "_polygon": (record.get("ocr") or {}).get("mask") if ocr else None,
        "_n_captions": len(captions or []),
        "_box_drawn": bool((record.get("ocr") or {}).get("box_drawn", False)) if ocr else False,
    }


def _vqa_part(record: dict, image_id, path) -> dict:
    vqa = require(record, "vqa", image_id, path, "")
    question = require_text(vqa, "question", image_id, path, "vqa.", reason="missing_field")
    answer = require_text(vqa, "answer", image_id, path, "vqa.")
    all_answers = require(vqa, "all_answers", image_id, path, "vqa.")
    if not isinstance(all_answers, list) or not all_answers or not all(isinstance(a, str) for a in all_answers):
        raise BadRecordError(
            image_id,
            path,
            "empty_answer",
            f"field vqa.all_answers is not a non-empty list of strings ({all_answers!r})",
            "give the record its 10 VQAv2 human answers",
        )
    return {
        "question": question,
        "answer": answer,
        "all_answers": list(all_answers),
        "question_type": str(vqa.get("question_type") or ""),
        "answer_type": str(vqa.get("answer_type") or derived_answer_type(answer)),
    }


def _caption_part(record: dict, image_id, path) -> list[str]:
    captions_in = require(record, "captions", image_id, path, "")
    captions = (
        [c.get("caption", "").strip() if isinstance(c, dict) else str(c).strip() for c in captions_in]
        if isinstance(captions_in, list)
        else []
    )
    captions = [c for c in captions if c]
    if len(captions) < N_CAPTIONS:
        raise BadRecordError(
            image_id,
            path,
            "too_few_captions",
            f"the record has {len(captions)} non-empty captions, the benchmark needs {N_CAPTIONS}",
            f"give the record its {N_CAPTIONS} COCO reference captions",
        )
    return captions


def _ocr_part(record: dict, image_id, path) -> dict:
    ocr = require(record, "ocr", image_id, path, "")
    text = require_text(ocr, "text", image_id, path, "ocr.", reason="empty_ocr_text")
    bbox = require(ocr, "bbox", image_id, path, "ocr.")
    if not _valid_bbox(bbox):
        raise BadRecordError(
            image_id,
            path,
            "bad_bbox",
            f"field ocr.bbox {bbox!r} is not [x, y, w, h] with w, h > 0",
            "give ocr.bbox as the COCO-Text [x, y, width, height]",
        )
    return {"text": text, "bbox": [float(v) for v in bbox], "mask": None}


def _attach_image(row: dict, stats: Counter, draw_box: bool = True) -> dict:
    """Open the record's image, check its size, draw the OCR box (unless ``draw_box`` is
    False or the record says it is already drawn); fill ``image`` and ``ocr.mask``."""
    path, image_id, bbox = row.pop("_path"), row["image_id"], row["ocr"]["bbox"]
    want, polygon = row.pop("_size"), row.pop("_polygon")
    image = load_rgb(path, image_id, "COCO train2014")
    width, height = image.size
    if want != (None, None) and want != (width, height):
        raise BadRecordError(
            image_id,
            path,
            "size_mismatch",
            f"the image is {width}x{height} but image_info says {want[0]}x{want[1]}",
            "use the original COCO train2014 image (not a resized copy): the boxes refer to its pixels",
        )
    if not bbox:  # no OCR annotation (a task the user does not study): no box drawn
        row.pop("_box_drawn", None)
        row["image"] = image_bytes(image)
        stats["captions_truncated"] += row.pop("_n_captions") > N_CAPTIONS
        return row
    x0, y0, x1, y1 = ocr_box_pixels(bbox, width, height)
    if x0 > x1 or y0 > y1:
        raise BadRecordError(
            image_id,
            path,
            "bbox_outside_image",
            f"ocr.bbox {bbox!r} lies outside the {width}x{height} image",
            "check that the record and the image belong together",
        )
    bx, by, bw, bh = bbox
    stats["ocr_bbox_clipped"] += bx < 0 or by < 0 or bx + bw > width or by + bh > height
    stats["captions_truncated"] += row.pop("_n_captions") > N_CAPTIONS
    if draw_box and not row.pop("_box_drawn", False):
        draw_ocr_box(image, bbox)
        stats["ocr_box_drawn"] += 1
    row.pop("_box_drawn", None)
    row["ocr"]["mask"] = polygon_mask(polygon, width, height)
    stats["ocr_mask_missing"] += row["ocr"]["mask"] is None
    row["image"] = image_bytes(image)
    return row


def read_records(json_path: Path) -> list:
    return _read_payload(json_path)[0]


def _read_payload(json_path: Path) -> tuple[list, bool]:
    """(records, whether the file says every image already has its OCR box drawn: a
    top-level ``"ocr_box_drawn": true``)."""
    if not json_path.is_file():
        raise FileNotFoundError(f"HONES records file {json_path} does not exist")
    try:
        payload = json.loads(json_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path} is not valid JSON ({error}); pass the official HONES records file") from error
    records = payload.get("data") if isinstance(payload, dict) else payload
    if not isinstance(records, list):
        raise ValueError(
            f'{json_path} is not a HONES records file: expected {{"data": [record, ...]}} '
            "(e.g. hones_coco_dev_split.json)"
        )
    drawn = payload.get("ocr_box_drawn", False) if isinstance(payload, dict) else False
    if not isinstance(drawn, bool):
        raise ValueError(f'{json_path}: "ocr_box_drawn" must be true or false, got {drawn!r}')
    return records, drawn


def import_hones(
    json_path,
    images_dir,
    out_dir,
    seed: int = 3407,
    split_sizes: dict[str, int] | None = None,
    skip_bad: bool = False,
    *,
    split: str = "dev",
    limit: int | None = None,
    progress: bool = True,
    draw_box: bool = True,
    tasks=None,
) -> dict:
    """Import HONES unified records + COCO images into a benchmark at ``out_dir``.

    ``draw_box``: draw the blue OCR outline into the pixels (the paper's visual prompt,
    the default); False keeps every image as it is (the reference code draws nothing
    itself). The records file can say a box is already drawn: ``ocr.box_drawn: true`` on
    a record, or a top-level ``"ocr_box_drawn": true`` for all; those images are kept.

    ``tasks`` (default all four): the tasks whose fields every record must carry; a record
    without usable fields of another task is kept with that task's fields empty (counted in
    the report's ``missing_task_fields``; running that task then names the item). Retrieval
    candidates are mined only when retrieval is among ``tasks``.

    ``split``: the split every record goes to when ``split_sizes`` is None. ``split_sizes``
    ({split: n_images}): a seeded image-disjoint partition instead (records left over are
    not written). ``limit``: only the first ``limit`` records of the file. Returns a report:
    counts per split, records read / written, skipped records by reason with their ids,
    and the counts of clipped boxes, truncated captions and missing masks.
    """
    from tqdm.auto import tqdm

    json_path, images_dir = Path(json_path), Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"images_dir {images_dir} is not a folder; pass the COCO train2014 image folder "
            "(the one holding COCO_train2014_*.jpg)"
        )
    tasks = tuple(ALL_TASKS if tasks is None else tasks)
    unknown = sorted(set(tasks) - set(ALL_TASKS))
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown task(s) {unknown or tasks!r}; choose among {', '.join(ALL_TASKS)}")
    records, file_says_drawn = _read_payload(json_path)
    draw_box = draw_box and not file_says_drawn
    if limit is not None:
        records = records[:limit]
    # every record's fields first (fast), so a bad field stops the import before any image is read
    log, stats, checked, seen, missing = SkipLog(skip_bad), Counter(), [], set(), Counter()
    for record in records:
        try:
            row = _record_fields(record, images_dir, tasks, missing)
            if row["image_id"] in seen:
                raise BadRecordError(
                    row["image_id"],
                    row["_path"],
                    "duplicate_image_id",
                    "another record has the same image_id",
                    "keep one record per image (splits must be image-disjoint)",
                )
        except BadRecordError as error:
            log.handle(error)
            continue
        seen.add(row["image_id"])
        checked.append(row)
    rows = []
    for row in tqdm(checked, desc="importing HONES images", disable=not progress, leave=False):
        try:
            rows.append(_attach_image(row, stats, draw_box))
        except BadRecordError as error:
            log.handle(error)
    if not rows:
        skipped = log.report()["skipped_by_reason"]
        raise ValueError(f"no usable record in {json_path} ({len(records)} read, all skipped: {skipped})")
    with_captions = [r for r in rows if r["captions"]]
    for row, key in zip(with_captions, caption_content_keys([r["captions"] for r in with_captions])):
        row["content_key"] = key
    for row in rows:
        if not row["captions"]:
            row["content_key"] = f"image:{row['image_id']}"
    rows_by_split = partition(rows, split, split_sizes, seed)
    finish_rows(rows_by_split, seed, mine="retrieval" in tasks)
    report = {
        "source": "hones-coco",
        "input": str(json_path),
        "input_sha256": file_sha256(json_path),
        "seed": seed,
        "n_records": len(records),
        "n_written": sum(len(v) for v in rows_by_split.values()),
        "n_unused": len(rows) - sum(len(v) for v in rows_by_split.values()),
        "splits": {k: len(v) for k, v in rows_by_split.items()},
        "ocr_bbox_clipped": stats["ocr_bbox_clipped"],
        "captions_truncated": stats["captions_truncated"],
        "ocr_mask_missing": stats["ocr_mask_missing"],
        "ocr_box_drawn": stats["ocr_box_drawn"],
        "tasks": list(tasks),
        "missing_task_fields": dict(sorted(missing.items())),
        **log.report(),
    }
    manifest = {
        "source": "hones-coco",
        "importer": IMPORTER_VERSION,
        "input": json_path.name,
        "input_sha256": report["input_sha256"],
        "seed": seed,
        "split_sizes": split_sizes,
        "ocr_box": {
            "color": list(OCR_BOX_COLOR),
            "line_width": "max(2, round(max(W, H) / 160)), outside the box",
            "drawn_by_importer": stats["ocr_box_drawn"],
            "draw_box": draw_box,
        },
        "content_key": "normalised-caption groups",
        "n_records": report["n_records"],
        "n_skipped": report["n_skipped"],
        "skipped_by_reason": report["skipped_by_reason"],
        "tasks": list(tasks),
        "missing_task_fields": report["missing_task_fields"],
    }
    write_benchmark(out_dir, rows_by_split, manifest)
    report["out_dir"] = str(out_dir)
    return report
