"""Target tokens: which vocabulary entries a task's gold continuation names.

Direct-projection methods (HONES's u_y, DLA, LLM-Knowledge, Pan et al., the logit lens)
read the model's unembedding rows of these tokens; the tokenization rules live here once,
so every method and task agrees on them (reference: docs/reference-code-behaviour.md,
"Neurons"):

* ``encode(text, add_special_tokens=False)``, every special id (unk included) removed,
  duplicates kept, at most :data:`MAX_TARGET_TOKENS`;
* caption IDF weights ``idf(t) = ln((n+1)/(df(t)+1)) + 1``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

MAX_TARGET_TOKENS = 128


def special_ids(tokenizer) -> set[int]:
    """The tokenizer's special ids, unk included."""
    ids = set(tokenizer.all_special_ids)
    if tokenizer.unk_token_id is not None:
        ids.add(tokenizer.unk_token_id)
    return ids


def target_token_ids(tokenizer, text: str, limit: int = MAX_TARGET_TOKENS) -> list[int]:
    """encode(text) without special tokens, specials (unk included) removed, duplicates kept."""
    special = special_ids(tokenizer)
    ids = [t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t not in special]
    return ids[:limit]


def caption_idf(tokenizer, items: Iterable) -> dict[int, float]:
    """idf(t) = ln((n+1)/(df(t)+1)) + 1 over the split's references.

    One document per IMAGE, in both modes (the paper and the reference code agree): the
    set of the tokens of all the image's references, each reference encoded on its own;
    n is the number of images.
    """
    documents = []
    for item in items:
        refs = item.data["references"]
        documents.append({t for r in refs for t in target_token_ids(tokenizer, r)})
    df = Counter(t for doc in documents for t in doc)
    n = len(documents)
    return {t: math.log((n + 1) / (d + 1)) + 1.0 for t, d in df.items()}
