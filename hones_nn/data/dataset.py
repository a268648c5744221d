"""The on-disk benchmark layout shared by the synthetic data and every real-data importer.

A benchmark is a folder::

    DIR/
      data/{split}-00000-of-00001.parquet   one row per image, a Hugging Face `datasets`
                                            table (images as PNG bytes, `Image` feature)
      hones_dataset.json                    what built it: source, seed, counts, version

      README.md                             a dataset card whose YAML maps the splits

so plain ``datasets.load_dataset(DIR)`` opens it (all four splits) as well as
:func:`load_split` does.

One row per image, unified over the four tasks as in the official HONES records:

* ``image_id`` (str), ``split`` (str), ``image`` (Image: PNG bytes)
* ``objects``: list of {kind, color, column, row, bbox [x0, y0, x1, y1], mask (PNG bytes)}
  (ground-truth masks; empty where the source has none)
* ``ocr``: {text, bbox [x, y, w, h], mask (PNG bytes or null)}
* ``vqa``: {question, answer, all_answers (10), question_type, answer_type}
* ``captions``: list of reference captions (5)
* ``retrieval``: {candidates (1 positive + 49 hard negatives, shuffled), positive_index}
* ``content_key``: what a caption of the image describes (used to keep false negatives
  out of retrieval candidates; the caption text itself where nothing better is known)
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np

from hones_nn.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_with

SPLITS = ("train", "discovery", "dev", "test")
EVAL_SPLITS = ("discovery", "dev", "test")
N_NEGATIVES = 49
MANIFEST = "hones_dataset.json"


def features():
    """The `datasets` Features of a benchmark row."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "image_id": Value("string"),
            "split": Value("string"),
            "image": Image(),
            "objects": List(
                {
                    "kind": Value("string"),
                    "color": Value("string"),
                    "column": Value("int32"),
                    "row": Value("int32"),
                    "bbox": List(Value("float32")),
                    "mask": Value("binary"),
                }
            ),
            "ocr": {"text": Value("string"), "bbox": List(Value("float32")), "mask": Value("binary")},
            "vqa": {
                "question": Value("string"),
                "answer": Value("string"),
                "all_answers": List(Value("string")),
                "question_type": Value("string"),
                "answer_type": Value("string"),
            },
            "captions": List(Value("string")),
            "retrieval": {"candidates": List(Value("string")), "positive_index": Value("int32")},
            "content_key": Value("string"),
        }
    )


def split_path(root: str | Path, split: str) -> Path:
    return Path(root) / "data" / f"{split}-00000-of-00001.parquet"


def write_benchmark(root: str | Path, rows_by_split: dict[str, list[dict]], manifest: dict) -> Path:
    """Write each split as one Parquet file (atomically), then the manifest."""
    from datasets import Dataset

    root = Path(root)
    feats = features()
    counts = {}
    # split files of an earlier build would be read by a plain `load_dataset(data_dir=...)`
    for stale in (root / "data").glob("*.parquet") if (root / "data").exists() else []:
        if stale.name.split("-")[0] not in rows_by_split or not rows_by_split[stale.name.split("-")[0]]:
            stale.unlink()
    for split, rows in rows_by_split.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        if not rows:
            continue
        table = Dataset.from_list(rows, features=feats)
        atomic_write_with(split_path(root, split), lambda p, t=table: t.to_parquet(p))
        counts[split] = len(rows)
    atomic_write_json(root / MANIFEST, {**manifest, "splits": counts})
    atomic_write_bytes(root / "README.md", _dataset_card(manifest, counts).encode())
    return root


def _dataset_card(manifest: dict, counts: dict) -> str:
    files = "\n".join(f"  - split: {split}\n    path: data/{split}-00000-of-00001.parquet" for split in counts)
    return (
        f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}\n---\n\n"
        f"# hones-nn benchmark ({manifest.get('source', 'unknown')})\n\n"
        "One row per image; the four tasks (VQA, OCR, caption, retrieval) share the images.\n"
        "Built by hones-nn; see hones_dataset.json for how. Open with `datasets.load_dataset(<this folder>)`.\n"
    )


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{root} is not a hones-nn benchmark (no {MANIFEST}); build one with "
            "`hones-nn data build-synthetic --out-dir DIR` or import one with `hones-nn data import-hones`"
        )
    return json.loads(path.read_text())


def load_split(root: str | Path, split: str):
    """One split as a `datasets.Dataset` (images decode to PIL on access)."""
    from datasets import Dataset

    manifest = read_manifest(root)
    path = split_path(root, split)
    if split not in manifest.get("splits", {}) or not path.exists():
        available = ", ".join(sorted(manifest.get("splits", {}))) or "none"
        raise ValueError(f"benchmark {root} has no split {split!r} (available: {available})")
    import pyarrow.parquet as pq

    if pq.read_metadata(path).num_rows == 0:
        raise ValueError(f"split {split!r} of {root} has no examples; rebuild it with more images")
    dataset = Dataset.from_parquet(str(path), features=features())
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {root} has no examples; rebuild it with more images")
    return dataset


# ---------------------------------------------------------------- retrieval candidates

_WORD = re.compile(r"[a-z0-9]+")


def _terms(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [a + " " + b for a, b in itertools.pairwise(words)]


class _TfidfIndex:
    """L2-normalised TF-IDF over word unigrams and bigrams, kept sparse (an inverted
    index), so mining scales to tens of thousands of captions with little memory."""

    def __init__(self, texts: list[str]):
        docs = [Counter(_terms(t)) for t in texts]
        df = Counter(term for d in docs for term in d)
        n = len(docs)
        idf = {term: math.log((1 + n) / (1 + c)) + 1.0 for term, c in df.items()}
        self.n = n
        self.rows: list[dict[str, float]] = []
        postings: dict[str, list[tuple[int, float]]] = {}
        for row, d in enumerate(docs):
            weights = {term: c * idf[term] for term, c in d.items()}
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            weights = {term: w / norm for term, w in weights.items()}
            self.rows.append(weights)
            for term, w in weights.items():
                postings.setdefault(term, []).append((row, w))
        self.postings = {
            term: (np.array([r for r, _ in p], dtype=np.int64), np.array([w for _, w in p]))
            for term, p in postings.items()
        }

    def similarities(self, row: int) -> np.ndarray:
        sims = np.zeros(self.n)
        for term, w in self.rows[row].items():
            docs, weights = self.postings[term]
            np.add.at(sims, docs, w * weights)
        return sims


def mine_retrieval_candidates(
    captions: list[list[str]],
    content_keys: list[str],
    seed: int,
    n_negatives: int = N_NEGATIVES,
    negatives: str = "hard",
) -> list[dict]:
    """For each image: one positive (a random own reference) and the ``n_negatives`` most
    similar captions of other images of the same split, shuffled (``negatives="hard"``), or
    ``n_negatives`` captions of other images drawn at random (``negatives="random"``).

    Similarity is TF-IDF cosine over word unigrams and bigrams. The paper ranks by a
    pretrained sentence embedding; none can be downloaded here, and the reference code
    uses word overlap, which this refines. Captions of images with the same
    ``content_key`` (the same described content) are never negatives: they would be
    correct descriptions. Identical caption strings are kept once.
    """
    if negatives not in ("hard", "random"):
        raise ValueError(f"negatives={negatives!r}: choose 'hard' (TF-IDF-nearest captions) or 'random'")
    rng = random.Random(f"retrieval:{seed}")
    pool_texts, pool_owner = [], []
    for owner, refs in enumerate(captions):
        for ref in refs:
            pool_texts.append(ref)
            pool_owner.append(owner)
    hard = negatives == "hard"
    pool = _TfidfIndex(pool_texts) if hard else None
    pool_owner_arr = np.array(pool_owner)
    keys = np.array(content_keys, dtype=object)
    out = []
    offset = 0
    for owner, refs in enumerate(captions):
        positive = refs[rng.randrange(len(refs))]
        if hard:
            sims = pool.similarities(offset + refs.index(positive))
        else:  # random: every caption of another image equally likely
            sims = np.array([rng.random() for _ in range(len(pool_texts))])
        offset += len(refs)
        excluded = keys[pool_owner_arr] == content_keys[owner]
        sims = np.where(excluded, -np.inf, sims)
        order = np.lexsort((np.arange(len(sims)), -sims))  # most similar first, stable
        chosen, seen = [], {positive}
        for j in order:
            if not math.isfinite(sims[j]):
                break
            text = pool_texts[j]
            if text in seen:
                continue
            seen.add(text)
            chosen.append(text)
            if len(chosen) == n_negatives:
                break
        if len(chosen) < n_negatives:
            raise ValueError(
                f"image {owner} of the split has only {len(chosen)} usable negative captions "
                f"(need {n_negatives}); the split is too small for retrieval: use more images"
            )
        candidates = [positive] + chosen
        order_idx = list(range(len(candidates)))
        rng.shuffle(order_idx)
        shuffled = [candidates[i] for i in order_idx]
        out.append({"candidates": shuffled, "positive_index": order_idx.index(0)})
    return out
