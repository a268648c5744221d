"""``--reference-compat``: each behaviour of the official code (docs/reference-code-behaviour.md)
against hand-computed cases, and the paper default beside it where they differ."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from hones_nn.engine.tables import read_table, write_head_table
from hones_nn.methods.hones import Hones, positive_heads, positive_tolerance, select_heads
from hones_nn.tasks import get_task
from hones_nn.tasks.metrics import (
    anls,
    anls_reference,
    nltk_bleu4_from_stats,
    nltk_bleu4_stats,
    nltk_corpus_bleu4,
    vqa_reference_loose_match,
)
from hones_nn.tasks.targets import caption_idf

# ------------------------------------------------------------------ 1. instructions

RECORD = {
    "image_id": "img0",
    "vqa": {"question": "What color is the cup?", "answer": "red", "all_answers": ["red"] * 10},
    "ocr": {"text": "HBDD"},
    "captions": ["a red cup", "a cup on a table"],
    "retrieval": {"candidates": ["a red cup", "a dog"], "positive_index": 0},
}


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_compat_uses_the_reference_instructions_for_every_family(family):
    expected = {
        "vqa": "Question: What color is the cup?\nAnswer the question with a short phrase.",
        "ocr": "Transcribe the text inside the blue box.\nOutput text only.",
        "caption": "Describe the image in one sentence.",
        "retrieval": (
            "Candidate: a red cup\nDoes the candidate correctly describe the image?\nAnswer exactly Yes or No."
        ),
    }
    for name, text in expected.items():
        item = get_task(name, family=family, reference_compat=True).make_item(RECORD, 0)
        assert item.prompts[0].user_text == text


def test_paper_default_keeps_the_llava_instructions():
    item = get_task("vqa", family="llava").make_item(RECORD, 0)
    assert item.prompts[0].user_text == (
        "Question: What color is the cup? Answer the question briefly using one or a few words."
    )
    item = get_task("ocr", family="llava").make_item(RECORD, 0)
    assert item.prompts[0].user_text == "Please transcribe the text inside the blue box. Output text only."


# ------------------------------------------------------------------ 2. caption IDF


class WordTokenizer:
    """A whitespace tokenizer: one id per lower-cased word, id 0 special (unk)."""

    unk_token_id = 0

    def __init__(self):
        self.all_special_ids = [0]
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False):
        ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.lower().split()]
        return {"input_ids": ids}


def test_caption_idf_counts_one_document_per_image_in_both_modes():
    tok = WordTokenizer()
    # image A: "cup" in two references; image B: "cup" once; image C: no "cup"
    records = [
        {"image_id": "A", "captions": ["a cup", "the cup"]},
        {"image_id": "B", "captions": ["a cup", "a dog"]},
        {"image_id": "C", "captions": ["a dog", "a cat"]},
    ]
    for compat in (False, True):
        task = get_task("caption", reference_compat=compat)
        items = [task.make_item(r, i) for i, r in enumerate(records)]
        idf = task.direction_context(tok, items)
        assert idf == caption_idf(tok, items)
        n = 3  # images, not references (6)
        cup, dog, a, the = (tok.vocab[w] for w in ("cup", "dog", "a", "the"))
        assert idf[cup] == pytest.approx(math.log((n + 1) / (2 + 1)) + 1)
        assert idf[dog] == pytest.approx(math.log((n + 1) / (2 + 1)) + 1)
        assert idf[a] == pytest.approx(math.log((n + 1) / (3 + 1)) + 1)
        assert idf[the] == pytest.approx(math.log((n + 1) / (1 + 1)) + 1)


# ------------------------------------------------------------------ 3. caption BLEU (NLTK, method1)


def test_nltk_bleu4_by_hand():
    # hypothesis "a red cup on table": 5 tokens; references lower().split()
    hyp = "A red cup on table"
    refs = ["a red cup on a table", "a cup ."]
    stats = nltk_bleu4_stats(hyp, refs)
    # 1-grams: a, red, cup, on, table all in ref 1 -> 5/5; 2-grams: a red, red cup, cup on
    # match, "on table" not -> 3/4; 3-grams: a red cup, red cup on -> 2/3; 4-grams:
    # a red cup on -> 1/2. Closest ref length to 5: 6 (|1|) vs 3 (|2|) -> 6.
    assert stats == [5, 6, 5, 3, 2, 1, 5, 4, 3, 2]
    expected = math.exp(1 - 6 / 5) * math.exp(0.25 * sum(math.log(p) for p in (1.0, 0.75, 2 / 3, 0.5)))
    assert nltk_bleu4_from_stats(stats) == pytest.approx(expected, rel=1e-12)


def test_nltk_bleu4_method1_smoothing_and_short_hypotheses_by_hand():
    # "a dog": 2 tokens; 1-grams 1/2 ("a"); 2-grams 0/1 -> 0.1/1; 3- and 4-grams have
    # no n-gram at all: NLTK's denominator is max(1, 0) = 1 and 0 matches -> 0.1/1 each
    stats = nltk_bleu4_stats("a dog", ["a cat sat"])
    assert stats == [2, 3, 1, 0, 0, 0, 2, 1, 1, 1]
    expected = math.exp(1 - 3 / 2) * math.exp(0.25 * (math.log(0.5) + 3 * math.log(0.1)))
    assert nltk_bleu4_from_stats(stats) == pytest.approx(expected, rel=1e-12)
    # no unigram match over the corpus: 0
    assert nltk_corpus_bleu4(["zebra"], [["a cat"]]) == 0.0


def test_nltk_bleu4_equals_nltk_itself():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    preds = ["a man riding a horse on a beach .", "two dogs play", "A cup", "a red bus on the street"]
    refs = [
        ["a man rides a horse on the beach .", "a person on a horse"],
        ["two dogs are playing in the grass", "dogs playing"],
        ["a white cup on a table", "a cup of coffee"],
        ["a red double decker bus on a city street", "a bus driving down the street"],
    ]
    ours = nltk_corpus_bleu4(preds, refs)
    theirs = nltk_bleu.corpus_bleu(
        [[r.lower().split() for r in rs] for rs in refs],
        [p.lower().split() for p in preds],
        weights=(0.25, 0.25, 0.25, 0.25),
        smoothing_function=nltk_bleu.SmoothingFunction().method1,
    )
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_compat_caption_metric_is_the_nltk_bleu():
    task = get_task("caption", reference_compat=True)
    paper = get_task("caption")
    records = [
        {"image_id": "A", "captions": ["a man rides a horse on the beach .", "a person on a horse"]},
        {"image_id": "B", "captions": ["two dogs are playing in the grass", "dogs playing"]},
    ]
    items = [task.make_item(r, i) for i, r in enumerate(records)]
    outputs = [["a man riding a horse on a beach ."], ["two dogs play"]]
    expected = nltk_corpus_bleu4([o[0] for o in outputs], [i.data["references"] for i in items])
    assert task.corpus_metric(items, outputs) == pytest.approx(expected)
    stats = sum(np.asarray(task.metric_stats(i, o)) for i, o in zip(items, outputs))
    assert task.metric_from_stats(stats) == pytest.approx(expected)
    assert paper.corpus_metric(items, outputs) != pytest.approx(expected)


# ------------------------------------------------------------------ 4. VQA loose match and OCR ANLS


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("red", "red", 1.0),
        ("re", "red", 1.0),  # prediction inside the answer
        ("bored", "red", 1.0),  # answer inside the prediction
        ("Answer: Red.", "red", 1.0),  # prefix and punctuation removed
        ("2", "two", 0.0),  # no number words
        ("two", "2", 0.0),
        ("blue", "red", 0.0),
        ("", "red", 0.0),
        ("...", "red", 0.0),  # empty after normalisation
        ("the", "the", 1.0),  # no article removal
    ],
)
def test_vqa_reference_loose_match(prediction, answer, expected):
    assert vqa_reference_loose_match(prediction, answer) == expected


def test_compat_vqa_utility_is_the_loose_match():
    compat, paper = get_task("vqa", reference_compat=True), get_task("vqa")
    item = compat.make_item(RECORD, 0)
    assert compat.utility(item, ["re"]) == 1.0
    assert paper.utility(paper.make_item(RECORD, 0), ["re"]) == 0.0


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("H B D D", "HBDD", 1.0),  # spaces are non-word characters
        ("h-b.d", "HBD", 1.0),
        ("ab", "ac", 0.5),  # similarity exactly 0.5 is kept
        ("abc", "axy", 0.0),  # 1/3 < 0.5
        ("hbdx", "HBDD", 0.75),
        ("", "HBDD", 0.0),
        ("!!", "HBDD", 0.0),
    ],
)
def test_anls_reference(prediction, answer, expected):
    assert anls_reference(prediction, answer) == pytest.approx(expected)


def test_compat_ocr_utility_is_the_reference_anls():
    compat, paper = get_task("ocr", reference_compat=True), get_task("ocr")
    item = compat.make_item(RECORD, 0)
    assert compat.utility(item, ["H B D D"]) == 1.0
    # the paper's ANLS keeps the spaces (NL = 3/7) and drops a similarity of exactly 0.5
    assert paper.utility(item, ["H B D D"]) == pytest.approx(1 - 3 / 7)
    assert anls("ab", "ac") == 0.0


# ------------------------------------------------------------------ non-positive heads


def _head_table(tmp_path, scores):
    scores = np.asarray(scores, dtype=np.float64)
    path = write_head_table(tmp_path / "heads.parquet", scores, 0.5, 0.5 - scores, {"method": "vseam"})
    return read_table(path)


def test_heads_scoring_rounding_noise_are_not_positive(tmp_path):
    # 2 layers x 3 heads; 2.2e-16 is the difference of two equal means in float64
    table = _head_table(tmp_path, [[0.30, 2.2e-16, -0.10], [0.0, 0.05, -2.2e-16]])
    heads, weights = positive_heads(table, 6)
    assert heads == [(0, 0), (1, 1)]
    assert weights == [0.30, 0.05]
    # top 3 by rank: 0.30, 0.05, 2.2e-16: the noise head is dropped before any pass
    ctx = SimpleNamespace(sizes=SimpleNamespace(num_layers=2, num_heads=3), seed=0)
    assert select_heads(ctx, table, 3, random_heads=False) == ([(0, 0), (1, 1)], [0.30, 0.05])
    assert positive_tolerance([0.3, 2.2e-16]) > 2.2e-16


def test_no_positive_head_falls_back_to_the_signed_mean(tmp_path):
    table = _head_table(tmp_path, [[2.2e-16, 0.0], [-0.1, 1e-17]])
    heads, weights = positive_heads(table, 4)
    assert heads == [] and weights == []
    c_mean = np.array([[[1.0, -2.0]]])  # [1 + K (= 0), L = 1, d_ff = 2]
    importance, rule = Hones().combine(c_mean, np.zeros((0, 1, 2)), heads, weights, compat=True)
    np.testing.assert_array_equal(importance, c_mean[0])
    assert "no head with a positive score" in rule
