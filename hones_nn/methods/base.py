"""The method contract and registry.

Every ranking method is a class with ``attribute(ctx) -> MethodResult`` (Captum's one
contract, many methods) and registers itself once with :func:`register_method`; the CLI
builds ``--method`` choices and ``hones-nn methods`` from :data:`METHODS`. Adding a
method touches one file: its own (plus its import line in ``hones_nn.methods``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice ({METHODS[cls.name].__name__}, {cls.__name__})")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    import hones_nn.methods  # noqa: F401  (registration)

    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None


@dataclass
class RunContext:
    """What a method needs to run: the model, the task's discovery items, the options."""

    loaded: Any  # LoadedModel
    engine: Any  # Engine
    td: Any  # TaskData (discovery split)
    batch_size: int = 32
    seed: int = 0
    checkpoint_dir: str | None = None
    progress: bool = True
    options: dict = field(default_factory=dict)

    @property
    def sizes(self):
        return self.loaded.adapter.sizes(self.loaded.model)

    def run_config(self) -> dict:
        """What identifies a run (for checkpoints and table metadata)."""
        return {
            "model_id": self.loaded.model_id,
            "weights_hash": self.loaded.weights_hash,
            "task": self.td.task.name,
            "data": self.td.data_dir,
            "split": self.td.split,
            "n_examples": self.td.n,
            "seed": self.seed,
            "batch_size": self.batch_size,  # batch composition can move float results: resume with the same
            "reference_compat": self.td.task.reference_compat,
            # objects (a loaded head table) are identified by what the method derives from them
            "options": {k: v for k, v in self.options.items() if isinstance(v, (str, int, float, bool, type(None)))},
        }


@dataclass
class MethodResult:
    """Scores [num_layers, d_ff] for neurons (or [num_layers, num_heads] for heads)."""

    scores: np.ndarray
    kind: str = "neurons"
    extra: dict = field(default_factory=dict)  # base/intervened utilities, timings, ...
    meta: dict = field(default_factory=dict)


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[str] = "discovery split of the task"
    # forward / backward passes per example, as a formula in the model's sizes
    cost: ClassVar[str] = ""
    kind: ClassVar[str] = "neurons"
    site: ClassVar[str] = "z (down_proj input)"

    def attribute(self, ctx: RunContext) -> MethodResult:
        raise NotImplementedError
