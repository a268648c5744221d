"""The generation cap fits the data's answers: synthetic-v2's captions run past the official
code's 24 tokens, so a caption task on them generates up to its longest reference plus the
end token; v1's tasks and ``--reference-compat`` keep 24. Checked on the tokens the engine
really generates, through evaluation's ``run_task`` and the head sweep (plain and skipping)."""

from __future__ import annotations

import pytest

from hones_nn.data.dataset import load_split
from hones_nn.data.synthetic import build_synthetic_benchmark
from hones_nn.embedded.architectures import BUILDERS
from hones_nn.embedded.tiny_random import in_memory
from hones_nn.engine.core import MAX_NEW_TOKENS, Engine
from hones_nn.engine.sweep import sweep
from hones_nn.tasks.task_data import prepare_task


@pytest.fixture(scope="module")
def v2_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn2-cap")
    return build_synthetic_benchmark(out, seed=3, n_images=120, n_train=20, progress=False, generator="synthetic-v2")


@pytest.fixture(scope="module")
def llava_16k():
    model, processor = BUILDERS["llava-16k"](seed=0)
    return in_memory(model, processor, "llava-16k-untrained")


def _longest_caption(tokenizer, root, split) -> int:
    """Counted here from the split's records, not through the task."""
    return max(
        len(tokenizer(text, add_special_tokens=False)["input_ids"])
        for record in load_split(root, split)
        for text in record["captions"]
    )


def test_v2_captions_raise_the_cap_and_compat_keeps_24(v2_bench, llava_16k):
    tokenizer = llava_16k.processor.tokenizer
    longest = _longest_caption(tokenizer, v2_bench, "test")
    assert longest + 1 > MAX_NEW_TOKENS  # the point of the cap: v2 captions do not fit in 24
    td = prepare_task(llava_16k, "caption", data=v2_bench, split="test")
    assert td.task.max_new_tokens == longest + 1
    compat = prepare_task(llava_16k, "caption", data=v2_bench, split="test", reference_compat=True)
    assert compat.task.max_new_tokens is None
    for task in ("vqa", "ocr"):  # one-word answers fit
        assert prepare_task(llava_16k, task, data=v2_bench, split="test").task.max_new_tokens is None


def test_v1_keeps_the_official_cap(benchmark_dir, embedded):
    for task in ("vqa", "ocr", "caption", "retrieval"):
        assert prepare_task(embedded, task, split="test").task.max_new_tokens is None
    assert Engine(embedded).max_new_tokens == 24


class _Lengths:
    """Wraps ``engine.generate`` and keeps the length of every row it returns."""

    def __init__(self, engine):
        self.lengths: list[int] = []
        self.generate = engine.generate
        engine.generate = self

    def __call__(self, *args, **kwargs):
        out = self.generate(*args, **kwargs)
        ids = out[0] if isinstance(out, tuple) else out
        self.lengths += [len(row) for row in ids]
        return out


@pytest.mark.parametrize("path", ["run_task", "sweep-plain", "sweep-skipping"])
def test_generations_reach_the_raised_cap(v2_bench, llava_16k, path):
    """With the end token forbidden, every row runs to the cap: 24 tokens would be too few."""
    td = prepare_task(llava_16k, "caption", data=v2_bench, split="test", limit=2)
    cap = td.task.max_new_tokens
    assert cap is not None and cap > MAX_NEW_TOKENS
    engine = Engine(llava_16k, min_new_tokens=cap)
    spy = _Lengths(engine)
    if path == "run_task":
        engine.run_task(td.task, td.items, td.images, batch_size=4, progress=False)
    else:
        conditions = [None, (7, 0), (5, 3)]  # heads in the upper layers: skipping starts there
        sweep(engine, td, [0, 1], conditions, batch_size=8, skip_clean_layers=path == "sweep-skipping")
    assert spy.lengths and set(spy.lengths) == {cap}
