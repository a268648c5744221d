"""Per-task scores of HONES: VQA accuracy, OCR ANLS, caption BLEU-4, retrieval NDCG@5.

Each metric is a small pure function that follows a published standard; the docstrings
say which one and where this module departs from it. Every function raises ``ValueError``
with the offending item named when its input is malformed (empty lists, length
mismatches, NaN scores, ...), never a silent 0.

* VQA: :func:`normalize_vqa_answer`, :func:`vqa_soft_accuracy` (the VQAv2 evaluation
  script ``vqaEval.py`` of GT-Vision-Lab/VQA), :func:`vqa_reference_match` (the
  single-answer compatibility mode).
* OCR: :func:`anls` (Biten et al. 2019, ST-VQA).
* Caption: :func:`coco_caption_tokens`, :func:`corpus_bleu4` (COCO caption evaluation,
  pycocoevalcap ``Bleu(4)``), :func:`sentence_bleu4` (smoothed, per instance),
  :func:`bleu4_stats` / :func:`bleu4_from_stats` (corpus BLEU from summed statistics).
* Retrieval: :func:`ndcg_at_k`, :func:`ndcg_at_5_single` (Järvelin & Kekäläinen 2002).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from functools import cache

__all__ = [
    "anls",
    "anls_reference",
    "bleu4_from_stats",
    "bleu4_stats",
    "coco_caption_tokens",
    "corpus_bleu4",
    "levenshtein",
    "ndcg_at_5_single",
    "ndcg_at_k",
    "nltk_bleu4_from_stats",
    "nltk_bleu4_stats",
    "nltk_corpus_bleu4",
    "normalize_vqa_answer",
    "sentence_bleu4",
    "vqa_reference_loose_match",
    "vqa_reference_match",
    "vqa_soft_accuracy",
]


# ---------------------------------------------------------------- input checks


def _check_str(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _check_str_list(values, what: str, min_len: int = 1) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(f"{what} must be a list of str, got {type(values).__name__}")
    if len(values) < min_len:
        raise ValueError(f"{what} must hold at least {min_len} item(s), got {len(values)}")
    for i, v in enumerate(values):
        _check_str(v, f"{what}[{i}]")
    return list(values)


# ================================================================ VQA (VQAv2)
#
# Tables and rules of the official evaluation, PythonEvaluationTools/vqaEvaluation/
# vqaEval.py in github.com/GT-Vision-Lab/VQA, reproduced as they are there, quirks
# included (see normalize_vqa_answer).

_VQA_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn’t’ve",
    "couldnt’ve": "couldn’t’ve",
    "didnt": "didn’t",
    "doesnt": "doesn’t",
    "dont": "don’t",
    "hadnt": "hadn’t",
    "hadnt’ve": "hadn’t’ve",
    "hadn'tve": "hadn’t’ve",
    "hasnt": "hasn’t",
    "havent": "haven’t",
    "hed": "he’d",
    "hed’ve": "he’d’ve",
    "he’dve": "he’d’ve",
    "hes": "he’s",
    "howd": "how’d",
    "howll": "how’ll",
    "hows": "how’s",
    "Id’ve": "I’d’ve",
    "I’dve": "I’d’ve",
    "Im": "I’m",
    "Ive": "I’ve",
    "isnt": "isn’t",
    "itd": "it’d",
    "itd’ve": "it’d’ve",
    "it’dve": "it’d’ve",
    "itll": "it’ll",
    "let’s": "let’s",
    "maam": "ma’am",
    "mightnt": "mightn’t",
    "mightnt’ve": "mightn’t’ve",
    "mightn’tve": "mightn’t’ve",
    "mightve": "might’ve",
    "mustnt": "mustn’t",
    "mustve": "must’ve",
    "neednt": "needn’t",
    "notve": "not’ve",
    "oclock": "o’clock",
    "oughtnt": "oughtn’t",
    "ow’s’at": "’ow’s’at",
    "’ows’at": "’ow’s’at",
    "’ow’sat": "’ow’s’at",
    "shant": "shan’t",
    "shed’ve": "she’d’ve",
    "she’dve": "she’d’ve",
    "she’s": "she’s",
    "shouldve": "should’ve",
    "shouldnt": "shouldn’t",
    "shouldnt’ve": "shouldn’t’ve",
    "shouldn’tve": "shouldn’t’ve",
    "somebody’d": "somebodyd",
    "somebodyd’ve": "somebody’d’ve",
    "somebody’dve": "somebody’d’ve",
    "somebodyll": "somebody’ll",
    "somebodys": "somebody’s",
    "someoned": "someone’d",
    "someoned’ve": "someone’d’ve",
    "someone’dve": "someone’d’ve",
    "someonell": "someone’ll",
    "someones": "someone’s",
    "somethingd": "something’d",
    "somethingd’ve": "something’d’ve",
    "something’dve": "something’d’ve",
    "somethingll": "something’ll",
    "thats": "that’s",
    "thered": "there’d",
    "thered’ve": "there’d’ve",
    "there’dve": "there’d’ve",
    "therere": "there’re",
    "theres": "there’s",
    "theyd": "they’d",
    "theyd’ve": "they’d’ve",
    "they’dve": "they’d’ve",
    "theyll": "they’ll",
    "theyre": "they’re",
    "theyve": "they’ve",
    "twas": "’twas",
    "wasnt": "wasn’t",
    "wed’ve": "we’d’ve",
    "we’dve": "we’d’ve",
    "weve": "we've",
    "werent": "weren’t",
    "whatll": "what’ll",
    "whatre": "what’re",
    "whats": "what’s",
    "whatve": "what’ve",
    "whens": "when’s",
    "whered": "where’d",
    "wheres": "where's",
    "whereve": "where’ve",
    "whod": "who’d",
    "whod’ve": "who’d’ve",
    "who’dve": "who’d’ve",
    "wholl": "who’ll",
    "whos": "who’s",
    "whove": "who've",
    "whyll": "why’ll",
    "whyre": "why’re",
    "whys": "why’s",
    "wont": "won’t",
    "wouldve": "would’ve",
    "wouldnt": "wouldn’t",
    "wouldnt’ve": "wouldn’t’ve",
    "wouldn’tve": "wouldn’t’ve",
    "yall": "y’all",
    "yall’ll": "y’all’ll",
    "y’allll": "y’all’ll",
    "yall’d’ve": "y’all’d’ve",
    "y’alld’ve": "y’all’d’ve",
    "y’all’dve": "y’all’d’ve",
    "youd": "you’d",
    "youd’ve": "you’d’ve",
    "you’dve": "you’d’ve",
    "youll": "you’ll",
    "youre": "you’re",
    "youve": "you’ve",
}
_VQA_MANUAL_MAP = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_VQA_ARTICLES = ("a", "an", "the")
# Verbatim, including the look-ahead typo "(?!<=\d)" (meant as a look-behind): it never
# fires, so every period not followed by a digit is removed ("3.5" keeps its period,
# "5." and "a.b" lose theirs).
_VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_VQA_PUNCT = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")
# The official call is ``periodStrip.sub("", outText, re.UNICODE)``: the flag lands in the
# ``count`` parameter, so at most re.UNICODE == 32 periods are removed. Kept for parity.
_VQA_PERIOD_STRIP_COUNT = 32


def _vqa_process_punctuation(in_text: str) -> str:
    """``VQAEval.processPunctuation``: each mark of the official list is deleted when it
    touches a space or when the text holds a digit-comma-digit group anywhere, else it
    becomes a space; then periods not followed by a digit are deleted. '!', '-', '.'
    (apart from the period rule), '*', '#', '$', '%', '&' are not in the official list."""
    out_text = in_text
    has_digit_comma = _VQA_COMMA_STRIP.search(in_text) is not None
    for p in _VQA_PUNCT:
        if (p + " " in in_text or " " + p in in_text) or has_digit_comma:
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _VQA_PERIOD_STRIP.sub("", out_text, count=_VQA_PERIOD_STRIP_COUNT)


def _vqa_process_digit_article(in_text: str) -> str:
    """``VQAEval.processDigitArticle``: lower case, number words to digits, articles
    dropped, then the contractions table, on whitespace-split words."""
    words = []
    for word in in_text.lower().split():
        word = _VQA_MANUAL_MAP.get(word, word)
        if word not in _VQA_ARTICLES:
            words.append(word)
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str) -> str:
    """Normalise an answer exactly as the official VQAv2 evaluation normalises a prediction.

    Standard: ``vqaEval.py`` of the official VQA evaluation (GT-Vision-Lab/VQA), the code
    behind every reported VQAv2 accuracy; following it to the letter is what makes numbers
    comparable. The steps, in its order:

    1. newlines and tabs become spaces, the ends are stripped;
    2. punctuation (``processPunctuation``): each of ``; : / ' [ ] " ( ) = + \\ _ > < @ ` , ?``
       is deleted if it touches a space (``"p "`` or ``" p"`` occurs in the text) or if the
       text contains a digit-comma-digit group anywhere ("1,000" -> "1000"), otherwise it is
       replaced by a space; then every period not followed by a digit is deleted (at most 32
       of them, a side effect of the official call);
    3. ``processDigitArticle``: lower case, split on whitespace, map number words ``none``,
       ``zero`` .. ``ten`` to digits (``none`` -> ``0``), drop the articles a/an/the, map
       contractions through the official table ("dont" -> "don’t", with the table's own
       typographic apostrophes), join with single spaces.

    Faithful quirks: '!' and '-' are not in the official punctuation list, so ``"yes!"``
    stays ``"yes!"``; number words are mapped only as whole words ("twenty" stays).

    >>> normalize_vqa_answer("Two")
    '2'
    >>> normalize_vqa_answer("a dog.")
    'dog'
    """
    _check_str(text, "text")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_process_digit_article(_vqa_process_punctuation(text))


def vqa_soft_accuracy(prediction: str, all_answers: Sequence[str], *, normalize_answers: bool = False) -> float:
    """VQAv2 consensus accuracy of one prediction against the human answers (10 in VQAv2).

    Standard: the official ``VQAEval.evaluate``. "min(#humans that said ans / 3, 1)" is
    officially averaged over the 10 leave-one-out subsets: for each human answer, drop it
    and score ``min(1, #matches among the other 9 / 3)``; the accuracy is the mean of the 10.
    With m of 10 humans agreeing with the prediction this gives 0.3, 0.6, 0.9, 1.0 for
    m = 1, 2, 3, >=4 (not m/3).

    Matching is exact string equality after the official processing: the prediction goes
    through :func:`normalize_vqa_answer`; the human answers, as in the official script, are
    taken as stored (the official annotation files hold already-normalised answers) and get
    only the punctuation step, and only when they are not all identical.

    ``normalize_answers=True`` (not official) runs the human answers through the full
    :func:`normalize_vqa_answer` too, for answer lists that were not pre-normalised (e.g.
    "three" among "3"s); the default is the official behaviour.

    ``all_answers`` must hold at least 2 answers (the leave-one-out needs others).
    """
    _check_str(prediction, "prediction")
    answers = _check_str_list(all_answers, "all_answers", min_len=2)
    pred = normalize_vqa_answer(prediction)
    if normalize_answers:
        answers = [normalize_vqa_answer(a) for a in answers]
    elif len(set(answers)) > 1:
        answers = [_vqa_process_punctuation(a) for a in answers]
    matches = [a == pred for a in answers]
    total_matches = sum(matches)
    per_left_out = [min(1.0, (total_matches - int(m)) / 3.0) for m in matches]
    return sum(per_left_out) / len(per_left_out)


def vqa_reference_match(prediction: str, answer: str) -> float:
    """Single-answer VQA match of the reference-code compatibility mode: 1.0 or 0.0.

    Both strings go through :func:`normalize_vqa_answer`; the score is 1.0 when the
    normalised prediction equals the normalised answer or contains it as a whole-word span
    (not preceded or followed by a letter, digit or underscore: "2" matches "2 dogs" and
    "yes!" but not "12"; "dog" does not match "dogs"). This is a lenient containment
    check for free-form generations, not the official VQAv2 accuracy (use
    :func:`vqa_soft_accuracy` for that). An answer that normalises to the empty string
    (e.g. "the") is rejected with ``ValueError``; an empty prediction scores 0.0.
    """
    _check_str(prediction, "prediction")
    _check_str(answer, "answer")
    gold = normalize_vqa_answer(answer)
    if not gold:
        raise ValueError(f"answer {answer!r} is empty after VQA normalisation")
    pred = normalize_vqa_answer(prediction)
    if pred == gold:
        return 1.0
    return 1.0 if re.search(r"(?<!\w)" + re.escape(gold) + r"(?!\w)", pred) else 0.0


_REFERENCE_ANSWER_PREFIX = re.compile(r"^(answer\s*:|assistant\s*:|a\s*:)")


def _reference_normalize_answer(text: str) -> str:
    """The reference code's answer normalisation: lower case, ends stripped, one leading
    "answer:", "assistant:" or "a:" removed, every character other than a-z, 0-9 and
    whitespace deleted, whitespace runs collapsed. No number words, no articles."""
    text = text.lower().strip()
    text = _REFERENCE_ANSWER_PREFIX.sub("", text).strip()
    text = re.sub(r"[^a-z0-9\s]", "", text)
    return " ".join(text.split())


def vqa_reference_loose_match(prediction: str, answer: str) -> float:
    """The VQA score of ``--reference-compat``: the official HONES code's single-answer
    loose match (docs/reference-code-behaviour.md, "Prompts and evaluation"), 1.0 or 0.0.

    Both strings are normalised by lower-casing and deleting every non-alphanumeric,
    non-space character; the prediction is correct when ``pred == gold``, ``pred in gold``
    or ``gold in pred`` (substrings both ways, so "re" matches "red" and "red" matches
    "bored"); number words are not mapped ("2" does not match "two"). An empty prediction
    or an answer that normalises to nothing scores 0.0, as in the reference.
    """
    _check_str(prediction, "prediction")
    _check_str(answer, "answer")
    pred = _reference_normalize_answer(prediction)
    gold = _reference_normalize_answer(answer)
    if not pred or not gold:
        return 0.0
    return 1.0 if (pred == gold or pred in gold or gold in pred) else 0.0


# ================================================================ OCR (ANLS)


def levenshtein(a: str, b: str) -> int:
    """Levenshtein edit distance (unit-cost insertions, deletions, substitutions), O(len a *
    len b) dynamic programme over two rows."""
    _check_str(a, "a")
    _check_str(b, "b")
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _anls_normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: str | Sequence[str], tau: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one instance (Biten et al., ICCV 2019).

    Standard: the ST-VQA metric, also used by DocVQA / TextVQA-style OCR evaluations:
    ``max over gold answers of s``, with ``s = 1 - NL`` if ``NL < tau`` else 0 and
    ``NL = Levenshtein(pred, gold) / max(len(pred), len(gold))``. Strings are compared
    lower-cased, with the ends stripped and inner whitespace runs collapsed to one space
    (as the ST-VQA/DocVQA evaluation scripts do). The threshold is strict as in the paper:
    ``NL == tau`` scores 0 (the DocVQA script keeps ``1 - NL == tau``; it only matters
    on that exact boundary). An empty prediction against a non-empty gold answer has NL = 1
    and scores 0. The corpus ANLS is the mean of these per-instance values.

    ``answers`` is one gold string or a list of them; a gold answer that is empty after
    normalisation raises ``ValueError`` (NL is undefined for two empty strings).
    """
    _check_str(prediction, "prediction")
    if isinstance(answers, str):
        answers = [answers]
    answers = _check_str_list(answers, "answers")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (0.0 < tau <= 1.0):
        raise ValueError(f"tau must be a number in (0, 1], got {tau!r}")
    pred = _anls_normalize(prediction)
    best = 0.0
    for i, answer in enumerate(answers):
        gold = _anls_normalize(answer)
        if not gold:
            raise ValueError(f"answers[{i}] is empty after stripping whitespace")
        nl = levenshtein(pred, gold) / max(len(pred), len(gold))
        if nl < tau:
            best = max(best, 1.0 - nl)
    return best


def anls_reference(prediction: str, answer: str, tau: float = 0.5) -> float:
    """The OCR score of ``--reference-compat``: the official HONES code's ANLS
    (docs/reference-code-behaviour.md). Both strings are lower-cased and every non-word
    character (``[^\\w]``: spaces and punctuation) removed, so "H B D D" equals "HBDD";
    ``s = 1 - Levenshtein / max(len)``, kept when ``s >= tau`` (a similarity of exactly
    0.5 counts), else 0. An empty prediction or answer (after removal) scores 0.0."""
    _check_str(prediction, "prediction")
    _check_str(answer, "answer")
    pred = re.sub(r"[^\w]", "", prediction.lower())
    gold = re.sub(r"[^\w]", "", answer.lower())
    if not pred or not gold:
        return 0.0
    score = 1.0 - levenshtein(pred, gold) / max(len(pred), len(gold))
    return score if score >= tau else 0.0


# ================================================================ captions (BLEU-4)
#
# COCO tokenisation. pycocoevalcap (the COCO caption evaluation) runs
#   java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer
#        -preserveLines -lowerCase
# over the captions and then drops every output token that is in its PUNCTUATIONS list.
# Java is not needed here: coco_caption_tokens reimplements that tokenizer for the
# constructions that occur in captions, and the tests pin its output to what the Java
# tokenizer printed for the same strings.

# pycocoevalcap's list, verbatim. It is compared with lower-cased tokens, so the bracket
# entries never match: "(" comes out as "-lrb-" and stays a token, as in the official run.
_COCO_PUNCTUATIONS = (
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
)
_OPEN_BRACKETS = {"(": "-LRB-", "[": "-LSB-", "{": "-LCB-"}
_CLOSE_BRACKETS = {")": "-RRB-", "]": "-RSB-", "}": "-RCB-"}
# Words whose final period PTBTokenizer 3.4.1 keeps attached (each checked against the
# jar, mid-sentence and sentence-final; "may.", "sun.", "sat.", "fig.", "sec.", "mm." split).
_ABBREV_ALWAYS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "drs",
        "prof",
        "st",
        "mt",
        "ave",
        "rd",
        "blvd",
        "jr",
        "sr",
        "bros",
        "esq",
        "ltd",
        "corp",
        "inc",
        "co",
        "cos",
        "dept",
        "univ",
        "col",
        "gen",
        "rev",
        "maj",
        "det",
        "adm",
        "sgt",
        "capt",
        "pres",
        "hon",
        "mme",
        "mlle",
        "lt",
        "gov",
        "govs",
        "sen",
        "sens",
        "rep",
        "reps",
        "atty",
        "attys",
        "messrs",
        "cpl",
        "pvt",
        "ste",
        "lieut",
        "brig",
        "cmdr",
        "comdr",
        "pfc",
        "spc",
        "supt",
        "supts",
        "plc",
        "bancorp",
        "bhd",
        "assn",
        "intl",
        "sys",
        "pty",
        "ptys",
        "pte",
        "ph",
        "est",
        "sq",
        "ft",
        "tel",
        "ext",
        "al",
        "etc",
        "vs",
        "seq",
        "ind",
        "mo",
        "va",
        "md",
        "ky",
        "ga",
        "ct",
        "vt",
        "fla",
        "calif",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "mon",
        "tue",
        "tues",
        "wed",
        "thu",
        "thurs",
        "fri",
    ]
)
# ... and those it keeps only when capitalised (state names that are also words).
_ABBREV_IF_CAPITALISED = frozenset(["wash", "miss", "ill", "mass", "del", "la", "pa", "tex"])
_CONTRACTION_SUFFIX = re.compile(r"^(.+?)(n't|'s|'re|'ve|'m|'d|'ll)$", re.IGNORECASE)
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "gimme": ("gim", "me"),
    "lemme": ("lem", "me"),
}
_TYPOGRAPHIC = str.maketrans({"’": "'", "‘": "'", "`": "'", "“": '"', "”": '"', "…": " ... ", "–": " -- ", "—": " -- "})


def _period_is_abbreviation(core: str, next_chunk: str) -> bool:
    low = core.lower()
    if low in _ABBREV_ALWAYS:
        return True
    if low in _ABBREV_IF_CAPITALISED:
        return core[:1].isupper()
    if re.fullmatch(r"[a-z](\.[a-z])+", low):  # u.s, a.m, e.g
        return True
    if low in ("no", "nos"):  # "No. 5" only
        return next_chunk[:1].isdigit()
    if re.fullmatch(r"[a-z]", low):  # "plan b." keeps it; "the A. A dog" splits
        return not (core.isupper() and next_chunk[:1].isupper())
    return False


def _split_core(core: str) -> list[str]:
    """Inner splits of a word with its outer punctuation already peeled off."""
    if not core:
        return []
    # ',' ':' ';' inside a word split it unless between digits ("1,000", "10:30"); '*' is
    # its own token
    pieces = re.split(r"((?<!\d)[,:]|[,:](?!\d)|;|\*)", core)
    tokens: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        low = piece.lower()
        if low in _SPLIT_WORDS:
            tokens.extend(_SPLIT_WORDS[low])
            continue
        m = _CONTRACTION_SUFFIX.match(piece)
        if m:  # do n't, ca n't, wo n't, it 's, we 're, i 'm
            tokens.extend(m.groups())
            continue
        tokens.append(piece)
    return tokens


def _ptb_chunk(chunk: str, next_chunk: str) -> list[str]:
    head: list[str] = []
    tail: list[str] = []
    # leading marks
    while chunk:
        c = chunk[0]
        if c == '"':
            chunk = chunk[1:]
        elif c == "'":
            if len(chunk) > 1 and chunk[1].isdigit():  # '90s, '09
                break
            if chunk.lower() in ("'em", "'s", "'re", "'ve", "'m", "'d", "'ll"):
                break  # a clitic on its own ("the field 's grass")
            if chunk.lower() in ("'tis", "'twas"):
                head.extend([chunk[:2], chunk[2:]])  # 't is
                chunk = ""
                break
            chunk = chunk[1:]
        elif c in _OPEN_BRACKETS:
            head.append(_OPEN_BRACKETS[c])
            chunk = chunk[1:]
        elif (c in "$#" and len(chunk) > 1) or (c in ",;:" and len(chunk) > 1):
            head.append(c)
            chunk = chunk[1:]
        else:
            break
    # trailing marks, innermost last
    while chunk:
        if chunk.endswith('"'):
            chunk = chunk[:-1]
        elif chunk.endswith("'") and len(chunk) > 1:
            tail.insert(0, "'")  # closing quote or plural possessive (dogs')
            chunk = chunk[:-1]
        elif chunk[-1] in _CLOSE_BRACKETS and len(chunk) > 1:
            tail.insert(0, _CLOSE_BRACKETS[chunk[-1]])
            chunk = chunk[:-1]
        elif chunk[-1] in "!?" and len(chunk) > 1:
            run = re.search(r"[!?]+$", chunk).group(0)
            if run == chunk:
                break
            tail.insert(0, run)  # "!!" and "?!" stay one token
            chunk = chunk[: -len(run)]
        elif chunk[-1] in ",;:%/" and len(chunk) > 1:  # "w/" -> w /
            tail.insert(0, chunk[-1])
            chunk = chunk[:-1]
        elif chunk.endswith(".") and len(chunk) > 1 and not chunk.endswith(".."):
            core = chunk[:-1]
            if _period_is_abbreviation(core, next_chunk):
                break
            tail.insert(0, ".")
            chunk = core
        else:
            break
    if chunk in ("'", '"') or (chunk and set(chunk) <= set(".-")):
        middle = [chunk]
    else:
        middle = _split_core(chunk)
    return head + middle + tail


def coco_caption_tokens(text: str) -> list[str]:
    """Tokens of a caption as the COCO caption evaluation sees them.

    Standard: pycocoevalcap's ``PTBTokenizer`` step (Stanford CoreNLP 3.4.1 PTBTokenizer
    with ``-preserveLines -lowerCase``, then removal of the tokens in its PUNCTUATIONS
    list), reimplemented in Python so that no Java is needed. Handled as the Java tokenizer
    does: lower case; '.', ',', ';', ':', '?', '!', quotes (straight, typographic,
    backtick), '-', '--', en/em dashes and '...' split off and dropped; runs like "!!" or
    "?!" kept as one token (not in the list, so the official run keeps them); clitics split
    ("don't" -> "do n't", "it's" -> "it 's", "dogs'" -> "dogs"); "cannot", "gonna", ...
    split; '$', '#', '%', '*' split off and kept; brackets kept as ``-lrb-``/``-rrb-``,
    ``-lsb-``/``-rsb-``, ``-lcb-``/``-rcb-`` (the official list is upper case and is
    compared with lower-cased tokens, so these survive); commas/colons inside numbers, and
    hyphens and slashes inside words, kept; a final period kept on the abbreviations the
    Java lexer knows (``mr.``, ``st.``, ``u.s.``, ``a.m.``, ``etc.``, single letters, ...).

    Known differences from the Java lexer, all rare in captions: emoticons, SGML-like
    ``<tags>``, inch/foot marks (``6'2"``), ``rock'n'roll``-style clitics, some
    context-dependent single-letter abbreviations, and the lexer's "'em" misparse of
    words such as "'empty'".
    """
    _check_str(text, "text")
    text = text.replace("\n", " ").translate(_TYPOGRAPHIC)
    text = re.sub(r"\.\.\.+", " ... ", text)
    text = re.sub(r"--+", " -- ", text)
    text = text.replace('"', ' " ')
    chunks = text.split()
    tokens: list[str] = []
    for i, chunk in enumerate(chunks):
        tokens.extend(_ptb_chunk(chunk, chunks[i + 1] if i + 1 < len(chunks) else ""))
    return [t for t in (tok.lower() for tok in tokens) if t and t not in _COCO_PUNCTUATIONS]


def _bleu_inputs(predictions, references) -> tuple[list[str], list[list[str]]]:
    preds = _check_str_list(predictions, "predictions")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a list of lists of str, got {type(references).__name__}")
    if len(references) != len(preds):
        raise ValueError(f"predictions and references differ in length: {len(preds)} != {len(references)}")
    hyp_lines = [" ".join(coco_caption_tokens(p)) for p in preds]
    ref_lines = []
    for i, refs in enumerate(references):
        refs = _check_str_list(refs, f"references[{i}]")
        lines = []
        for j, ref in enumerate(refs):
            tokens = coco_caption_tokens(ref)
            if not tokens:
                raise ValueError(f"references[{i}][{j}] ({ref!r}) is empty after COCO tokenisation")
            lines.append(" ".join(tokens))
        ref_lines.append(lines)
    return hyp_lines, ref_lines


@cache
def _sacrebleu(sentence: bool):
    from sacrebleu.metrics import BLEU

    if sentence:
        return BLEU(tokenize="none", smooth_method="exp", effective_order=True, force=True)
    return BLEU(tokenize="none", smooth_method="none", effective_order=False, force=True)


def corpus_bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in [0, 1], as the COCO caption evaluation (pycocoevalcap ``Bleu(4)``).

    Standard: Papineni et al. (2002) corpus BLEU with uniform weights over 1..4-gram
    clipped precisions, no smoothing, and the brevity penalty over the sum of each
    caption's *closest* reference length (ties to the shorter), which is pycocoevalcap's
    ``option='closest'``; text is tokenised by :func:`coco_caption_tokens` (COCO's PTB
    tokenisation with its punctuation removal, lower case). Any number (>= 1) of references
    per caption.

    Implementation: sacrebleu's ``BLEU`` on the pre-tokenised strings (``tokenize='none'``,
    ``smooth_method='none'``). sacrebleu is maintained, pure Python, already a dependency,
    and computes exactly these statistics (closest reference length, same tie rule).
    pycocoevalcap was not used: its wheel bundles ~100 MB of Java jars and its tokenizer
    needs a JVM; its BLEU differs from this only by the 1e-15/1e-9 guard terms it adds to
    each precision and ratio (checked against pycocoevalcap 1.2 with its Java tokenizer on
    5 to 120 captions: differences below 2e-11) and by returning a tiny positive value
    (e.g. 6e-9) instead of exactly 0 when some n-gram order has no match at all. The tests
    cross-check the value against NLTK's ``corpus_bleu`` on the same tokens.

    Raises ``ValueError`` on empty inputs, a length mismatch, a caption without
    references, or a reference that is empty after tokenisation. An empty prediction is a
    valid (zero-length) hypothesis.
    """
    hyp_lines, ref_lines = _bleu_inputs(predictions, references)
    n_streams = max(len(r) for r in ref_lines)
    # sacrebleu takes reference *streams*; None marks a caption with fewer references
    streams = [[r[j] if j < len(r) else None for r in ref_lines] for j in range(n_streams)]
    return _sacrebleu(sentence=False).corpus_score(hyp_lines, streams).score / 100.0


def sentence_bleu4(prediction: str, references: Sequence[str]) -> float:
    """Smoothed BLEU-4 of one caption against its references, in [0, 1].

    The per-instance utility (not a COCO number; report :func:`corpus_bleu4`). Same
    tokenisation and closest-reference brevity penalty as :func:`corpus_bleu4`, with
    sacrebleu's sentence-level defaults: ``smooth_method='exp'`` (Chen & Cherry 2014
    method 3, the NIST/mteval geometric smoothing: the k-th order with no match counts
    1/2^k matches) and ``effective_order=True`` (captions shorter than 4 tokens are scored
    on the n-gram orders they have). Why: without smoothing a single caption scores 0
    whenever it shares no 4-gram with a reference, which is most short captions, so
    per-instance scores would be mostly 0 and carry no signal; this smoothing keeps 1.0
    for an exact match, only adds credit for missing orders, and is the one sacrebleu and
    NLTK (``SmoothingFunction().method3``) both implement. An empty prediction scores 0.
    """
    _check_str(prediction, "prediction")
    hyp_lines, ref_lines = _bleu_inputs([prediction], [references])
    return _sacrebleu(sentence=True).sentence_score(hyp_lines[0], ref_lines[0]).score / 100.0


BLEU4_N_STATS = 10  # hyp_len, ref_len, matches 1..4, totals 1..4


def bleu4_stats(prediction: str, references: Sequence[str]) -> list[int]:
    """Sufficient statistics of one caption for :func:`corpus_bleu4`, to be summed.

    ``[hyp_len, closest_ref_len, match_1, .., match_4, total_1, .., total_4]`` on the COCO
    tokens (clipped n-gram matches, hypothesis n-gram counts, closest reference length as in
    :func:`corpus_bleu4`). Corpus BLEU is a function of the element-wise sum of these over
    the items, so ``bleu4_from_stats(sum of bleu4_stats)`` equals ``corpus_bleu4`` of the
    same items, and shards of a corpus can be scored separately and merged.
    """
    _check_str(prediction, "prediction")
    hyp_lines, ref_lines = _bleu_inputs([prediction], [references])
    score = _sacrebleu(sentence=False).corpus_score(hyp_lines, [[r] for r in ref_lines[0]])
    return [int(score.sys_len), int(score.ref_len), *map(int, score.counts), *map(int, score.totals)]


def bleu4_from_stats(stats) -> float:
    """Corpus BLEU-4 in [0, 1] from summed :func:`bleu4_stats` (same definition as
    :func:`corpus_bleu4`: no smoothing, brevity penalty on the summed closest lengths)."""
    values = _float_list(stats, "stats")
    if len(values) != BLEU4_N_STATS:
        raise ValueError(f"stats must hold {BLEU4_N_STATS} numbers (see bleu4_stats), got {len(values)}")
    for i, v in enumerate(values):
        if not math.isfinite(v) or v < 0 or v != int(v):
            raise ValueError(f"stats[{i}] must be a whole number >= 0 (a count), got {v!r}")
    values = [int(v) for v in values]
    from sacrebleu.metrics import BLEU

    sys_len, ref_len = values[0], values[1]
    correct, total = values[2:6], values[6:10]
    return BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="none", max_ngram_order=4).score / 100.0


# ---------------------------------------------------------------- NLTK BLEU (reference)
#
# The official HONES code's caption metric falls back to NLTK when pycocoevalcap is not
# importable, which is the case in its pinned environment (nltk==3.9.1, no pycocoevalcap):
#   corpus_bleu(refs, preds, weights=(.25,)*4, smoothing_function=SmoothingFunction().method1)
# on ``lower().split()`` tokens. Written out here as summable statistics (so shards can be
# merged), and checked against NLTK itself in the tests.

_NLTK_EPSILON = 0.1  # SmoothingFunction(epsilon=0.1).method1


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def nltk_bleu4_stats(prediction: str, references: Sequence[str]) -> list[int]:
    """Statistics of one caption for :func:`nltk_bleu4_from_stats`, to be summed:
    ``[hyp_len, closest_ref_len, match_1..4, total_1..4]`` on ``lower().split()`` tokens.

    As NLTK's ``corpus_bleu``: matches are clipped by the maximum count in any one
    reference; each sentence's n-gram total is ``max(1, #n-grams)`` (NLTK's
    ``modified_precision`` denominator); the reference length is the one closest to the
    hypothesis length, ties to the shorter. Blank references are dropped (as the reference
    code does); a caption with no reference left raises ``ValueError``.
    """
    _check_str(prediction, "prediction")
    refs = [r.lower().split() for r in _check_str_list(references, "references") if r.strip()]
    if not refs:
        raise ValueError(f"references {list(references)!r} are all blank; a caption needs at least one reference")
    hyp = prediction.lower().split()
    matches, totals = [], []
    for n in range(1, 5):
        counts: dict[tuple[str, ...], int] = {}
        for g in _ngrams(hyp, n):
            counts[g] = counts.get(g, 0) + 1
        max_ref: dict[tuple[str, ...], int] = {}
        for ref in refs:
            ref_counts: dict[tuple[str, ...], int] = {}
            for g in _ngrams(ref, n):
                ref_counts[g] = ref_counts.get(g, 0) + 1
            for g, c in ref_counts.items():
                max_ref[g] = max(max_ref.get(g, 0), c)
        matches.append(sum(min(c, max_ref.get(g, 0)) for g, c in counts.items()))
        totals.append(max(1, sum(counts.values())))
    hyp_len = len(hyp)
    closest = min((len(r) for r in refs), key=lambda length: (abs(length - hyp_len), length))
    return [hyp_len, closest, *matches, *totals]


def nltk_bleu4_from_stats(stats) -> float:
    """NLTK ``corpus_bleu`` (uniform 4-gram weights, ``method1`` smoothing) from summed
    :func:`nltk_bleu4_stats`: 0 when no unigram matches; an order with no match gets
    precision ``0.1 / total``; brevity penalty ``exp(1 - r / c)`` when ``c < r`` (0 when
    ``c == 0``)."""
    values = _float_list(stats, "stats")
    if len(values) != BLEU4_N_STATS:
        raise ValueError(f"stats must hold {BLEU4_N_STATS} numbers (see nltk_bleu4_stats), got {len(values)}")
    for i, v in enumerate(values):
        if not math.isfinite(v) or v < 0 or v != int(v):
            raise ValueError(f"stats[{i}] must be a whole number >= 0 (a count), got {v!r}")
    hyp_len, ref_len = values[0], values[1]
    matches, totals = values[2:6], values[6:10]
    if matches[0] == 0:
        return 0.0
    precisions = [(m if m > 0 else _NLTK_EPSILON) / t for m, t in zip(matches, totals)]
    if hyp_len > ref_len:
        bp = 1.0
    elif hyp_len == 0:
        bp = 0.0
    else:
        bp = math.exp(1.0 - ref_len / hyp_len)
    return bp * math.exp(math.fsum(0.25 * math.log(p) for p in precisions))


def nltk_corpus_bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The reference code's corpus BLEU-4 (NLTK, method1 smoothing, ``lower().split()``)."""
    preds = _check_str_list(predictions, "predictions")
    if isinstance(references, str) or not isinstance(references, Sequence) or len(references) != len(preds):
        raise ValueError("references must be a list of reference lists, one per prediction")
    total = [0] * BLEU4_N_STATS
    for p, refs in zip(preds, references):
        total = [a + b for a, b in zip(total, nltk_bleu4_stats(p, refs))]
    return nltk_bleu4_from_stats(total)


# ================================================================ retrieval (NDCG)


def _float_list(values, what: str) -> list[float]:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{what} must be a sequence of numbers, got {type(values).__name__}")
    try:
        items = list(values)
    except TypeError:
        raise ValueError(f"{what} must be a sequence of numbers, got {type(values).__name__}") from None
    out = []
    for i, v in enumerate(items):
        if isinstance(v, (str, bytes)):
            raise ValueError(f"{what}[{i}] must be a number, got {v!r}")
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise ValueError(f"{what}[{i}] must be a number, got {v!r}") from None
    return out


def _index(value, what: str) -> int:
    """An integer argument (int or NumPy/torch integer scalar; bool rejected)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an int, got {value!r}") from None


def ndcg_at_k(scores, relevances, k: int = 5) -> float:
    """NDCG@k of one query's candidate list (Järvelin & Kekäläinen, TOIS 2002).

    Candidates are ranked by ``scores``, highest first; ties keep candidate order (a stable
    sort: of two equal scores the candidate with the smaller index ranks higher, so a
    shuffled candidate list makes the tie-break random over the data set). With linear
    gains, ``DCG@k = sum over ranks r = 1..k of rel(r) / log2(r + 1)`` and NDCG@k divides it
    by the DCG@k of the ideal order (relevances sorted descending). For a single relevant
    candidate this is ``1 / log2(rank + 1)`` when it ranks in the top k, else 0.

    ``scores`` and ``relevances``: equal-length sequences of numbers (lists, NumPy arrays,
    1-D tensors); relevances finite and >= 0 with at least one > 0. ``ValueError`` names the
    index of a NaN score or a bad relevance, and rejects an empty candidate list, a length
    mismatch and ``k < 1``. +-inf scores are allowed (they rank first/last).
    """
    s = _float_list(scores, "scores")
    rel = _float_list(relevances, "relevances")
    if not s:
        raise ValueError("empty candidate list: scores has no elements")
    if len(s) != len(rel):
        raise ValueError(f"scores and relevances differ in length: {len(s)} != {len(rel)}")
    k = _index(k, "k")
    if k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    for i, v in enumerate(s):
        if math.isnan(v):
            raise ValueError(f"scores[{i}] is NaN")
    for i, v in enumerate(rel):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"relevances[{i}] must be finite and >= 0, got {v!r}")
    ideal = sorted(rel, reverse=True)[:k]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    if idcg == 0.0:
        raise ValueError("no relevant candidate: all relevances are 0, NDCG is undefined")
    order = sorted(range(len(s)), key=lambda i: -s[i])  # stable: ties by candidate index
    dcg = sum(rel[i] / math.log2(r + 2) for r, i in enumerate(order[:k]))
    return dcg / idcg


def ndcg_at_5_single(scores, positive_index: int) -> float:
    """NDCG@5 with one relevant candidate, ``positive_index`` (the HONES retrieval setting:
    1 positive + 49 hard negatives): ``1 / log2(rank + 1)`` if the positive ranks 1..5,
    else 0; ties in ``scores`` are broken by candidate order as in :func:`ndcg_at_k`."""
    s = _float_list(scores, "scores")
    if not s:
        raise ValueError("empty candidate list: scores has no elements")
    positive_index = _index(positive_index, "positive_index")
    if not 0 <= positive_index < len(s):
        raise ValueError(f"positive_index {positive_index} is out of range for {len(s)} candidates")
    relevances = [0.0] * len(s)
    relevances[positive_index] = 1.0
    return ndcg_at_k(s, relevances, k=5)
