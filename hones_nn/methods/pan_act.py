"""Pan et al. (2024) contribution score ("Act"), a seed-paper baseline.

"Finding and Editing Multi-Modal Neurons in Pre-Trained Transformers" (Pan, Cao, Wang,
Yang, Wang; Findings of ACL 2024; shared/papers/pan-multimodal-neurons-summary.txt):
a gradient-free contribution of FFN neuron i to a target token t, read through the
unembedding without the final norm. docs/methods.md, "Baselines":

    s_{l,i}(x) = g_{l,i}(T) * W_down[:, i] . W_U[t],      g = act_fn(gate_proj(x)),

at the last prompt position T, averaged over the discovery examples (score = E_x s,
ranked descending). Note: the activation is g (the gated activation that "fires"), as
the spec says for Pan et al., not the neuron z = g * up_proj(x) of HONES.

Target token t (documented choices):

* VQA, OCR: the first non-special token of the gold answer / text;
* retrieval: the decision token " Yes" (evaluation's id), on the positive candidate's
  prompt (as HONES);
* caption (Pan et al. score the nouns of a caption; we have no part-of-speech tagger):
  the content words of the FIRST reference -- its alphabetic words minus a fixed English
  stop-word list (:data:`STOP_WORDS`) -- each represented by its first token within the
  tokenised reference (offsets of a fast tokenizer, else the word encoded alone with a
  leading space); the score averages s over those tokens, i.e. uses the mean of their
  W_U rows. A reference with no content word falls back to all its tokens.

Pan et al. read the activation at the position that generates each concept; the spec's
T (the prompt's last position) is used here for every task, so no generation is needed.

Cost: 1 forward per example (prompt prefill only), no backward.
"""

from __future__ import annotations

import functools
import re

import torch

from hones_nn.engine.readout import read_at_T
from hones_nn.methods.base import MeanOverExamples, RunContext, ShardPlan, register_method
from hones_nn.tasks.targets import special_ids, target_token_ids

STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "it",
        "its",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "of",
        "in",
        "on",
        "at",
        "to",
        "from",
        "by",
        "with",
        "without",
        "for",
        "into",
        "onto",
        "over",
        "under",
        "above",
        "below",
        "behind",
        "beside",
        "between",
        "near",
        "next",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "yet",
        "as",
        "than",
        "then",
        "while",
        "if",
        "of",
        "up",
        "down",
        "out",
        "off",
        "about",
        "around",
        "through",
        "across",
        "along",
        "against",
        "some",
        "any",
        "each",
        "every",
        "all",
        "both",
        "few",
        "many",
        "much",
        "more",
        "most",
        "other",
        "another",
        "such",
        "no",
        "not",
        "only",
        "own",
        "same",
        "very",
        "too",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "several",
        "lot",
        "lots",
        "he",
        "she",
        "they",
        "we",
        "you",
        "i",
        "his",
        "her",
        "their",
        "our",
        "your",
        "my",
        "him",
        "them",
        "us",
        "me",
        "who",
        "whom",
        "whose",
        "which",
        "what",
        "where",
        "when",
        "why",
        "how",
        "can",
        "could",
        "will",
        "would",
        "shall",
        "should",
        "may",
        "might",
        "must",
        "just",
        "also",
        "still",
        "again",
    ]
)
_WORD = re.compile(r"[A-Za-z]+")


def content_words(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the alphabetic words of ``text`` not in STOP_WORDS."""
    return [m.span() for m in _WORD.finditer(text) if m.group().lower() not in STOP_WORDS]


def caption_target_ids(tokenizer, reference: str) -> list[int]:
    """The first token of each content word of ``reference`` (duplicates kept)."""
    spans = content_words(reference)
    special = special_ids(tokenizer)
    ids: list[int] = []
    if spans and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(reference, add_special_tokens=False, return_offsets_mapping=True)
        for begin, end in spans:
            for tok, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
                if b > begin and a < end and tok not in special:
                    ids.append(tok)
                    break
    elif spans:
        for begin, end in spans:
            pieces = target_token_ids(tokenizer, " " + reference[begin:end])
            if pieces:
                ids.append(pieces[0])
    return ids or target_token_ids(tokenizer, reference)


def pan_target_ids(tokenizer, task, item) -> list[int]:
    """The target tokens whose W_U rows are averaged: the content words of the task's
    descriptive text (caption: the first reference), else the first gold token."""
    reference = task.descriptive_text(item)
    if reference is not None:
        ids = caption_target_ids(tokenizer, reference)
        if not ids:
            raise ValueError(
                f"item {item.item_id!r}: the reference {reference!r} has no non-special token; "
                "fix or drop the item, or use an activation baseline ('ap', 'ma')"
            )
        return ids
    return task.gold_token_ids(tokenizer, item)[:1]


def pan_scores(values, envoy, adapter, targets) -> torch.Tensor:
    """Inside the read trace (``read_at_T(..., reduce=)``): s [B, L, d_ff] float64 = g(T) *
    <W_down[:, i], mean W_U[t]>, the weights read where they are."""
    W_U = adapter.lm_head(envoy).weight.detach()
    direction = torch.stack(
        [
            W_U.index_select(0, torch.tensor(list(ids), dtype=torch.long, device=W_U.device)).float().cpu().mean(0)
            for ids in targets
        ]
    )  # [B, hidden]
    g = values["g"]
    out = torch.zeros(g.shape[0], g.shape[1], g.shape[2], dtype=torch.float64)
    for layer in range(g.shape[1]):
        W = adapter.down_proj(envoy, layer).weight.detach()  # [hidden, d_ff]
        out[:, layer] = g[:, layer].double() * (direction.to(W.device, torch.float32) @ W.float()).double().cpu()
    return out


@torch.no_grad()
def pan_per_example(ctx: RunContext, item_ids: list[int]) -> torch.Tensor:
    """s_{l,i}(x) [n, L, d_ff] float64 for the given items (one trace per batch; the
    projection runs inside it, so the client needs no weights)."""
    items = ctx.items(item_ids)
    tokenizer, task = ctx.engine.tokenizer, ctx.td.task
    L, F = ctx.sizes.num_layers, ctx.sizes.d_ff
    out = torch.zeros(len(items), L, F, dtype=torch.float64)
    for start in range(0, len(items), ctx.batch_size):
        batch = items[start : start + ctx.batch_size]
        targets = [list(pan_target_ids(tokenizer, task, item)) for item in batch]
        reduce = functools.partial(pan_scores, targets=targets)
        out[start : start + len(batch)] = read_at_T(ctx.engine, ctx.td, batch, sites=("g",), reduce=reduce)
    return out


@register_method
class PanContribution(MeanOverExamples):
    name = "pan-act"
    summary = "Pan et al. 2024 (Act): g_i(T) * W_down[:, i] . W_U[t] for the gold token t (caption: content words)"
    needs = "discovery split of the task (gold targets; captions: the first reference)"
    site = "g (act_fn output)"

    def per_example(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> torch.Tensor:
        return pan_per_example(ctx, item_ids)

    def result_meta(self, plan: ShardPlan) -> dict:
        return {"activation": "g = act_fn(gate_proj(x)) at T", "caption_target": "content words of the first reference"}
