"""What a task is: how a benchmark row becomes prompts, targets, and a utility.

A task turns each image row of a split into an :class:`Item` (one VQA question, one OCR
word, one caption set, or one retrieval query with its 50 candidates). An item has one or
more :class:`Prompt` s (retrieval has one per candidate). Running the model on the
prompts gives an item's *outputs* (generated texts, or decision scores); the task turns
outputs into the instance utility P_t (HONES section 4.1) and into the corpus metric.

Tasks register themselves in :data:`TASKS` with :func:`register_task`; the CLI builds
``--task`` choices from it.
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image, UnidentifiedImageError

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(
    name: str, family: str = "llava", reference_compat: bool = False, instructions: dict[str, str] | None = None
) -> Task:
    """An instance of task ``name`` for a model ``family`` ("llava" or "qwen"); ``instructions``
    ({task: template}, e.g. from ``--instruction``) replace the built-in instructions."""
    from hones_nn.tasks import caption, ocr, retrieval, vqa  # noqa: F401  (registration)

    try:
        task = TASKS[name](family=family, reference_compat=reference_compat)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}") from None
    if instructions:
        from hones_nn.tasks.prompts import check_prompt_entry

        task.instructions = {t: check_prompt_entry(t, text, "--instruction") for t, text in instructions.items()}
    return task


class BadItemError(ValueError):
    """A benchmark row that cannot be used, with the row named and the fix said."""


@dataclass
class Prompt:
    """One model input: an image, the user-turn text, and the gold continuation."""

    item_id: str
    image_index: int  # index of the row in the split: images load lazily, once per batch
    user_text: str
    answer: str | None  # teacher-forced gold text (None where the task has none)
    # the task's answer template around the gold text (``prompts.split_answer_template``):
    # ``prefix`` ends the prompt (after the chat template's generation prompt), ``suffix`` is
    # teacher-forced after the answer; both empty by default
    prefix: str = ""
    suffix: str = ""

    @property
    def teacher_forced(self) -> str | None:
        """The text teacher-forced after the prompt: the gold answer and the template's suffix."""
        return None if self.answer is None else self.answer + self.suffix

    def clean(self, text: str) -> str:
        """A generated text as the task scores it: the answer template's prefix (if the model
        repeats it) and suffix stripped, then :func:`clean_generation`."""
        text = text.strip()
        prefix, suffix = self.prefix.strip(), self.suffix.strip()
        if prefix and text.startswith(prefix):
            text = text[len(prefix) :]
        text = clean_generation(text)
        if suffix and text.endswith(suffix):
            text = text[: -len(suffix)].strip()
        return text


@dataclass
class Item:
    item_id: str
    row: int
    prompts: list[Prompt]
    data: dict[str, Any] = field(default_factory=dict)


_PREFIX = re.compile(r"^\s*(answer|a|assistant|caption)\s*:\s*", re.IGNORECASE)


def clean_generation(text: str) -> str:
    """The reference code's output cleaning: leading "Answer:", "A:", "assistant:",
    "Caption:" removed (case-insensitive), first line kept, surrounding quotes stripped."""
    text = text.strip()
    previous = None
    while previous != text:
        previous = text
        text = _PREFIX.sub("", text)
    text = text.split("\n", 1)[0].strip()
    return text.strip("\"'").strip()


class ImageSource:
    """Decodes the images of a split on demand, with errors that name the bad image."""

    def __init__(self, dataset):
        from datasets import Image as ImageFeature

        raw = dataset.cast_column("image", ImageFeature(decode=False)) if "image" in dataset.column_names else None
        if raw is None:
            raise ValueError("the dataset has no image column; use a benchmark built by hones-nn")
        self._images = raw.select_columns(["image_id", "image"]).with_format(None)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, row: int) -> Image.Image:
        record = self._images[row]
        image_id, raw = record["image_id"], record["image"] or {}
        data, path = raw.get("bytes"), raw.get("path")
        try:
            if data:
                image = Image.open(io.BytesIO(data))
            elif path:
                image = Image.open(path)
            else:
                raise BadItemError(f"image {image_id!r} (row {row}) has no bytes and no path; re-import the dataset")
            image.load()
        except FileNotFoundError:
            raise BadItemError(
                f"image {image_id!r}: file {path} is missing; restore it or re-import the dataset"
            ) from None
        except (UnidentifiedImageError, OSError) as exc:
            raise BadItemError(
                f"image {image_id!r} (row {row}) is corrupt or unreadable ({exc}); rebuild or re-import the "
                "dataset, or pass --skip-bad to skip it and count it"
            ) from None
        return image.convert("RGB")


# The target of a direct-projection method (HONES's u_y, DLA, LLM-Knowledge, the logit
# lens): which gold tokens it reads, with which weights (``Task.target_tokens``).
TARGET_MODES = {
    "first": "the first gold token (the token the model must predict at T)",
    "all": "all tokens of the gold continuation, weight 1 each",
    "idf": "the task's HONES target: captions' IDF-weighted tokens of all references, else the gold text's tokens",
}
_TARGET_ALIASES = {"mean": "all"}  # the earlier name of "all" (DLA, LLM-Knowledge)


def target_option(options: dict, default: str) -> str:
    """The ``target`` option of a method (one of :data:`TARGET_MODES`), ``default`` when unset."""
    mode = options.get("target") or default
    mode = _TARGET_ALIASES.get(mode, mode)
    if mode not in TARGET_MODES:
        raise ValueError(
            f"target={mode!r}; choose one of {', '.join(TARGET_MODES)} (--target): "
            + "; ".join(f"{k}: {v}" for k, v in TARGET_MODES.items())
        )
    return mode


# Greedy generation's token cap: the official code's max_new_tokens (the Engine's default)
GENERATION_CAP = 24


class Task:
    """The contract every task implements."""

    name: ClassVar[str]
    metric_name: ClassVar[str]
    generative: ClassVar[bool] = True  # False: scored by decision logits, no generation
    required_fields: ClassVar[tuple[str, ...]] = ()
    instructions: dict[str, str] | None = None  # the user's {task: instruction}, replacing the built-in ones
    # this task's generation cap on its data (see fit_generation_cap); None: the engine's own
    max_new_tokens: int | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        """A task's ``make_item`` builds its prompts with the user's instructions
        (:attr:`instructions`) in place of the built-in ones (``prompts.instruction`` reads them)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("make_item")
        if own is None:
            return

        @functools.wraps(own)
        def make_item(self, record: dict, row: int) -> Item:
            from hones_nn.tasks.prompts import DEFAULT_ANSWER_TEMPLATE, split_answer_template, user_instructions

            with user_instructions(self.instructions):
                item = own(self, record, row)
            template = self.answer_template()
            if template != DEFAULT_ANSWER_TEMPLATE:
                prefix, suffix = split_answer_template(template)
                for prompt in item.prompts:
                    prompt.prefix, prompt.suffix = prefix, suffix
            return item

        cls.make_item = make_item  # type: ignore[method-assign]

    def instruction_template(self) -> str:
        """The instruction template this task's prompts use (the user's, else the built-in one)."""
        from hones_nn.tasks.prompts import INSTRUCTIONS

        user = (self.instructions or {}).get(self.name)
        return user if user is not None else INSTRUCTIONS[self.family][self.name]

    def answer_template(self) -> str:
        """The answer template of this task's prompts (the user's, else "{answer}")."""
        from hones_nn.tasks.prompts import DEFAULT_ANSWER_TEMPLATE, answer_key

        return (self.instructions or {}).get(answer_key(self.name), DEFAULT_ANSWER_TEMPLATE)

    def __init__(self, family: str = "llava", reference_compat: bool = False):
        """``family``: the model's prompt family ("llava" or "qwen"); ``reference_compat``:
        score and prompt like the official HONES code instead of the paper."""
        self.family = family
        self.reference_compat = reference_compat

    def answer_texts(self, item: Item) -> list[str]:
        """The texts a correct generation for ``item`` reproduces (the generation cap must fit them)."""
        return self.target_texts(item)

    def fit_generation_cap(self, tokenizer, items: list[Item]) -> None:
        """Raise :attr:`max_new_tokens` above the official code's 24 where the items' answers
        are longer (their longest in tokens, plus the end token), so that no correct answer
        is cut short (synthetic-v2's captions run to 37 tokens; v1's answers all fit in 24,
        and so do nearly all of COCO's captions). ``--reference-compat`` keeps 24, as the
        official code does."""
        if not self.generative or self.reference_compat or not items:
            return
        longest = max(
            len(tokenizer(text, add_special_tokens=False)["input_ids"])
            for item in items
            for text in self.answer_texts(item)
        )
        if longest + 1 > GENERATION_CAP:
            self.max_new_tokens = longest + 1

    def items(
        self, dataset, limit: int | None = None, skip_bad: bool = False, images: ImageSource | None = None
    ) -> tuple[list[Item], list[dict]]:
        """The split's items, and the list of skipped rows (only with ``skip_bad``).

        With ``images``, every item's image is decoded once here, so a corrupt image
        fails (or, with ``skip_bad``, is skipped and counted) before any model runs.
        """
        missing = [f for f in self.required_fields if f not in dataset.column_names]
        if missing:
            raise ValueError(
                f"the dataset has no {', '.join(missing)} field(s), which task {self.name!r} needs; "
                "use a benchmark built by `hones-nn data build-synthetic` or an importer"
            )
        if limit is not None and limit < 1:
            raise ValueError(f"--limit must be at least 1 (got {limit}); omit it to use the whole split")
        rows = dataset.with_format(None).select_columns(["image_id", *self.required_fields])
        items, skipped = [], []
        n = len(rows) if limit is None else min(limit, len(rows))
        for i in range(n):
            record = rows[i]
            try:
                item = self.make_item(record, i)
                if images is not None:
                    images[i]
                items.append(item)
            except BadItemError as exc:
                if not skip_bad:
                    raise
                skipped.append({"item_id": record["image_id"], "reason": str(exc)})
        if not items:
            raise ValueError(f"task {self.name!r}: the split has no usable examples ({len(skipped)} skipped)")
        return items, skipped

    def make_item(self, record: dict, row: int) -> Item:
        raise NotImplementedError

    def utility(self, item: Item, outputs: list) -> float:
        """P_t(x, y) of one item (higher is better)."""
        raise NotImplementedError

    def corpus_metric(self, items: list[Item], outputs: list[list]) -> float:
        """The task metric over a set (mean of utilities, except caption's corpus BLEU)."""
        if not items:
            raise ValueError(f"task {self.name!r}: no examples to score")
        return sum(self.utility(i, o) for i, o in zip(items, outputs)) / len(items)

    def target_texts(self, item: Item) -> list[str]:
        """The texts whose tokens define the target direction u_y (HONES 4.2)."""
        raise NotImplementedError

    # ------------------------------------------------------------ prompts the methods read
    # Each method asks the task which prompt, rows and tokens it needs, so that no code
    # outside ``hones_nn.tasks`` branches on a task's name.

    asks_questions: ClassVar[bool] = False  # items carry a question (fuzzy-set modulation needs one)
    corpus_level_metric: ClassVar[bool] = False  # the metric is not a mean of utilities (caption BLEU)

    def attribution_prompt(self, item: Item) -> Prompt:
        """The prompt whose last position T neuron attributions read (retrieval: the
        positive candidate, whose gold decision is " Yes")."""
        return item.prompts[0]

    def utility_prompts(self, item: Item, utility: str) -> list[int]:
        """Indices of the prompts a head sweep runs for ``utility`` (every prompt by default)."""
        return list(range(len(item.prompts)))

    def teacher_forced_utility(self, item: Item, scores: dict[int, float], utility: str) -> float:
        """An item's fast utility from its prompts' teacher-forced scores ({prompt: score}
        for the prompts of :meth:`utility_prompts`): the gold answer's log-prob or
        first-token probability of the one prompt."""
        return scores[0]

    def screen_rows(self, item: Item) -> list[tuple[Prompt, float]]:
        """(prompt, weight) rows whose weighted teacher-forced utility sum is the item's
        AtP screen utility U (one row: the gold answer's log-prob)."""
        return [(item.prompts[0], 1.0)]

    def training_rows(self, item: Item, rng, negatives: int) -> list[tuple[Prompt, bool | None]]:
        """(prompt, decision) rows steering trains on: the teacher-forced gold answer
        (decision None); retrieval overrides with Yes/No rows."""
        if item.prompts[0].answer is None:
            raise ValueError(f"item {item.item_id!r} has no gold answer to train the scales on")
        return [(item.prompts[0], None)]

    def gold_token_ids(self, tokenizer, item: Item) -> list[int]:
        """The gold continuation's tokens at T (the first is the token the model must
        predict there), specials removed; an error naming the item when there is none."""
        from hones_nn.tasks.targets import target_token_ids

        text = self.attribution_prompt(item).answer or ""
        ids = target_token_ids(tokenizer, text)
        if not ids:
            raise ValueError(
                f"item {item.item_id!r}: the target {text!r} has no non-special token in this tokenizer, so the "
                "target logit is undefined; fix or drop the item, or use an activation baseline ('ap', 'ma')"
            )
        return ids

    def direction_context(self, tokenizer, items: list[Item]):
        """What :meth:`direction_tokens` needs from the whole split (caption: IDF weights)."""
        return None

    def direction_tokens(self, tokenizer, item: Item, context=None) -> tuple[list[int], list[float]]:
        """(token ids, weights) whose weighted mean unembedding row is HONES's target
        direction u_y: the tokens of the first target text, weight 1 each."""
        from hones_nn.tasks.targets import target_token_ids

        ids = target_token_ids(tokenizer, self.target_texts(item)[0])
        return ids, [1.0] * len(ids)

    def target_tokens(self, tokenizer, item: Item, mode: str, context=None) -> tuple[list[int], list[float]]:
        """(token ids, weights) of a direct-projection target (:data:`TARGET_MODES`):
        ``first``: the first gold token; ``all``: every gold token, weight 1;
        ``idf``: :meth:`direction_tokens` (``context`` from :meth:`direction_context`)."""
        if mode == "first":
            return self.gold_token_ids(tokenizer, item)[:1], [1.0]
        if mode == "all":
            ids = self.gold_token_ids(tokenizer, item)
            return ids, [1.0] * len(ids)
        if mode == "idf":
            ids, weights = self.direction_tokens(tokenizer, item, context)
            if not ids:
                raise ValueError(
                    f"item {item.item_id!r}: the target {self.target_texts(item)!r} has no non-special token in this "
                    "tokenizer; fix or drop the item, or use --target first"
                )
            return ids, weights
        raise ValueError(f"target={mode!r}; choose one of {', '.join(TARGET_MODES)}")

    def descriptive_text(self, item: Item) -> str | None:
        """A free-text description whose content words are targets (caption: the first
        reference), for methods that attribute content words; None when the gold answer is
        itself short."""
        return None

    def metric_stats(self, item: Item, outputs: list):
        """Sufficient statistics of the corpus metric for one item (summed over items,
        :meth:`metric_from_stats` gives the metric), for tasks with a corpus-level metric."""
        raise ValueError(f"task {self.name!r} has no corpus-level metric statistics")

    def metric_from_stats(self, stats) -> float:
        raise ValueError(f"task {self.name!r} has no corpus-level metric statistics")
