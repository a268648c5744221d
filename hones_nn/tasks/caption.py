"""Caption: one sentence per image against 5 references; corpus BLEU-4, COCO style."""

from __future__ import annotations

import random

from hones_nn.tasks.base import BadItemError, Item, Prompt, Task, register_task
from hones_nn.tasks.metrics import (
    bleu4_from_stats,
    bleu4_stats,
    corpus_bleu4,
    nltk_bleu4_from_stats,
    nltk_bleu4_stats,
    nltk_corpus_bleu4,
    sentence_bleu4,
)
from hones_nn.tasks.prompts import instruction
from hones_nn.tasks.targets import MAX_TARGET_TOKENS, caption_idf, target_token_ids


@register_task
class CaptionTask(Task):
    """Corpus metric = BLEU-4 over the set (COCO caption evaluation). Instance utility
    = sentence BLEU-4 of the one caption against its references (a per-example P_t is
    needed for per-example drops; the head score can instead use the drop of corpus BLEU,
    as the reference code does: see ``corpus_head_scores`` in the head recipe).

    ``reference_compat``: the corpus metric (and so the compat head scores, which are
    drops of corpus BLEU) is the reference code's NLTK corpus BLEU-4 with ``method1``
    smoothing on ``lower().split()`` tokens (``nltk_corpus_bleu4``).

    The teacher-forced answer (for log-prob utilities and steering) is one reference,
    drawn with a fixed per-image seed, as the paper trains "on one random reference".
    """

    name = "caption"
    metric_name = "bleu4"
    required_fields = ("captions",)
    corpus_level_metric = True

    def make_item(self, record: dict, row: int) -> Item:
        refs = [c.strip() for c in (record["captions"] or []) if c and c.strip()]
        if not refs:
            raise BadItemError(f"caption item {record['image_id']!r} has no reference captions; fix or drop it")
        gold = refs[random.Random(f"caption-gold:{record['image_id']}").randrange(len(refs))]
        prompt = Prompt(record["image_id"], row, instruction(self.family, "caption", self.reference_compat), gold)
        return Item(record["image_id"], row, [prompt], {"references": refs})

    def utility(self, item: Item, outputs: list) -> float:
        return sentence_bleu4(outputs[0], item.data["references"])

    def corpus_metric(self, items: list[Item], outputs: list[list]) -> float:
        if not items:
            raise ValueError("task 'caption': no examples to score")
        predictions, references = [o[0] for o in outputs], [i.data["references"] for i in items]
        if self.reference_compat:
            return nltk_corpus_bleu4(predictions, references)
        return corpus_bleu4(predictions, references)

    def target_texts(self, item: Item) -> list[str]:
        return list(item.data["references"][:5])

    def answer_texts(self, item: Item) -> list[str]:
        return list(item.data["references"])

    def direction_context(self, tokenizer, items: list[Item]) -> dict[int, float]:
        """IDF weights of the references' tokens over the split (see ``caption_idf``)."""
        return caption_idf(tokenizer, items)

    def direction_tokens(self, tokenizer, item: Item, context=None) -> tuple[list[int], list[float]]:
        """The tokens of the first five references, IDF-weighted (paper: each reference
        encoded on its own; reference code: the five joined by spaces and encoded once)."""
        refs = item.data["references"][:5]
        if self.reference_compat:
            ids = target_token_ids(tokenizer, " ".join(refs))
        else:
            ids = [t for r in refs for t in target_token_ids(tokenizer, r)][:MAX_TARGET_TOKENS]
        idf = context or {}
        return ids, [idf.get(t, 1.0) for t in ids]

    def descriptive_text(self, item: Item) -> str | None:
        return item.data["references"][0]

    def metric_stats(self, item: Item, outputs: list):
        if self.reference_compat:
            return nltk_bleu4_stats(outputs[0], item.data["references"])
        return bleu4_stats(outputs[0], item.data["references"])

    def metric_from_stats(self, stats) -> float:
        if self.reference_compat:
            return nltk_bleu4_from_stats(stats)
        return bleu4_from_stats(stats)
