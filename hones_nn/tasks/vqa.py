"""VQA: one question per image, one-word answers, VQAv2 soft accuracy over 10 answers."""

from __future__ import annotations

from hones_nn.tasks.base import BadItemError, Item, Prompt, Task, register_task
from hones_nn.tasks.metrics import vqa_reference_loose_match, vqa_soft_accuracy
from hones_nn.tasks.prompts import instruction


@register_task
class VQATask(Task):
    """Utility = official VQAv2 accuracy (min(#matching humans / 3, 1), averaged over the
    10 leave-one-out subsets, answers normalised the official way).

    The human answers are normalised too (``normalize_answers=True``): VQAv2's released
    annotations were already normalised by the same rules, so this reproduces the
    official setting for raw answers such as ours ("three" next to "3").

    ``reference_compat=True`` scores like the reference code instead: the single
    ``vqa.answer`` by its loose match (substrings both ways, no number words:
    ``vqa_reference_loose_match``), ``all_answers`` ignored.
    """

    name = "vqa"
    metric_name = "vqa_accuracy"
    required_fields = ("vqa",)
    asks_questions = True

    def make_item(self, record: dict, row: int) -> Item:
        qa = record["vqa"] or {}
        image_id = record["image_id"]
        question, answer = (qa.get("question") or "").strip(), (qa.get("answer") or "").strip()
        answers = [a for a in (qa.get("all_answers") or []) if a and a.strip()]
        if not question:
            raise BadItemError(f"VQA item {image_id!r} has an empty question; fix or drop the record")
        if not answer:
            raise BadItemError(f"VQA item {image_id!r} has an empty answer; fix or drop the record")
        if not answers:
            answers = [answer] * 10
        prompt = Prompt(
            image_id, row, instruction(self.family, "vqa", self.reference_compat, question=question), answer
        )
        return Item(
            image_id,
            row,
            [prompt],
            {"answer": answer, "all_answers": answers, "question_type": qa.get("question_type") or ""},
        )

    def utility(self, item: Item, outputs: list) -> float:
        prediction = outputs[0]
        if self.reference_compat:
            return vqa_reference_loose_match(prediction, item.data["answer"])
        return vqa_soft_accuracy(prediction, item.data["all_answers"], normalize_answers=True)

    def target_texts(self, item: Item) -> list[str]:
        return [item.data["answer"]]
