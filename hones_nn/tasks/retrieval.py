"""Retrieval: pairwise image-text verification over 1 positive + 49 hard negatives.

Each candidate is asked "Does the candidate correctly describe the image? Answer exactly
Yes or No."; candidates are ranked by logit(" Yes") - logit(" No") at the last prompt
position T, and the query is scored by NDCG@5 (paper appendix A.2-A.3).
"""

from __future__ import annotations

from hones_nn.tasks.base import BadItemError, Item, Prompt, Task, register_task
from hones_nn.tasks.metrics import ndcg_at_5_single
from hones_nn.tasks.prompts import NO_WORD, YES_WORD, instruction


def decision_token_ids(tokenizer) -> tuple[int, int]:
    """The first token ids of " Yes" and " No" (with the leading space, as they follow the
    assistant turn). The reference code mixes "Yes" and " Yes", which differ in BPE
    vocabularies; we always use the spaced form, for scoring and for u_y alike.
    """
    ids = []
    for word in (YES_WORD, NO_WORD):
        pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        pieces = [p for p in pieces if p not in set(tokenizer.all_special_ids)]
        if not pieces or pieces[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no token for {' ' + word!r}, which retrieval scoring needs; "
                "use a model whose vocabulary holds Yes/No"
            )
        ids.append(pieces[0])
    if ids[0] == ids[1]:
        raise ValueError(
            f"the tokenizer splits ' Yes' and ' No' to the same first token (id {ids[0]}), so "
            "logit(Yes) - logit(No) is always 0: the retrieval metric would be degenerate"
        )
    return ids[0], ids[1]


@register_task
class RetrievalTask(Task):
    name = "retrieval"
    metric_name = "ndcg@5"
    generative = False
    required_fields = ("retrieval",)

    def make_item(self, record: dict, row: int) -> Item:
        retrieval = record["retrieval"] or {}
        candidates = retrieval.get("candidates") or []
        positive = retrieval.get("positive_index")
        image_id = record["image_id"]
        if not candidates:
            raise BadItemError(f"retrieval item {image_id!r} has no candidates; rebuild the dataset")
        if positive is None or not 0 <= positive < len(candidates):
            raise BadItemError(f"retrieval item {image_id!r} has no valid positive_index; rebuild the dataset")
        prompts = [
            Prompt(image_id, row, instruction(self.family, "retrieval", candidate=c),
                   YES_WORD if k == positive else NO_WORD)
            for k, c in enumerate(candidates)
        ]
        return Item(image_id, row, prompts, {"positive_index": positive, "n_candidates": len(candidates)})

    def utility(self, item: Item, outputs: list) -> float:
        return ndcg_at_5_single(outputs, item.data["positive_index"])

    def target_texts(self, item: Item) -> list[str]:
        return [YES_WORD]

    def positive_prompt(self, item: Item) -> Prompt:
        """HONES's retrieval target: the decision " Yes" with the positive candidate."""
        return item.prompts[item.data["positive_index"]]
