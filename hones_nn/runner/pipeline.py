"""The runner's front door: run a registered method on a task and write its table.

Used by the CLI (`hones-nn heads`, `hones-nn rank`) and by notebooks::

    from hones_nn.runner.pipeline import Runner
    runner = Runner.local("tiny-llava")
    heads = runner.heads("vqa")                      # V-SEAM table (Parquet)
    table = runner.rank("vqa", "hones", heads=heads) # neuron table (Parquet)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hones_nn.engine.core import Engine
from hones_nn.engine.shards import ShardOptions, ShardsPending, cleanup_runs, shard_options
from hones_nn.engine.tables import (
    ScoreTable,
    check_table_matches,
    read_table,
    write_head_table,
    write_neuron_table,
)
from hones_nn.methods.base import RunContext, default_top_heads, get_method
from hones_nn.tasks import get_task
from hones_nn.tasks.prompts import DEFAULT_ANSWER_TEMPLATE
from hones_nn.tasks.task_data import TaskData, prepare_task
from hones_nn.utils.io import OutputLock, atomic_write_json, check_output_path

if TYPE_CHECKING:
    from hones_nn.models.loading import LoadedModel

DEFAULT_OUT_DIR = "hones_runs"


@dataclass
class ShardsWritten:
    """What a ``--shard i/n`` run did instead of writing a table: the stage it stopped at,
    the run folder of that stage's shard files, the shards present and missing there."""

    stage: str
    folder: Path
    done: list[int]
    missing: list[int]
    n_shards: int
    shard: tuple[int, int]

    @classmethod
    def of(cls, pending: ShardsPending, shard: tuple[int, int]) -> ShardsWritten:
        return cls(pending.desc, pending.folder, pending.done, pending.missing, pending.n_shards, shard)

    def lines(self) -> list[str]:
        i, n = self.shard
        where = f"{self.folder.parent.name}/{self.folder.name}/"
        head = (
            f"shard {i}/{n} of {self.stage}: done; no table written. {len(self.done)} of {self.n_shards} shard "
            f"file(s) in {self.folder}"
        )
        merge = "`hones-nn merge <the same command and options, without --shard>`"
        if not self.missing:
            return [f"{head}: all present.", f"merge them: {merge}"]
        return [
            f"{head}, {len(self.missing)} left to the other --shard processes.",
            f"when every --shard i/n has run: copy each process's {where} folder into one OUT_DIR (the shard files "
            f"do not clash), then {merge}",
        ]


@dataclass
class Runner:
    loaded: LoadedModel
    out_dir: Path = Path(DEFAULT_OUT_DIR)
    batch_size: int = 32
    seed: int = 0
    progress: bool = True
    data: str | None = None
    split: str = "discovery"
    limit: int | None = None
    skip_bad: bool = False
    reference_compat: bool = False
    remote: object | None = None  # hones_nn.engine.remote.RemoteSettings: run every trace on NDIF
    instructions: dict[str, str] | None = None  # the user's {task: instruction} (--instruction / --prompt-file)
    allow_degenerate: bool = False  # run on even when the base utility is at its floor (results mean nothing)
    recompute_heads: bool = False  # rank: recompute the head table even when a matching one exists
    lock_wait: float = 0.0  # seconds to wait for another process writing the same output
    # data-parallel scale-out: compute only shards k % n == i - 1 of every sharded stage (i, n) and write
    # no table; or compute nothing and reduce from the shard files (merge_only); examples per shard
    shard: tuple[int, int] | None = None
    merge_only: bool = False
    shard_size: int | None = None
    _engine: Engine | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.shard_options()  # bad --shard / --merge-only combinations fail before any work

    def shard_options(self) -> ShardOptions:
        """How this runner's sharded stages run: several shards in flight for a remote engine
        (its settings' concurrency; a local engine stays sequential), --shard, --merge-only."""
        concurrency = int(getattr(self.remote, "concurrency", 1)) if self.remote is not None else 1
        return ShardOptions(concurrency=concurrency, select=self.shard, merge_only=self.merge_only)

    @classmethod
    def local(
        cls,
        model: str = "tiny-llava",
        dtype=None,
        device: str = "cpu",
        device_map=None,
        trust_remote_code: bool = False,
        **kwargs,
    ) -> Runner:
        from hones_nn.models.loading import load_model
        from hones_nn.utils.extras import require_accelerate

        require_accelerate(device_map)
        loaded = load_model(
            model, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code
        )
        return cls(loaded=loaded, **kwargs)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.loaded, remote=self.remote)
        return self._engine

    def context(self, task: str, options: dict) -> RunContext:
        td = prepare_task(
            self.loaded,
            task,
            data=self.data,
            split=self.split,
            limit=self.limit,
            skip_bad=self.skip_bad,
            reference_compat=self.reference_compat,
            instructions=self.instructions,
        )
        return RunContext(
            loaded=self.loaded,
            engine=self.engine,
            td=td,
            batch_size=self.batch_size,
            seed=self.seed,
            checkpoint_dir=str(self.out_dir / ".checkpoints"),
            progress=self.progress,
            options=options if self.shard_size is None else {**options, "shard_size": int(self.shard_size)},
        )

    def _meta(self, ctx: RunContext, method: str, extra: dict, seconds: float) -> dict:
        config = ctx.run_config()
        meta = {
            "method": method,
            "task": ctx.td.task.name,
            "model_id": self.loaded.model_id,
            "model_revision": self.loaded.revision,
            "weights_hash": self.loaded.weights_hash,
            "dataset": ctx.td.data_dir,
            "split": ctx.td.split,
            "n_examples": ctx.td.n,
            "n_skipped": len(ctx.td.skipped),
            "seed": self.seed,
            "utility": ctx.options.get("utility", "metric"),
            "limit": self.limit,
            "reference_compat": self.reference_compat,
            "instruction": ctx.td.task.instruction_template(),
            "instruction_source": "user" if (self.instructions or {}).get(ctx.td.task.name) else "built-in",
            "answer_template": ctx.td.task.answer_template(),
            "seconds": round(seconds, 3),
            "seconds_per_example": round(seconds / max(1, ctx.td.n), 5),
            "config": dict(config),
            "backend": self.engine.backend_name,
        }
        if ctx.td.task.generative:
            meta["max_new_tokens"] = ctx.td.task.max_new_tokens or self.engine.max_new_tokens
        if self.engine.remote is not None:  # mode and host only: never the API key
            meta["remote"] = {**self.engine.remote.settings.describe(), **self.engine.remote.stats.as_dict()}
            meta["remote"]["concurrency"] = int(getattr(self.engine.remote.settings, "concurrency", 1))
        clash = sorted(k for k in set(meta) & set(extra) - {"options"} if meta[k] != extra[k])
        if clash:
            raise ValueError(f"method {method!r} reports metadata {clash} that differ from the runner's; rename them")
        return {**meta, **extra}

    def heads(
        self,
        task: str,
        utility: str = "metric",
        caption_corpus: bool = False,
        out: str | Path | None = None,
        screen: str | None = None,
        verify_top: int | None = None,
    ) -> ScoreTable:
        """V-SEAM head scores for ``task``, written to ``out`` (Parquet).

        ``screen="atp"``: attribution-patching pre-screen of every head, then the top
        ``verify_top`` heads (default 4 x K_h; 0 = screen only) scored exactly; same table
        schema (see ``hones_nn.methods.atp_screen`` for how ranks and scores are filled)."""
        # the reference code scores caption heads by the drop of corpus BLEU
        corpus_metric = get_task(task).corpus_level_metric
        caption_corpus = caption_corpus or (self.reference_compat and corpus_metric and utility == "metric")
        options = {"utility": utility, "caption_corpus": caption_corpus}
        method, default_name = "vseam", f"{task}.heads.parquet"
        if screen not in (None, "none"):
            if screen != "atp":
                raise ValueError(f"unknown head screen {screen!r}; the only screen is 'atp'")
            sizes = self.loaded.adapter.sizes(self.loaded.model)
            if verify_top is None:
                verify_top = 4 * default_top_heads(sizes.num_layers, sizes.num_heads)
            options["verify_top"] = int(verify_top)
            method, default_name = "atp-screen", f"{task}.heads-atp.parquet"
        self.check_remote(get_method(method))
        path = check_output_path(Path(out) if out else self.out_dir / default_name)
        ctx = self.context(task, options)
        shards = self.shard_options()
        with OutputLock(path, wait=self.lock_wait):
            if utility == "metric" and not self.merge_only:  # a merge computes nothing (the shards checked)
                self._check_base_metric(ctx)
            start = time.perf_counter()
            with shard_options(shards):  # --shard i/n: ShardsPending ends the run here (no table)
                result = get_method(method)().attribute(ctx)
            self._shard_run_ends(shards, f"{method} ({task})")
            seconds = time.perf_counter() - start
            self.engine.assert_backend()
            if method == "vseam":  # the screen's base is its own teacher-forced U, whatever the utility
                self._check_head_result(ctx, utility, result.extra["base_utility"])
            meta = self._meta(ctx, method, result.meta, seconds)
            write_head_table(
                path,
                result.scores,
                result.extra["base_utility"],
                result.extra["intervened"],
                meta,
                ranks=result.extra.get("ranks"),
            )
        cleanup_runs(shards)
        return read_table(path)

    @staticmethod
    def _shard_run_ends(shards: ShardOptions, desc: str) -> None:
        """A --shard run writes no table, even when every stage was complete before it started
        (more processes than shards, or the files of every process copied in): it says so."""
        if shards.select is None or not shards.runs:
            return
        folder = shards.runs[-1]
        done = sorted(int(p.name[6:11]) for p in folder.glob("shard-*.safetensors"))
        raise ShardsPending(desc, folder, done, [], len(done))

    def check_remote(self, cls) -> None:
        """A method that cannot run on a weightless remote client stops before any work."""
        remote = self.engine.remote
        if remote is not None and remote.settings.mode != "local" and cls.remote_refusal:
            raise ValueError(f"--remote: the method {cls.name!r} cannot run remotely: {cls.remote_refusal}")

    # ------------------------------------------------------------ results that mean nothing
    PRECHECK_ITEMS = 16  # items whose clean metric is read before a head sweep

    def _degenerate(self, what: str, ctx: RunContext) -> ValueError:
        task = ctx.td.task
        return ValueError(
            f"{what}: no head can lower it, so the table would mean nothing. The prompt probably does not fit "
            f"the model: {task.name} asks {task.instruction_template()!r} (model family {self.loaded.family}). "
            f"See what the model answers with `hones-nn evaluate --task {task.name} --model "
            f"{self.loaded.model_id} --split {ctx.td.split} --show 5`, then give the instruction it was trained "
            "on with --instruction "
            "TEXT or --prompt-file FILE; pass --allow-degenerate to run anyway"
        )

    def _check_base_metric(self, ctx: RunContext) -> None:
        """Before a sweep: the clean task metric on the first items must be above its floor (0)."""
        if self.allow_degenerate:
            return
        td = ctx.td
        n = min(td.n, self.PRECHECK_ITEMS)
        items = td.items[:n]
        outputs = self.engine.run_task(td.task, items, td.images, batch_size=self.batch_size, progress=False)
        if self.engine.dry_run:  # its requests are counted as a real run makes them; its values are stand-ins
            return
        base = td.task.corpus_metric(items, outputs)
        if base <= 1e-9:
            raise self._degenerate(f"the base {td.task.metric_name} on the first {n} items is {base:.4f}", ctx)

    def _check_head_result(self, ctx: RunContext, utility: str, base: float) -> None:
        """After a sweep (its shards are kept): a base at its floor stops here. (An all-zero
        table from a base above the floor is written: few items can leave every head without
        effect; ``rank`` refuses to be guided by it.)"""
        if self.allow_degenerate or self.engine.dry_run:  # a dry run's values are stand-ins
            return
        if utility in ("metric", "prob") and base <= 1e-9:
            raise self._degenerate(f"the base utility ({utility}) over {ctx.td.n} items is {base:.4f}", ctx)

    def rank(
        self,
        task: str,
        method: str,
        heads: ScoreTable | str | Path | None = None,
        top_heads: int | None = None,
        utility: str = "metric",
        out: str | Path | None = None,
        options: dict | None = None,
    ) -> ScoreTable:
        """Neuron scores of ``method`` for ``task``; HONES computes heads first if none are given."""
        cls = get_method(method)
        self.check_remote(cls)
        sizes = self.loaded.adapter.sizes(self.loaded.model)
        opts = dict(options or {})
        opts.setdefault("utility", utility)
        if self.shard_size is not None:
            opts["shard_size"] = int(self.shard_size)
        if cls.uses_top_heads:
            opts["top_heads"] = top_heads or default_top_heads(sizes.num_layers, sizes.num_heads)
        path = check_output_path(Path(out) if out else self.out_dir / f"{task}.{method}.parquet")
        ctx = self.context(task, opts)  # the items, their targets checked before any model runs
        self.check_targets(ctx.td, cls.needs_targets)
        reused = False
        if cls.needs_heads:
            table, reused = self.resolve_heads(task, utility, heads, needed_by=method)
            verified = table.meta.get("verified_heads") or []
            if table.meta.get("screen") and 0 < len(verified) < opts["top_heads"]:
                raise ValueError(
                    f"{table.path} is an AtP-screened table with {len(verified)} exactly scored heads, fewer than "
                    f"K_h = {opts['top_heads']}: HONES would weight the others by screen estimates (other units). "
                    f"Recompute it with --verify-top >= {opts['top_heads']} or pass --top-heads {len(verified)}"
                )
            opts["heads_table"] = table
            ctx.options = opts
        shards = self.shard_options()
        with OutputLock(path, wait=self.lock_wait):
            start = time.perf_counter()
            with shard_options(shards):  # --shard i/n: ShardsPending ends the run here (no table)
                result = cls().attribute(ctx)
            self._shard_run_ends(shards, f"{method} ({task})")
            seconds = time.perf_counter() - start
            self.engine.assert_backend()
            opts_meta = {k: (str(v.path) if isinstance(v, ScoreTable) else v) for k, v in opts.items()}
            extra = {**result.meta, "options": opts_meta}
            if cls.needs_heads:
                extra["heads_reused"] = reused
            meta = self._meta(ctx, method, extra, seconds)
            if result.kind == "heads":
                write_head_table(path, result.scores, result.extra["base_utility"], result.extra["intervened"], meta)
            else:
                write_neuron_table(path, result.scores, meta)
        cleanup_runs(shards)
        return read_table(path)

    def resolve_heads(
        self, task: str, utility: str, heads: ScoreTable | str | Path | None, needed_by: str
    ) -> tuple[ScoreTable, bool]:
        """(the V-SEAM head table ``needed_by`` runs on, whether a matching one was reused):
        ``heads`` when given, else OUT_DIR/TASK.heads.parquet when it matches this run
        (:meth:`matching_heads`), else computed now; checked against the model and refused
        when every head scores 0."""
        reused = False
        if heads is None:
            heads = self.matching_heads(task, utility)
            reused = heads is not None
            if heads is None and (self.shard is not None or self.merge_only):
                raise ValueError(
                    f"{needed_by} needs a head table, and a sharded run (--shard / merge) does not compute one on "
                    f"the way: shard the heads first (`hones-nn heads --task {task} --shard i/n` for every i, "
                    f"then `hones-nn merge heads --task {task}` with the same options), then rerun; or give "
                    "--heads TABLE"
                )
            heads = heads or self.heads(task, utility=utility)
        table = heads if isinstance(heads, ScoreTable) else read_table(heads)
        if table.kind != "heads":
            raise ValueError(f"{table.path} is a {table.kind} table; --heads needs a table from `hones-nn heads`")
        sizes = self.loaded.adapter.sizes(self.loaded.model)
        check_table_matches(
            table,
            (sizes.num_layers, sizes.num_heads),
            model_id=self.loaded.model_id,
            task=task,
            weights_hash=self.loaded.weights_hash,
        )
        if not (self.allow_degenerate or self.engine.dry_run) and not table.score.any():
            base = float(table.table.column("base_utility")[0].as_py())
            why = (
                "the prompt probably does not fit the model; see "
                f"`hones-nn evaluate --task {task} --split {self.split} --show 5` and fix it with "
                "--instruction / --prompt-file"
                if base <= 1e-9
                else "recompute it on more items (a larger --limit) or with --utility logprob"
            )
            raise ValueError(
                f"{table.path}: every head scores 0 (base utility {base:.4f}), so a ranking guided by it "
                f"means nothing: {why} (--recompute-heads), or pass --allow-degenerate"
            )
        return table, reused

    def head_budget(
        self,
        task: str,
        budgets: list[int] | None = None,
        heads: ScoreTable | str | Path | None = None,
        utility: str = "metric",
        out: str | Path | None = None,
    ) -> dict:
        """HONES appendix D.2 for ``task``: the relative drop of the task metric with the top K
        V-SEAM heads replaced together, per budget K, and the curve's elbow
        (:mod:`hones_nn.methods.head_budget`); written as JSON to ``out`` (default
        OUT_DIR/TASK.head-budget.json) and returned. The heads are ranked by ``heads`` or by
        the table :meth:`resolve_heads` finds or computes (on the same split)."""
        from hones_nn.methods.head_budget import budget_curve, check_budget_utility, check_budgets, default_budgets

        if self.shard is not None or self.merge_only:
            raise ValueError("the head budget does not take --shard / --merge-only; run it in one process")
        check_budget_utility(utility)  # before any head table is computed
        sizes = self.loaded.adapter.sizes(self.loaded.model)
        total = sizes.num_layers * sizes.num_heads
        budgets = default_budgets(total) if budgets is None else check_budgets(budgets, total)
        path = check_output_path(Path(out) if out else self.out_dir / f"{task}.head-budget.json")
        table, reused = self.resolve_heads(task, utility, heads, needed_by="the head budget")
        ranked = table.top(len(table.rank))
        ctx = self.context(task, {"utility": utility})
        with OutputLock(path, wait=self.lock_wait):
            if not self.engine.dry_run:
                self._check_base_metric(ctx)
            start = time.perf_counter()
            curve = budget_curve(ctx, ranked, budgets, utility)
            seconds = time.perf_counter() - start
            self.engine.assert_backend()
            self._check_head_result(ctx, utility, curve.base)
            meta = self._meta(ctx, "head-budget", {"heads_table": str(table.path), "heads_reused": reused}, seconds)
            result = {**meta, **curve.as_dict(stand_ins=self.engine.dry_run), "path": str(path)}
            if self.engine.dry_run:
                result["dry_run"] = True
            atomic_write_json(path, result)
        return result

    # ------------------------------------------------------------ checks before work
    def check_targets(self, td: TaskData, needs: str | None) -> None:
        """Every item's target tokens (``needs``: "direction" for u_y, "gold" for the gold
        logit) are non-empty in this tokenizer, before anything runs; with ``skip_bad`` the
        items without are dropped and counted, else a ValueError names the first."""
        if needs is None:
            return
        tokenizer, task = self.loaded.tokenizer, td.task
        context = task.direction_context(tokenizer, td.items) if needs == "direction" else None
        keep = []
        for item in td.items:
            if needs == "direction":
                ids = task.direction_tokens(tokenizer, item, context)[0]
            else:
                from hones_nn.tasks.targets import target_token_ids

                ids = target_token_ids(tokenizer, task.attribution_prompt(item).answer or "")
            if ids:
                keep.append(item)
                continue
            reason = (
                f"item {item.item_id!r}: the target {task.target_texts(item)[0]!r} has no non-special token in the "
                f"tokenizer of {self.loaded.model_id}, so its target direction is undefined"
            )
            if not self.skip_bad:
                raise ValueError(f"{reason}; pass --skip-bad to drop such items (they are counted), or fix the data")
            td.skipped.append({"item_id": item.item_id, "reason": reason})
        if not keep:
            raise ValueError(f"task {task.name!r}: no item has a usable target in this tokenizer")
        td.items[:] = keep

    def matching_heads(self, task: str, utility: str) -> ScoreTable | None:
        """The head table at OUT_DIR/TASK.heads.parquet when it was made with the same model,
        data, split, limit, utility, instructions and reference_compat (None: compute it)."""
        path = self.out_dir / f"{task}.heads.parquet"
        if self.recompute_heads or not path.exists():
            return None
        table = read_table(path)
        meta = table.meta
        want_task = get_task(task, family=self.loaded.family, instructions=self.instructions)
        same_model = (
            self.loaded.weights_hash is not None and meta.get("weights_hash") == self.loaded.weights_hash
        ) or (meta.get("model_id") == self.loaded.model_id and meta.get("weights_hash") == self.loaded.weights_hash)
        from hones_nn.data import resolve_benchmark

        wanted = {
            "method": "vseam",
            "task": task,
            "dataset": str(resolve_benchmark(self.data, default=getattr(self.loaded, "benchmark", None))),
            "split": self.split,
            "limit": self.limit,
            "utility": utility,
            "reference_compat": self.reference_compat,
            "instruction": want_task.instruction_template(),
            "seed": self.seed,
        }
        same_answer = meta.get("answer_template", DEFAULT_ANSWER_TEMPLATE) == want_task.answer_template()
        if same_model and same_answer and all(key in meta and meta[key] == value for key, value in wanted.items()):
            return table
        return None
