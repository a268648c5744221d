"""A task's items on one split of a benchmark, ready to run (what every recipe iterates)."""

from __future__ import annotations

from dataclasses import dataclass

from hones_nn.data import resolve_benchmark
from hones_nn.data.dataset import load_split, read_manifest
from hones_nn.tasks.base import ImageSource, Item, Task, get_task


@dataclass
class TaskData:
    """A task's items on one split, ready to run."""

    task: Task
    items: list[Item]
    images: ImageSource
    skipped: list[dict]
    data_dir: str
    split: str

    @property
    def n(self) -> int:
        return len(self.items)


def prepare_task(
    loaded,
    task_name: str,
    data=None,
    split: str = "test",
    limit: int | None = None,
    skip_bad: bool = False,
    reference_compat: bool = False,
    instructions: dict[str, str] | None = None,
) -> TaskData:
    """The items of ``task_name`` on ``split``; ``instructions`` ({task: template}) replace the
    built-in task instructions."""
    root = resolve_benchmark(data, default=getattr(loaded, "benchmark", None))
    _warn_other_benchmark(loaded, root)
    dataset = load_split(root, split)
    task = get_task(task_name, family=loaded.family, reference_compat=reference_compat, instructions=instructions)
    images = ImageSource(dataset)
    items, skipped = task.items(dataset, limit=limit, skip_bad=skip_bad, images=images)
    task.fit_generation_cap(getattr(loaded.processor, "tokenizer", loaded.processor), items)
    return TaskData(task, items, images, skipped, str(root), split)


def _warn_other_benchmark(loaded, root) -> None:
    """Warn when a ``train-embedded`` model meets another synthetic benchmark than the one it
    learned: its images and words differ, so its scores there say little about the model
    (allowed: a shift can be the point of the experiment)."""
    import warnings

    own = getattr(loaded, "benchmark", None)
    generator = read_manifest(root).get("generator")
    if own and generator and generator != own:
        warnings.warn(
            f"{loaded.model_id} was trained on {own}, and --data {root} is {generator}: its images and "
            f"words differ from what the model learned; use --data {own} (the default for this model) "
            "unless the shift is the point",
            stacklevel=3,
        )
