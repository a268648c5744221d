"""Caption: one sentence per image against 5 references; corpus BLEU-4, COCO style."""

from __future__ import annotations

import random

from hones_nn.tasks.base import BadItemError, Item, Prompt, Task, register_task
from hones_nn.tasks.metrics import corpus_bleu4, sentence_bleu4
from hones_nn.tasks.prompts import instruction


@register_task
class CaptionTask(Task):
    """Corpus metric = BLEU-4 over the set (COCO caption evaluation). Instance utility
    = sentence BLEU-4 of the one caption against its references (a per-example P_t is
    needed for per-example drops; the head score can instead use the drop of corpus BLEU,
    as the reference code does: see ``corpus_head_scores`` in the head recipe).

    The teacher-forced answer (for log-prob utilities and steering) is one reference,
    drawn with a fixed per-image seed, as the paper trains "on one random reference".
    """

    name = "caption"
    metric_name = "bleu4"
    required_fields = ("captions",)

    def make_item(self, record: dict, row: int) -> Item:
        refs = [c.strip() for c in (record["captions"] or []) if c and c.strip()]
        if not refs:
            raise BadItemError(f"caption item {record['image_id']!r} has no reference captions; fix or drop it")
        gold = refs[random.Random(f"caption-gold:{record['image_id']}").randrange(len(refs))]
        prompt = Prompt(record["image_id"], row, instruction(self.family, "caption"), gold)
        return Item(record["image_id"], row, [prompt], {"references": refs})

    def utility(self, item: Item, outputs: list) -> float:
        return sentence_bleu4(outputs[0], item.data["references"])

    def corpus_metric(self, items: list[Item], outputs: list[list]) -> float:
        if not items:
            raise ValueError("task 'caption': no examples to score")
        return corpus_bleu4([o[0] for o in outputs], [i.data["references"] for i in items])

    def target_texts(self, item: Item) -> list[str]:
        return list(item.data["references"][:5])
