"""Concepts of a benchmark and their ground-truth pixel masks.

A *visual concept* is a word naming something the data marks in the image:

* an object attribute: every distinct ``objects[].kind`` (circle, square, ...) and
  ``objects[].color`` (red, green, ...) of the split; its mask is the union of the masks
  of the objects with that kind / colour;
* ``text``: the OCR box (``ocr.mask``).

Masks are the PNG bytes the benchmark stores (the synthetic generator writes exact shape
masks); rows whose object has an empty mask are skipped, and a concept no row has a mask
for is an error that says so.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

TEXT_CONCEPT = "text"


def decode_mask(data: bytes | None) -> np.ndarray | None:
    """A bool (H, W) mask from PNG bytes (None for missing / empty bytes)."""
    if not data:
        return None
    image = Image.open(io.BytesIO(data))
    array = np.asarray(image.convert("L")) > 0
    return array


@dataclass
class ConceptImage:
    row: int  # row of the split
    image_id: str
    mask: np.ndarray  # bool (H, W), pixels of the concept
    other_words: list[str]  # the concept words of the OTHER objects of the image (for the caption check)


def _records(dataset):
    columns = [c for c in ("image_id", "objects", "ocr") if c in dataset.column_names]
    return dataset.with_format(None).select_columns(columns)


def available_concepts(dataset, with_mask: bool = True) -> list[str]:
    """Every concept name with at least one mask in the split (``with_mask=False``: named at
    all, mask or not), sorted (colours, kinds, then text)."""
    rows = _records(dataset)
    colors, kinds, text = set(), set(), False
    for record in rows:
        for obj in record.get("objects") or []:
            if obj.get("mask") or not with_mask:
                colors.update([obj["color"]] if obj.get("color") else [])
                kinds.update([obj["kind"]] if obj.get("kind") else [])
        ocr = record.get("ocr") or {}
        if ocr.get("mask") or (not with_mask and ocr.get("text")):
            text = True
    return sorted(colors) + sorted(kinds) + ([TEXT_CONCEPT] if text else [])


def words_of(obj: dict) -> list[str]:
    return [w for w in (obj.get("color"), obj.get("kind")) if w]


def concept_images(dataset, concept: str, limit: int | None = None, split: str = "?") -> list[ConceptImage]:
    """The first ``limit`` rows whose image shows ``concept`` with a mask, in row order."""
    rows = _records(dataset)
    out: list[ConceptImage] = []
    named_without_mask = 0
    for row, record in enumerate(rows):
        if limit is not None and len(out) >= limit:
            break
        objects = record.get("objects") or []
        if concept == TEXT_CONCEPT:
            ocr = record.get("ocr") or {}
            mask = decode_mask(ocr.get("mask"))
            if ocr.get("text") and mask is None:
                named_without_mask += 1
            if mask is None or not mask.any():
                continue
            others = [w for obj in objects for w in words_of(obj)]
            out.append(ConceptImage(row, record["image_id"], mask, others))
            continue
        matching = [obj for obj in objects if concept in (obj.get("color"), obj.get("kind"))]
        if not matching:
            continue
        masks = [decode_mask(obj.get("mask")) for obj in matching]
        if any(m is None for m in masks):
            named_without_mask += 1
            continue
        mask = np.logical_or.reduce(masks)
        if not mask.any():
            continue
        others = [w for obj in objects if obj not in matching for w in words_of(obj)]
        out.append(ConceptImage(row, record["image_id"], mask, others))
    if not out:
        known = available_concepts(dataset)
        if named_without_mask:
            raise ValueError(
                f"concept {concept!r}: {named_without_mask} image(s) of split {split!r} show it but none has a mask "
                "for it; the perturbation needs ground-truth masks (use data with masks, e.g. "
                "`hones-nn data build-synthetic`)"
            )
        raise ValueError(
            f"unknown concept {concept!r}: no image of split {split!r} has it with a mask; "
            f"known concepts: {', '.join(known) or 'none (this data has no masks)'}"
        )
    return out


def parse_concepts(spec: str | None, dataset, split: str = "?") -> list[str]:
    """``--concepts``: comma-separated names, or None / 'all' for every available concept."""
    known = available_concepts(dataset)
    if spec in (None, "", "all"):
        if not known:
            raise ValueError(
                f"split {split!r} has no object or text masks, so no visual concept to perturb; "
                "use data with masks (e.g. `hones-nn data build-synthetic`)"
            )
        return known
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("--concepts is empty; give comma-separated concept names or 'all'")
    unknown = [n for n in names if n not in known]
    maskless = [n for n in unknown if n in available_concepts(dataset, with_mask=False)]
    if maskless:
        raise ValueError(
            f"concept(s) {', '.join(map(repr, maskless))}: split {split!r} shows them but has no mask "
            "for them; the perturbation needs ground-truth masks (use data with masks, e.g. "
            f"`hones-nn data build-synthetic`); concepts with masks: {', '.join(known) or 'none'}"
        )
    if unknown:
        raise ValueError(
            f"unknown concept(s) {', '.join(map(repr, unknown))} in split {split!r}; "
            f"known: {', '.join(known) or 'none (this data has no masks)'}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--concepts names a concept twice: {spec!r}")
    return names


def image_concepts(record: dict) -> list[str]:
    """All concept names one record shows (object colours and kinds, and text if it has a box)."""
    names = [w for obj in record.get("objects") or [] for w in words_of(obj)]
    ocr = record.get("ocr") or {}
    if ocr.get("text"):
        names.append(TEXT_CONCEPT)
    return names
