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
            Prompt(
                image_id,
                row,
                instruction(self.family, "retrieval", self.reference_compat, candidate=c),
                YES_WORD if k == positive else NO_WORD,
            )
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

    def attribution_prompt(self, item: Item) -> Prompt:
        return self.positive_prompt(item)

    def utility_prompts(self, item: Item, utility: str) -> list[int]:
        # the fast 'prob' utility is P(" Yes") on the positive candidate alone
        if utility == "prob":
            return [item.data["positive_index"]]
        return list(range(len(item.prompts)))

    def teacher_forced_utility(self, item: Item, scores: dict[int, float], utility: str) -> float:
        """'logprob': the margin logit-diff(positive) - mean logit-diff(negatives);
        'prob': P(" Yes") among {Yes, No} on the positive candidate."""
        pos = item.data["positive_index"]
        if utility == "logprob":
            negatives = [d for p, d in scores.items() if p != pos]
            return scores[pos] - (sum(negatives) / len(negatives) if negatives else 0.0)
        return scores[pos]

    def screen_rows(self, item: Item) -> list[tuple[Prompt, float]]:
        """U = logit-diff(positive) - mean logit-diff(negatives): weight 1 on the positive,
        -1 / n_negatives on each negative."""
        pos = item.data["positive_index"]
        n_neg = len(item.prompts) - 1
        return [(prompt, 1.0 if p == pos else -1.0 / max(1, n_neg)) for p, prompt in enumerate(item.prompts)]

    def training_rows(self, item: Item, rng, negatives: int) -> list[tuple[Prompt, bool | None]]:
        """The positive candidate (" Yes") and ``negatives`` random negatives (" No")."""
        pos = item.data["positive_index"]
        rows: list[tuple[Prompt, bool | None]] = [(item.prompts[pos], True)]
        others = [k for k in range(len(item.prompts)) if k != pos]
        take = min(negatives, len(others))
        for k in sorted(rng.choice(len(others), size=take, replace=False).tolist()) if take else []:
            rows.append((item.prompts[others[k]], False))
        return rows

    def gold_token_ids(self, tokenizer, item: Item) -> list[int]:
        """The decision token " Yes" (the same id evaluation reads)."""
        return [decision_token_ids(tokenizer)[0]]

    def direction_tokens(self, tokenizer, item: Item, context=None) -> tuple[list[int], list[float]]:
        """ " Yes" (the evaluation's decision token); the reference code reads "Yes" without
        the leading space, a different BPE token: that is the ``reference_compat`` variant."""
        if self.reference_compat:
            from hones_nn.tasks.targets import target_token_ids

            return target_token_ids(tokenizer, YES_WORD)[:1], [1.0]
        return [decision_token_ids(tokenizer)[0]], [1.0]
