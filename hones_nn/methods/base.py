"""The method contract and registry.

Every ranking method is a class with ``attribute(ctx) -> MethodResult`` (Captum's one
contract, many methods) that registers itself once with :func:`register_method`. A method
*declares* what it needs and what it costs, and the layers above read the declaration:

* ``needs_heads`` (a V-SEAM head table, which the runner computes or reuses),
  ``uses_top_heads`` (the K_h option), ``needs_gradients``, ``needs_all_tasks``,
  ``approximation`` (how an approximate method approximates);
* :meth:`Method.passes`: rows (one prompt under one condition) per example and the kind
  of pass that sets the memory peak, as a function of the model's sizes and options;
  ``hones-nn methods`` and the memory estimates (``hones_nn.runner.estimates``) read it.

Most methods are sharded: they say how to :meth:`~Method.plan` a run, compute one
:meth:`~Method.shard` of examples and :meth:`~Method.reduce` the shards; the checkpointed,
resumable loop around them is the engine's (:func:`hones_nn.engine.shards.run_shards`).
:class:`MeanOverExamples` is the common case of an example mean. Adding a method, head
guided or not, is adding one file to this package (it is imported by the package's
``__init__``); the CLI's ``--method`` choices and the cost tables come from :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from hones_nn.engine.shards import mean_of, run_shards

if TYPE_CHECKING:
    from hones_nn.engine.core import Engine
    from hones_nn.models.adapters import ModelSizes
    from hones_nn.models.loading import LoadedModel
    from hones_nn.tasks.base import Item
    from hones_nn.tasks.task_data import TaskData

METHODS: dict[str, type[Method]] = {}

PassKind = Literal["forward", "forward-logprob", "backward", "generation", "none"]
HEAD_UTILITIES = ("metric", "logprob", "prob")


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


def default_top_heads(num_layers: int, num_heads: int) -> int:
    """K_h: the paper's 30 (of 1,024 heads in LLaVA-1.5-7B) for real-size models; a
    quarter of the heads for tiny models, where 30 would be almost every head."""
    total = num_layers * num_heads
    return 30 if total >= 256 else max(1, total // 4)


class Shape(Protocol):
    """What a cost declaration reads of a model: a loaded model's ``ModelSizes`` or a
    config-only ``ModelShape`` (``hones_nn.runner.estimates``)."""

    num_layers: int
    num_heads: int
    d_ff: int


@dataclass(frozen=True)
class Passes:
    """A method's work per example: ``rows`` (one prompt under one condition), what they
    are in words, and the kind of pass that sets the memory peak."""

    rows: float
    text: str
    kind: PassKind


@dataclass
class RunContext:
    """What a method needs to run: the model, the task's discovery items, the options."""

    loaded: LoadedModel
    engine: Engine
    td: TaskData  # the split the method ranks on (discovery)
    batch_size: int = 32
    seed: int = 0
    checkpoint_dir: str | None = None
    progress: bool = True
    options: dict = field(default_factory=dict)

    @property
    def sizes(self) -> ModelSizes:
        return self.loaded.adapter.sizes(self.loaded.model)

    def items(self, ids: list[int]) -> list[Item]:
        return [self.td.items[i] for i in ids]

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
        } | (
            # the user's instructions and answer templates change every prompt: a resume with
            # other ones must not reuse these shards (absent by default: the built-in keys stay)
            {"prompts": dict(sorted(self.td.task.instructions.items()))} if self.td.task.instructions else {}
        )


@dataclass
class MethodResult:
    """Scores [num_layers, d_ff] for neurons (or [num_layers, num_heads] for heads)."""

    scores: np.ndarray
    kind: Literal["neurons", "heads"] = "neurons"
    extra: dict = field(default_factory=dict)  # base/intervened utilities, ranks, ...
    meta: dict = field(default_factory=dict)  # written to the table's metadata


@dataclass
class ShardPlan:
    """What a sharded method decided before its first shard.

    ``config`` identifies the run beyond the run context (it keys the checkpoints, so a
    changed option never resumes from another run's shards); ``state`` is what every
    shard needs (targets, heads ...) and is not part of the key."""

    config: dict = field(default_factory=dict)
    state: Any = None


class Method:
    """The contract every ranking method implements (see the module doc)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[str] = "discovery split of the task"
    cost: ClassVar[str] = "1 forward per example (prompt prefill only)"  # in words, for `hones-nn methods`
    kind: ClassVar[Literal["neurons", "heads"]] = "neurons"
    site: ClassVar[str] = "z (down_proj input)"
    # declarations the runner, the CLI and the estimates read
    needs_heads: ClassVar[bool] = False  # a V-SEAM head table in options["heads_table"]
    uses_top_heads: ClassVar[bool] = False  # options["top_heads"] (K_h) is meaningful
    needs_gradients: ClassVar[bool] = False  # a backward pass (no remote run where nnsight cannot do one)
    # why the method cannot run on a weightless remote client (None: it can). Read by the
    # runner before any work, so `--remote` fails in seconds with the reason
    remote_refusal: ClassVar[str | None] = None
    needs_all_tasks: ClassVar[bool] = False  # reads the discovery data of every task, not only its own
    # "direction": u_y from Task.direction_tokens, "gold": the gold logit (Task.gold_token_ids); the
    # runner checks every item has such tokens before any model runs
    needs_targets: ClassVar[str | None] = None
    approximation: ClassVar[str | None] = None  # how an approximate method approximates
    # the paper default of the shared ``target`` option (hones_nn.tasks.base.TARGET_MODES)
    # for direct-projection methods; None: the method has no target option
    default_target: ClassVar[str | None] = None
    shard_size: ClassVar[int] = 64  # examples per checkpointed shard (options["shard_size"] overrides)

    @classmethod
    def passes(cls, shape: Shape, options: dict) -> Passes:
        """Rows per example and the peak pass kind (default: one prompt prefill)."""
        return Passes(1, "1 forward", "forward")

    # ------------------------------------------------------------ sharded methods
    def plan(self, ctx: RunContext) -> ShardPlan:
        """Validate options and prepare what every shard needs, before any shard runs."""
        return ShardPlan()

    def shard(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> dict[str, np.ndarray]:
        """One shard's partial result: float arrays (sums, counts, per-item values)."""
        raise NotImplementedError(f"method {self.name!r} implements neither shard() nor attribute()")

    def reduce(self, ctx: RunContext, parts: list[dict[str, np.ndarray]], plan: ShardPlan) -> MethodResult:
        """The result from every shard's part, in shard order."""
        raise NotImplementedError(f"method {self.name!r} implements neither reduce() nor attribute()")

    def describe(self, ctx: RunContext) -> str:
        """The progress bar's label."""
        return f"{self.name} ({ctx.td.task.name})"

    def attribute(self, ctx: RunContext) -> MethodResult:
        """Plan, run the shards through the engine's checkpointed loop, reduce."""
        plan = self.plan(ctx)
        return run_shards(
            ctx.checkpoint_dir,
            {**ctx.run_config(), "method": self.name, **plan.config},
            ctx.td.n,
            int(ctx.options.get("shard_size", self.shard_size)),
            compute=lambda ids: self.shard(ctx, ids, plan),
            reduce=lambda parts: self.reduce(ctx, parts, plan),
            desc=self.describe(ctx),
            progress=ctx.progress,
        )


class MeanOverExamples(Method):
    """A score that is the mean over examples of a per-example [L, d_ff] value."""

    def per_example(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> torch.Tensor:
        """[n, L, d_ff] float64 for the given discovery items."""
        raise NotImplementedError

    def result_meta(self, plan: ShardPlan) -> dict:
        """Table metadata of the result (default: the plan's config)."""
        return dict(plan.config)

    def shard(self, ctx: RunContext, item_ids: list[int], plan: ShardPlan) -> dict[str, np.ndarray]:
        values = self.per_example(ctx, item_ids, plan)
        return {"sum": values.sum(0).numpy(), "count": np.array([float(values.shape[0])])}

    def reduce(self, ctx: RunContext, parts: list[dict[str, np.ndarray]], plan: ShardPlan) -> MethodResult:
        return MethodResult(scores=mean_of(parts), meta=self.result_meta(plan))


def head_utility(options: dict) -> str:
    """The validated head ``utility`` option ("metric" by default)."""
    utility = options.get("utility", "metric") or "metric"
    if utility not in HEAD_UTILITIES:
        raise ValueError(f"unknown utility {utility!r}; choose one of {', '.join(HEAD_UTILITIES)}")
    return utility


def top_heads_option(shape: Shape, options: dict) -> int:
    """K_h from the options, else :func:`default_top_heads` of the model."""
    k = options.get("top_heads")
    return int(k) if k else default_top_heads(shape.num_layers, shape.num_heads)
