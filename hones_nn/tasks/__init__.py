"""Tasks: prompts, targets, instance utilities and metrics (see ``base``)."""

from hones_nn.tasks.base import TASKS, BadItemError, ImageSource, Item, Prompt, Task, clean_generation, get_task
from hones_nn.tasks.prompts import TASK_NAMES

__all__ = [
    "TASKS",
    "TASK_NAMES",
    "BadItemError",
    "ImageSource",
    "Item",
    "Prompt",
    "Task",
    "clean_generation",
    "get_task",
]
