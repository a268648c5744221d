"""OCR: transcribe the word inside the blue box (the paper's visual prompt); ANLS."""

from __future__ import annotations

from hones_nn.tasks.base import BadItemError, Item, Prompt, Task, register_task
from hones_nn.tasks.metrics import anls, anls_reference
from hones_nn.tasks.prompts import instruction


@register_task
class OCRTask(Task):
    """Utility = ANLS with tau = 0.5 (Biten et al. 2019); ``reference_compat``: the
    reference code's ANLS (non-word characters removed, a similarity of 0.5 kept)."""

    name = "ocr"
    metric_name = "anls"
    required_fields = ("ocr",)

    def make_item(self, record: dict, row: int) -> Item:
        text = ((record["ocr"] or {}).get("text") or "").strip()
        if not text:
            raise BadItemError(f"OCR item {record['image_id']!r} has an empty text; fix or drop the record")
        prompt = Prompt(record["image_id"], row, instruction(self.family, "ocr", self.reference_compat), text)
        return Item(record["image_id"], row, [prompt], {"text": text})

    def utility(self, item: Item, outputs: list) -> float:
        if self.reference_compat:
            return anls_reference(outputs[0], item.data["text"])
        return anls(outputs[0], [item.data["text"]])

    def target_texts(self, item: Item) -> list[str]:
        return [item.data["text"]]
