"""Out-of-distribution benchmarks (paper section 5 / appendix F.3) in the shared layout.

* GQA (VQA): a questions file (``{qid: {imageId, question, answer, fullAnswer, types}}``,
  e.g. ``testdev_balanced_questions.json``) and the GQA ``images`` folder
  (``{imageId}.jpg``). GQA has one answer per question, so ``all_answers`` is 10 copies
  of it (VQAv2 accuracy then is exact match); ``question_type`` is ``types.structural``
  (verify, query, choose, logical, compare), ``answer_type`` is derived from the answer
  (yes/no, number, other).
* TextVQA (OCR-flavoured VQA): ``TextVQA_0.5.1_{train,val}.json``
  (``{"data": [{question_id, image_id, question, answers (10)}]}``) and its image folder
  (``{image_id}.jpg``, ``train_images`` for train and val). Rows carry the VQA fields and
  ``ocr.text`` = the most common of the 10 answers (ties: the first given), ``ocr.bbox``
  = [] (TextVQA has no box, so no blue box is drawn), ``ocr.mask`` null;
  ``question_type`` is "textvqa".
* Flickr30k (caption and retrieval): Karpathy's ``dataset_flickr30k.json``
  (``{"images": [{filename, split, sentences: [{raw}]}]}``) and ``flickr30k-images``:
  5 captions per image, retrieval candidates mined over the written split as for COCO
  (content keys from :func:`hones_nn.data.hones_records.caption_content_keys`).

Rows hold one image each, with one question (GQA, TextVQA: ``questions_per_image=1``
picks one per image with the seed; with more, each question is its own row and its
``image_id`` is ``"{image}#{question_id}"``, so rows of one image may then share it).
Fields a source does not have are empty (``captions`` [], ``retrieval`` no candidates
and ``positive_index`` -1, ``vqa`` empty strings). ``max_images`` draws a seeded subset of
images before any is opened. Everything goes into one split (``split``, default "test").
Bad input follows :mod:`hones_nn.data.hones_records`: a :class:`BadRecordError` naming the
image id, path and fix, or with ``skip_bad=True`` a count by reason in the report.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from hones_nn.data.dataset import write_benchmark
from hones_nn.data.hones_records import (
    EMPTY_OCR,
    EMPTY_RETRIEVAL,
    EMPTY_VQA,
    N_CAPTIONS,
    BadRecordError,
    SkipLog,
    caption_content_keys,
    derived_answer_type,
    file_sha256,
    finish_rows,
    image_bytes,
    load_rgb,
    partition,
    require,
    require_text,
)

OOD_VERSION = "ood-v1"


def _read_json(path: Path, what: str, example: str):
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); pass the {what} file ({example})") from error


def _check_images_dir(images_dir: Path, what: str) -> None:
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images_dir {images_dir} is not a folder; pass the {what} image folder")


def _row(image_id: str, image, *, vqa=None, ocr=None, captions=None, content_key: str) -> dict:
    return {
        "image_id": image_id,
        "split": "",
        "image": image_bytes(image),
        "objects": [],
        "ocr": dict(ocr or EMPTY_OCR),
        "vqa": dict(vqa or EMPTY_VQA),
        "captions": list(captions or []),
        "retrieval": dict(EMPTY_RETRIEVAL),
        "content_key": content_key,
    }


def _select_questions(
    by_image: dict[str, list], questions_per_image: int | None, max_images: int | None, rng: random.Random
) -> list[tuple[str, list]]:
    """Seeded: a subset of images (sorted ids first), then up to n questions of each."""
    if questions_per_image is not None and questions_per_image < 1:
        raise ValueError(f"questions_per_image must be at least 1 (or None for all), got {questions_per_image}")
    images = sorted(by_image)
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        images = sorted(rng.sample(images, min(max_images, len(images))))
    out = []
    for image in images:
        items = by_image[image]
        if questions_per_image is not None and len(items) > questions_per_image:
            items = sorted(rng.sample(items, questions_per_image), key=lambda item: str(item[0]))
        out.append((image, items))
    return out


def _finish(
    source: str,
    input_path: Path,
    out_dir,
    rows: list[dict],
    split: str,
    seed: int,
    n_input: int,
    log: SkipLog,
    mine: bool,
    extra: dict,
) -> dict:
    if not rows:
        raise ValueError(
            f"no usable {source} item in {input_path} ({n_input} read; skipped: {log.report()['skipped_by_reason']})"
        )
    rows_by_split = partition(rows, split, None, seed)
    finish_rows(rows_by_split, seed, mine=mine)
    sha = file_sha256(input_path)
    report = {
        "source": source,
        "input": str(input_path),
        "input_sha256": sha,
        "seed": seed,
        "n_records": n_input,
        "n_written": len(rows),
        "splits": {split: len(rows)},
        **extra,
        **log.report(),
    }
    manifest = {
        "source": source,
        "importer": OOD_VERSION,
        "input": input_path.name,
        "input_sha256": sha,
        "seed": seed,
        **extra,
        "n_records": n_input,
        "n_skipped": report["n_skipped"],
        "skipped_by_reason": report["skipped_by_reason"],
    }
    write_benchmark(out_dir, rows_by_split, manifest)
    report["out_dir"] = str(out_dir)
    return report


def _row_id(image: str, question_id, n_for_image_max: int) -> str:
    return image if n_for_image_max == 1 else f"{image}#{question_id}"


# ---------------------------------------------------------------- GQA


def load_gqa(
    questions_json,
    images_dir,
    out_dir,
    split: str = "test",
    seed: int = 3407,
    skip_bad: bool = False,
    questions_per_image: int | None = 1,
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """GQA questions + images -> a VQA benchmark at ``out_dir``; returns a report."""
    from tqdm.auto import tqdm

    questions_json, images_dir = Path(questions_json), Path(images_dir)
    _check_images_dir(images_dir, "GQA (images/{imageId}.jpg)")
    payload = _read_json(questions_json, "GQA questions", "e.g. testdev_balanced_questions.json")
    if not isinstance(payload, dict):
        raise ValueError(f"{questions_json} is not a GQA questions file: expected {{question_id: question, ...}}")
    log = SkipLog(skip_bad)
    by_image: dict[str, list] = {}
    for qid, q in payload.items():
        image = q.get("imageId") if isinstance(q, dict) else None
        if not isinstance(image, str) or not image:
            log.handle(
                BadRecordError(
                    None,
                    None,
                    "missing_field",
                    f"GQA question {qid} has no imageId",
                    "give every question its imageId (as in the official GQA files)",
                )
            )
            continue
        by_image.setdefault(image, []).append((qid, q))
    selected = _select_questions(by_image, questions_per_image, max_images, random.Random(f"gqa:{seed}"))
    n_max = max((len(items) for _, items in selected), default=1)
    rows = []
    for image, items in tqdm(selected, desc="importing GQA", disable=not progress, leave=False):
        path = images_dir / f"{image}.jpg"
        try:
            fields = []
            for qid, q in items:
                question = require_text(q, "question", image, path, f"questions[{qid}].", reason="missing_field")
                answer = require_text(q, "answer", image, path, f"questions[{qid}].")
                types = q.get("types") if isinstance(q.get("types"), dict) else {}
                fields.append(
                    (
                        qid,
                        {
                            "question": question,
                            "answer": answer,
                            "all_answers": [answer] * 10,
                            "question_type": str(types.get("structural") or types.get("semantic") or ""),
                            "answer_type": derived_answer_type(answer),
                        },
                    )
                )
            picture = load_rgb(path, image, "GQA")
        except BadRecordError as error:
            log.handle(error)
            continue
        for qid, vqa in fields:
            rows.append(_row(_row_id(image, qid, n_max), picture, vqa=vqa, content_key=f"image:{image}"))
    return _finish(
        "gqa",
        questions_json,
        out_dir,
        rows,
        split,
        seed,
        len(payload),
        log,
        mine=False,
        extra={"questions_per_image": questions_per_image, "max_images": max_images},
    )


# ---------------------------------------------------------------- TextVQA


def load_textvqa(
    textvqa_json,
    images_dir,
    out_dir,
    split: str = "test",
    seed: int = 3407,
    skip_bad: bool = False,
    questions_per_image: int | None = 1,
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """TextVQA 0.5.1 questions + images -> OCR-flavoured VQA rows at ``out_dir``; a report."""
    from tqdm.auto import tqdm

    textvqa_json, images_dir = Path(textvqa_json), Path(images_dir)
    _check_images_dir(images_dir, "TextVQA (train_images/{image_id}.jpg)")
    payload = _read_json(textvqa_json, "TextVQA", "e.g. TextVQA_0.5.1_val.json")
    records = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(records, list):
        raise ValueError(f'{textvqa_json} is not a TextVQA file: expected {{"data": [question, ...]}}')
    log = SkipLog(skip_bad)
    by_image: dict[str, list] = {}
    for q in records:
        image = q.get("image_id") if isinstance(q, dict) else None
        if not isinstance(image, str) or not image:
            qid = q.get("question_id") if isinstance(q, dict) else repr(q)
            log.handle(
                BadRecordError(
                    None,
                    None,
                    "missing_field",
                    f"TextVQA question {qid} has no image_id",
                    "give every question its image_id (as in TextVQA_0.5.1_*.json)",
                )
            )
            continue
        by_image.setdefault(image, []).append((q.get("question_id"), q))
    selected = _select_questions(by_image, questions_per_image, max_images, random.Random(f"textvqa:{seed}"))
    n_max = max((len(items) for _, items in selected), default=1)
    rows = []
    for image, items in tqdm(selected, desc="importing TextVQA", disable=not progress, leave=False):
        path = images_dir / f"{image}.jpg"
        try:
            fields = []
            for qid, q in items:
                question = require_text(q, "question", image, path, f"questions[{qid}].", reason="missing_field")
                answers = q.get("answers")
                if not isinstance(answers, list) or not answers:
                    raise BadRecordError(
                        image,
                        path,
                        "missing_field",
                        f"question {qid} has no answers",
                        "use the train or val file (TextVQA's test answers are not public)",
                    )
                answers = [a.strip() if isinstance(a, str) else "" for a in answers]
                if not all(answers):
                    raise BadRecordError(
                        image,
                        path,
                        "empty_answer",
                        f"question {qid} has an empty answer among {answers!r}",
                        "drop the question or give it 10 non-empty answers",
                    )
                answer = Counter(answers).most_common(1)[0][0]  # ties: the first given
                fields.append(
                    (
                        qid,
                        {
                            "question": question,
                            "answer": answer,
                            "all_answers": answers,
                            "question_type": "textvqa",
                            "answer_type": derived_answer_type(answer),
                        },
                    )
                )
            picture = load_rgb(path, image, "TextVQA")
        except BadRecordError as error:
            log.handle(error)
            continue
        for qid, vqa in fields:
            rows.append(
                _row(
                    _row_id(image, qid, n_max),
                    picture,
                    vqa=vqa,
                    ocr={"text": vqa["answer"], "bbox": [], "mask": None},
                    content_key=f"image:{image}",
                )
            )
    return _finish(
        "textvqa",
        textvqa_json,
        out_dir,
        rows,
        split,
        seed,
        len(records),
        log,
        mine=False,
        extra={"questions_per_image": questions_per_image, "max_images": max_images},
    )


# ---------------------------------------------------------------- Flickr30k


def load_flickr30k(
    karpathy_json,
    images_dir,
    out_dir,
    split: str = "test",
    seed: int = 3407,
    skip_bad: bool = False,
    karpathy_split: str | None = "test",
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """Karpathy's dataset_flickr30k.json + flickr30k-images -> captions (5) and mined
    retrieval candidates at ``out_dir``; ``karpathy_split`` ("train", "val", "test" or None
    for all) picks the images. Returns a report."""
    from tqdm.auto import tqdm

    karpathy_json, images_dir = Path(karpathy_json), Path(images_dir)
    _check_images_dir(images_dir, "Flickr30k (flickr30k-images)")
    payload = _read_json(karpathy_json, "Flickr30k Karpathy", "dataset_flickr30k.json")
    records = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(records, list):
        raise ValueError(f'{karpathy_json} is not a Karpathy split file: expected {{"images": [image, ...]}}')
    wanted = [
        r for r in records if karpathy_split is None or (isinstance(r, dict) and r.get("split") == karpathy_split)
    ]
    if not wanted:
        found = sorted({str(r.get("split")) for r in records if isinstance(r, dict)})
        raise ValueError(f"{karpathy_json} has no image in Karpathy split {karpathy_split!r} (splits found: {found})")
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        keep = set(random.Random(f"flickr30k:{seed}").sample(range(len(wanted)), min(max_images, len(wanted))))
        wanted = [r for i, r in enumerate(wanted) if i in keep]
    log, rows, seen = SkipLog(skip_bad), [], set()
    for record in tqdm(wanted, desc="importing Flickr30k", disable=not progress, leave=False):
        try:
            filename = require(record, "filename", None, None, "")
            image = Path(str(filename)).stem
            path = images_dir / str(filename)
            sentences = require(record, "sentences", image, path, "")
            captions = (
                [s.get("raw", "").strip() if isinstance(s, dict) else "" for s in sentences]
                if isinstance(sentences, list)
                else []
            )
            captions = [c for c in captions if c]
            if len(captions) < N_CAPTIONS:
                raise BadRecordError(
                    image,
                    path,
                    "too_few_captions",
                    f"the image has {len(captions)} non-empty captions, the benchmark needs {N_CAPTIONS}",
                    f"give the image its {N_CAPTIONS} Flickr30k sentences",
                )
            if image in seen:
                raise BadRecordError(
                    image, path, "duplicate_image_id", "another entry has the same filename", "keep one entry per image"
                )
            picture = load_rgb(path, image, "Flickr30k")
        except BadRecordError as error:
            log.handle(error)
            continue
        seen.add(image)
        rows.append(_row(image, picture, captions=captions[:N_CAPTIONS], content_key=""))
    for row, key in zip(rows, caption_content_keys([r["captions"] for r in rows])):
        row["content_key"] = key
    return _finish(
        "flickr30k",
        karpathy_json,
        out_dir,
        rows,
        split,
        seed,
        len(wanted),
        log,
        mine=True,
        extra={"karpathy_split": karpathy_split, "max_images": max_images},
    )
