"""Hand-computed cases for hones_nn.tasks.metrics (VQA, ANLS, BLEU-4, NDCG).

Every expected number below is worked out in the comment next to it, so a change in a
metric's definition shows up as a failure rather than a silently updated golden value.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from hones_nn.tasks.metrics import (
    anls,
    bleu4_from_stats,
    bleu4_stats,
    coco_caption_tokens,
    corpus_bleu4,
    levenshtein,
    ndcg_at_5_single,
    ndcg_at_k,
    normalize_vqa_answer,
    sentence_bleu4,
    vqa_reference_match,
    vqa_soft_accuracy,
)

# ================================================================ VQA


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),  # manualMap after lower-casing
        ("a dog.", "dog"),  # article dropped, final period stripped
        ("yes", "yes"),
        ("yes!", "yes!"),  # '!' is NOT in the official punctuation list: it stays
        ("  Yes\n", "yes"),  # newline -> space, strip, lower
        ("The Cat", "cat"),
        ("an apple", "apple"),
        ("none", "0"),  # 'none' -> '0' in manualMap
        ("ten", "10"),
        ("twenty", "twenty"),  # only zero..ten are mapped
        ("two dogs", "2 dogs"),
        ("1,000", "1000"),  # digit,digit anywhere -> every listed mark is deleted
        ("3.5", "3.5"),  # period followed by a digit is kept
        ("a.b", "ab"),  # period not followed by a digit is deleted
        ("hello, world", "hello world"),  # ', ' touches a space -> deleted
        ("red,blue", "red blue"),  # touches no space -> replaced by a space
        ("don't", "don t"),  # "'" replaced by a space before the contractions table
        ("dont", "don’t"),  # contractions table, with its typographic apostrophe
        ("(left)", "left"),  # '(' and ')' become spaces, split() drops them
        ("What?", "what"),
        ("t-shirt", "t-shirt"),  # '-' is not in the list
        ("x" + "." * 40, "x" + "." * 8),  # the official sub() removes at most 32 periods
    ],
)
def test_normalize_vqa_answer_official_rules(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def _ten(matching: str, m: int) -> list[str]:
    return [matching] * m + [f"other{i}" for i in range(10 - m)]


@pytest.mark.parametrize(
    "m, expected",
    [
        # leave-one-out mean: (m * min(1,(m-1)/3) + (10-m) * min(1,m/3)) / 10
        (0, 0.0),
        (1, 0.3),  # (1*0 + 9*1/3)/10 = 3/10
        (2, 0.6),  # (2*1/3 + 8*2/3)/10 = 6/10
        (3, 0.9),  # (3*2/3 + 7*1)/10 = 9/10
        (4, 1.0),  # (4*1 + 6*1)/10
        (10, 1.0),
    ],
)
def test_vqa_soft_accuracy_official_values(m, expected):
    assert vqa_soft_accuracy("blue", _ten("blue", m)) == pytest.approx(expected, abs=1e-12)


def test_vqa_soft_accuracy_normalises_the_prediction():
    # "Two." -> "2"; three humans said "2" -> 0.9
    assert vqa_soft_accuracy("Two.", _ten("2", 3)) == pytest.approx(0.9)
    # answers differ, so they get the punctuation step: "yes." -> "yes" (4 of them) -> 1.0
    assert vqa_soft_accuracy("yes", ["yes."] * 4 + ["no"] * 6) == pytest.approx(1.0)
    # ... and only that step, unstripped, as officially: "yes?" -> "yes " != "yes" -> 0.0
    assert vqa_soft_accuracy("yes", ["yes?"] * 4 + ["no"] * 6) == 0.0


def test_vqa_soft_accuracy_answers_as_stored_unless_asked():
    # Officially unanimous answers are not processed at all: "Two" never equals "2".
    assert vqa_soft_accuracy("two", ["Two"] * 10) == 0.0
    assert vqa_soft_accuracy("two", ["Two"] * 10, normalize_answers=True) == 1.0
    # "three" among "3"s: officially 3 of 10 match -> 0.9; fully normalised 10 -> 1.0
    answers = ["3"] * 3 + ["three"] * 7
    assert vqa_soft_accuracy("3", answers) == pytest.approx(0.9)
    assert vqa_soft_accuracy("3", answers, normalize_answers=True) == pytest.approx(1.0)


def test_vqa_soft_accuracy_bad_input():
    with pytest.raises(ValueError, match="all_answers"):
        vqa_soft_accuracy("yes", [])
    with pytest.raises(ValueError, match="at least 2"):
        vqa_soft_accuracy("yes", ["yes"])
    with pytest.raises(ValueError, match=r"all_answers\[1\]"):
        vqa_soft_accuracy("yes", ["yes", None, "no"])
    with pytest.raises(ValueError, match="all_answers"):
        vqa_soft_accuracy("yes", "yes yes")
    with pytest.raises(ValueError, match="prediction"):
        vqa_soft_accuracy(3, ["3", "3"])


@pytest.mark.parametrize(
    "prediction, answer, expected",
    [
        ("2", "two", 1.0),  # equal after normalisation
        ("Two dogs.", "2", 1.0),  # "2 dogs" contains the word "2"
        ("It is red.", "red", 1.0),
        ("yes!", "yes", 1.0),  # "yes!": '!' stays but is a word boundary
        ("12", "2", 0.0),  # not a whole word
        ("dogs", "dog", 0.0),
        ("a blue car", "red", 0.0),
        ("", "yes", 0.0),
        ("light blue", "light blue", 1.0),
        ("it is light blue", "light blue", 1.0),
    ],
)
def test_vqa_reference_match(prediction, answer, expected):
    assert vqa_reference_match(prediction, answer) == expected


def test_vqa_reference_match_bad_input():
    with pytest.raises(ValueError, match="empty after VQA normalisation"):
        vqa_reference_match("the", "the")  # "the" normalises to ""
    with pytest.raises(ValueError, match="answer"):
        vqa_reference_match("yes", ["yes"])


# ================================================================ ANLS


@pytest.mark.parametrize(
    "a, b, d",
    [("kitten", "sitting", 3), ("flaw", "lawn", 2), ("", "abc", 3), ("abc", "abc", 0), ("ab", "ba", 2)],
)
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d
    assert levenshtein(b, a) == d


GOLD = "abcdefghij"  # 10 characters


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("ABCDEFGHIJ ", 1.0),  # lower-cased and stripped -> identical
        ("abcdefgxyz", 0.7),  # 3 substitutions: NL = 3/10
        ("abcdefwxyz", 0.6),  # 4 substitutions: NL = 0.4 < 0.5 -> 1 - 0.4
        ("abcdevwxyz", 0.0),  # 5 substitutions: NL = 0.5, not < tau -> 0
        ("abcduvwxyz", 0.0),  # NL = 0.6
        ("abcdefghi", 0.9),  # 1 deletion over max(9, 10): NL = 0.1
        ("", 0.0),  # empty prediction vs non-empty gold: NL = 1
    ],
)
def test_anls_threshold(prediction, expected):
    assert anls(prediction, GOLD) == pytest.approx(expected, abs=1e-12)


def test_anls_tau_list_and_whitespace():
    # NL = 0.5 passes a looser threshold: 1 - 0.5
    assert anls("abcdevwxyz", GOLD, tau=0.6) == pytest.approx(0.5)
    # max over gold answers: "helo" vs "hello" = 1 - 1/5
    assert anls("helo", ["xyz", "hello"]) == pytest.approx(0.8)
    assert anls("hello", ("xyz", "Hello")) == 1.0
    # inner whitespace runs collapse: "new  york" == "new york"
    assert anls("new  york", "New York") == 1.0


def test_anls_bad_input():
    with pytest.raises(ValueError, match="answers"):
        anls("a", [])
    with pytest.raises(ValueError, match=r"answers\[1\] is empty"):
        anls("a", ["a", "   "])
    with pytest.raises(ValueError, match="tau"):
        anls("a", "a", tau=0.0)
    with pytest.raises(ValueError, match="prediction"):
        anls(None, "a")


# ================================================================ captions: tokenisation

# Outputs recorded from the real COCO pipeline (pycocoevalcap 1.2 PTBTokenizer: Stanford
# CoreNLP 3.4.1 jar, -preserveLines -lowerCase, then its punctuation filter).
JAVA_PTB = [
    ("A man (in a hat) rides a horse.", "a man -lrb- in a hat -rrb- rides a horse"),
    ('He said "hello" to the dog.', "he said hello to the dog"),
    (
        "I don't know, it's John's can't won't they're we've I'm he'd you'll",
        "i do n't know it 's john 's ca n't wo n't they 're we 've i 'm he 'd you 'll",
    ),
    ("Mr. Smith and Dr. Who visit the U.S. today.", "mr. smith and dr. who visit the u.s. today"),
    ("It costs $3.50 or 1,000 yen at 10:30 a.m.", "it costs $ 3.50 or 1,000 yen at 10:30 a.m."),
    ("A black-and-white photo of a t-shirt.", "a black-and-white photo of a t-shirt"),
    ("A cat on a/b mat with x*y.", "a cat on a/b mat with x * y"),
    ("A dog... running!! Really?!", "a dog running !! really ?!"),
    ("50% off & #1 deal @home", "50 % off & # 1 deal @home"),
    ("I cannot go, gonna wanna gotta", "i can not go gon na wan na got ta"),
    ("hi -- there - you ; yes : no", "hi there you yes no"),
    ("yes?no word:word", "yes?no word word"),
    ("It’s a “quoted” word… with – en and — em dashes", "it 's a quoted word with en and em dashes"),
    ("[brackets] {braces}", "-lsb- brackets -rsb- -lcb- braces -rcb-"),
    ("Mt. Fuji in Jan. with No. 5", "mt. fuji in jan. with no. 5"),
    ("A sign that reads 'STOP' .", "a sign that reads stop"),
    ("A photo of 3 dogs.Two cats.", "a photo of 3 dogs.two cats"),
    ("A man's hat, the men's room, James' car.", "a man 's hat the men 's room james car"),
    ("A man--a tall one--walks.", "a man a tall one walks"),
    ("'90s and '09 and 'tis", "'90s and '09 and 't is"),
    ("1. first item", "1 first item"),
    ("Two zebras grazing in the field 's grass.", "two zebras grazing in the field 's grass"),
    ("A bowl of soup w/ bread on the side.", "a bowl of soup w / bread on the side"),
    ("Looks like a cow's standing in the road!?", "looks like a cow 's standing in the road !?"),
    ("There isn't anything on the table.", "there is n't anything on the table"),
    ("A street sign for Broadway & 42nd St.", "a street sign for broadway & 42nd st."),
    (
        "In the image, there are three shapes: a red circle, a green triangle, and a yellow star.",
        "in the image there are three shapes a red circle a green triangle and a yellow star",
    ),
    ("a green triangle above a blue box with text.", "a green triangle above a blue box with text"),
]


@pytest.mark.parametrize("raw, java", JAVA_PTB)
def test_coco_tokens_match_the_java_ptb_tokenizer(raw, java):
    assert " ".join(coco_caption_tokens(raw)) == java


# ================================================================ captions: BLEU-4


def test_bleu_identical_to_a_reference_is_one():
    refs = ["A red circle on a black background.", "there is a red circle."]
    assert corpus_bleu4(["a red circle on a black background"], [refs]) == pytest.approx(1.0)
    assert sentence_bleu4("A red circle on a black background!", refs) == pytest.approx(1.0)


def test_bleu_hand_worked():
    # hyp "the cat sat on the mat", ref "the cat sat on a mat" (both 6 tokens, BP = 1)
    # 1-grams: the(2, clipped to 1) cat sat on mat -> 5/6
    # 2-grams: the cat, cat sat, sat on | on the, the mat -> 3/5
    # 3-grams: the cat sat, cat sat on | sat on the, on the mat -> 2/4
    # 4-grams: the cat sat on | cat sat on the, sat on the mat -> 1/3
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25
    expected = (1 / 12) ** 0.25  # 0.537284965911771
    assert corpus_bleu4(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(expected, abs=1e-12)
    # COCO tokenisation: case and punctuation do not change it
    assert corpus_bleu4(["The cat sat on the mat."], [["The cat sat, on a mat!"]]) == pytest.approx(expected, abs=1e-12)
    # one sentence with every order matched: smoothing has nothing to do
    assert sentence_bleu4("the cat sat on the mat", ["the cat sat on a mat"]) == pytest.approx(expected, abs=1e-12)


def test_bleu_brevity_penalty_uses_closest_reference():
    # hyp "the cat sat on the" (5): every n-gram is in ref 1 -> precisions 1
    # closest reference length: |5-6|=1 vs |5-8|=3 -> 6; BP = exp(1 - 6/5) = exp(-0.2)
    refs = ["the cat sat on the mat", "a cat sat on the big red mat"]
    assert corpus_bleu4(["the cat sat on the"], [refs]) == pytest.approx(math.exp(-0.2), abs=1e-12)
    # tie |5-4| == |5-6|: the shorter (4) wins -> hyp longer than ref -> BP = 1
    refs = ["the cat sat on", "the cat sat on the mat"]
    assert corpus_bleu4(["the cat sat on the"], [refs]) == pytest.approx(1.0, abs=1e-12)


def test_bleu_is_pooled_over_the_corpus():
    # item 1: "a b c d" == ref: 4/4, 3/3, 2/2, 1/1
    # item 2: "a b x y" vs "a b z w": 2/4, 1/3, 0/2, 0/1
    # pooled: 6/8, 4/6, 2/4, 1/2 -> (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = (1/8) ** 0.25
    score = corpus_bleu4(["a b c d", "a b x y"], [["a b c d"], ["a b z w"]])
    assert score == pytest.approx((1 / 8) ** 0.25, abs=1e-12)  # not the sentence mean 0.5


def test_short_hypotheses_add_no_ngram_slots():
    # COCO's guess count is max(0, len - n + 1): "a b c" offers no 4-gram slot.
    # pooled: 1-grams 7/7, 2-grams 5/5, 3-grams 3/3, 4-grams 1/1 -> 1.0
    # (NLTK's floor of 1 slot would make p4 = 1/2 and the score 2 ** -0.25 = 0.84)
    assert corpus_bleu4(["a b c d", "a b c"], [["a b c d"], ["a b c"]]) == pytest.approx(1.0, abs=1e-12)


def test_sentence_bleu_smoothing_and_effective_order():
    # hyp "a red square on a black background" (7) vs ref "a red circle on a black background" (7)
    # 1-grams 6/7; 2-grams: a red, on a, a black, black background -> 4/6;
    # 3-grams: on a black, a black background -> 2/5; 4-grams: on a black background -> 1/4
    expected = (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    score = sentence_bleu4("a red square on a black background", ["a red circle on a black background"])
    assert score == pytest.approx(expected, abs=1e-12)
    # no 3- or 4-gram match: 'exp' smoothing gives the k-th order without a match 1/2^k of a match
    # hyp "a red big circle" vs ref "a red circle": 1-grams 3/4, 2-grams 1/3, 3-grams 0/2 -> 1/(2*2),
    # 4-grams 0/1 -> 1/(4*1); BP = 1 (4 >= 3)
    expected = (3 / 4 * 1 / 3 * 1 / 4 * 1 / 4) ** 0.25
    assert sentence_bleu4("a red big circle", ["a red circle"]) == pytest.approx(expected, abs=1e-12)
    # 2-token hypothesis: effective order 2; "red circle" vs "a red circle": p1 = p2 = 1,
    # BP = exp(1 - 3/2)
    assert sentence_bleu4("red circle", ["a red circle"]) == pytest.approx(math.exp(-0.5), abs=1e-12)
    assert sentence_bleu4("", ["a red circle"]) == 0.0


def _random_captions(seed: int, n: int) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    colors = ["red", "blue", "green", "yellow", "white", "black"]
    things = ["circle", "square", "triangle", "star", "dog", "cat", "bus", "man"]
    places = ["on a black background", "above a blue box", "in the park", "near a tree", "on the table"]
    preds, refs = [], []
    for _ in range(n):

        def caption() -> str:
            words = ["a", rng.choice(colors), rng.choice(things)]
            if rng.random() < 0.6:
                words += ["and", "a", rng.choice(colors), rng.choice(things)]
            return " ".join(words + rng.choice(places).split())

        item_refs = [caption() for _ in range(rng.choice([1, 3, 5]))]
        words = rng.choice(item_refs).split()
        for _ in range(rng.randrange(3)):  # perturb a copy of one reference
            j = rng.randrange(len(words))
            words[j] = rng.choice(colors + things)
        if rng.random() < 0.3:  # at least 4 tokens: see test_corpus_bleu_matches_nltk
            words = words[: rng.randrange(4, len(words) + 1)]
        pred = " ".join(words)
        preds.append(pred.capitalize() + ("." if rng.random() < 0.5 else ""))
        refs.append(item_refs)
    return preds, refs


def test_corpus_bleu_matches_nltk():
    # NLTK counts max(1, #n-grams) slots for a hypothesis shorter than n tokens (COCO and
    # sacrebleu count 0, see test_short_hypotheses_add_no_ngram_slots), so the captions
    # compared here have >= 4 tokens; on those the two must agree to rounding.
    from nltk.translate.bleu_score import corpus_bleu

    for seed in (0, 1, 2):
        preds, refs = _random_captions(seed, 40)
        ours = corpus_bleu4(preds, refs)
        theirs = corpus_bleu(
            [[coco_caption_tokens(r) for r in item] for item in refs],
            [coco_caption_tokens(p) for p in preds],
        )
        assert 0.05 < ours < 0.999  # a non-trivial value, every order has matches
        # both are exact arithmetic on the same counts; only float rounding differs
        assert ours == pytest.approx(theirs, abs=1e-9)


def test_sentence_bleu_matches_nltk_method3():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    preds, refs = _random_captions(7, 25)
    method3 = SmoothingFunction().method3
    for pred, item_refs in zip(preds, refs):
        hyp = coco_caption_tokens(pred)
        order = min(4, len(hyp))  # sacrebleu's effective order
        theirs = sentence_bleu(
            [coco_caption_tokens(r) for r in item_refs], hyp, weights=(1 / order,) * order, smoothing_function=method3
        )
        assert sentence_bleu4(pred, item_refs) == pytest.approx(theirs, abs=1e-9)


def test_summed_stats_give_the_corpus_bleu():
    # hand case of test_bleu_hand_worked: [hyp_len, ref_len, matches 1..4, totals 1..4]
    assert bleu4_stats("the cat sat on the mat", ["the cat sat on a mat"]) == [6, 6, 5, 3, 2, 1, 6, 5, 4, 3]
    preds, refs = _random_captions(3, 30)
    total = np.sum([bleu4_stats(p, r) for p, r in zip(preds, refs)], axis=0)
    assert bleu4_from_stats(total) == pytest.approx(corpus_bleu4(preds, refs), abs=1e-12)
    # shards merge: the sum of two halves is the sum of the whole
    first, second = (
        np.sum([bleu4_stats(p, r) for p, r in zip(preds[a:b], refs[a:b])], axis=0) for a, b in ((0, 13), (13, 30))
    )
    assert bleu4_from_stats(first + second) == pytest.approx(corpus_bleu4(preds, refs), abs=1e-12)
    with pytest.raises(ValueError, match="10 numbers"):
        bleu4_from_stats([1, 2, 3])
    with pytest.raises(ValueError, match=r"stats\[2\]"):
        bleu4_from_stats([4, 4, -1, 0, 0, 0, 4, 3, 2, 1])
    with pytest.raises(ValueError, match=r"stats\[0\]"):
        bleu4_from_stats([4.5, 4, 1, 0, 0, 0, 4, 3, 2, 1])


def test_bleu_bad_input():
    with pytest.raises(ValueError, match="predictions"):
        corpus_bleu4([], [])
    with pytest.raises(ValueError, match="differ in length"):
        corpus_bleu4(["a dog"], [["a dog"], ["a cat"]])
    with pytest.raises(ValueError, match=r"references\[1\]"):
        corpus_bleu4(["a dog", "a cat"], [["a dog"], []])
    with pytest.raises(ValueError, match=r"references\[0\]\[1\]"):
        corpus_bleu4(["a dog"], [["a dog", " . "]])
    with pytest.raises(ValueError, match=r"predictions\[0\]"):
        corpus_bleu4([None], [["a dog"]])
    with pytest.raises(ValueError, match="references"):
        sentence_bleu4("a dog", [])


# ================================================================ retrieval: NDCG


def _scores_with_positive_at(rank: int, n: int = 50, positive: int = 17) -> list[float]:
    """Scores of n candidates where candidate ``positive`` (score 0) ranks ``rank``:
    exactly rank - 1 negatives score above 0, the others below, in shuffled positions."""
    negatives = [float(i + 1) for i in range(rank - 1)] + [-float(i + 1) for i in range(n - rank)]
    random.Random(rank).shuffle(negatives)
    return negatives[:positive] + [0.0] + negatives[positive:]


@pytest.mark.parametrize(
    "rank, expected",
    [
        (1, 1.0),  # 1 / log2(2)
        (2, 1 / math.log2(3)),  # 0.6309297535714575
        (5, 1 / math.log2(6)),  # 0.38685280723454163
        (6, 0.0),  # outside the top 5
    ],
)
def test_ndcg_single_positive_by_rank(rank, expected):
    scores = _scores_with_positive_at(rank)
    assert sorted(scores, reverse=True).index(scores[17]) + 1 == rank  # the fixture is right
    assert ndcg_at_5_single(scores, 17) == pytest.approx(expected, abs=1e-12)
    relevances = [0] * 50
    relevances[17] = 1
    assert ndcg_at_k(scores, relevances, k=5) == pytest.approx(expected, abs=1e-12)


def test_ndcg_ties_follow_candidate_order():
    scores = [0.5, 0.9, 0.9, 0.1]
    # candidates 1 and 2 tie at 0.9: the earlier (1) ranks first
    assert ndcg_at_5_single(scores, 1) == 1.0
    assert ndcg_at_5_single(scores, 2) == pytest.approx(1 / math.log2(3))  # rank 2
    # all equal: rank = candidate index + 1
    flat = [0.0] * 8
    assert ndcg_at_5_single(flat, 0) == 1.0
    assert ndcg_at_5_single(flat, 4) == pytest.approx(1 / math.log2(6))
    assert ndcg_at_5_single(flat, 5) == 0.0


def test_ndcg_graded_and_array_inputs():
    # ranked order 0, 1, 2 with gains 0, 1, 2: DCG = 0 + 1/log2(3) + 2/log2(4)
    # ideal order gains 2, 1, 0:               IDCG = 2 + 1/log2(3) + 0
    dcg = 1 / math.log2(3) + 1.0
    idcg = 2.0 + 1 / math.log2(3)
    assert ndcg_at_k([3.0, 2.0, 1.0], [0, 1, 2], k=3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(np.array([3.0, 2.0, 1.0]), np.array([0, 1, 2]), k=3) == pytest.approx(dcg / idcg)
    # k larger than the list, and infinite scores are allowed
    assert ndcg_at_k([float("-inf"), float("inf")], [1, 0], k=10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_5_single(np.array([0.1, 0.7, 0.3]), np.int64(1)) == 1.0


def test_ndcg_bad_input():
    with pytest.raises(ValueError, match=r"scores\[3\] is NaN"):
        ndcg_at_5_single([0.1, 0.2, 0.3, float("nan")], 0)
    with pytest.raises(ValueError, match="empty candidate list"):
        ndcg_at_k([], [])
    with pytest.raises(ValueError, match="empty candidate list"):
        ndcg_at_5_single([], 0)
    with pytest.raises(ValueError, match="differ in length"):
        ndcg_at_k([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="no relevant candidate"):
        ndcg_at_k([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match=r"relevances\[1\]"):
        ndcg_at_k([0.1, 0.2], [1, -1])
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k([0.1], [1], k=0)
    with pytest.raises(ValueError, match="out of range"):
        ndcg_at_5_single([0.1, 0.2], 2)
    with pytest.raises(ValueError, match="positive_index"):
        ndcg_at_5_single([0.1, 0.2], True)
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        ndcg_at_k([0.1, "high"], [1, 0])
