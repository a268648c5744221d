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
from hones_nn.engine.tables import (
    ScoreTable,
    check_table_matches,
    read_table,
    write_head_table,
    write_neuron_table,
)
from hones_nn.methods.base import RunContext, default_top_heads, get_method
from hones_nn.tasks import get_task
from hones_nn.tasks.task_data import prepare_task

if TYPE_CHECKING:
    from hones_nn.models.loading import LoadedModel

DEFAULT_OUT_DIR = "hones_runs"


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
    _engine: Engine | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)

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
        )
        return RunContext(
            loaded=self.loaded,
            engine=self.engine,
            td=td,
            batch_size=self.batch_size,
            seed=self.seed,
            checkpoint_dir=str(self.out_dir / ".checkpoints"),
            progress=self.progress,
            options=options,
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
            "seconds": round(seconds, 3),
            "seconds_per_example": round(seconds / max(1, ctx.td.n), 5),
            "config": dict(config),
            "backend": self.engine.backend_name,
        }
        if self.engine.remote is not None:  # mode and host only: never the API key
            meta["remote"] = {**self.engine.remote.settings.describe(), **self.engine.remote.stats.as_dict()}
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
        ctx = self.context(task, options)
        start = time.perf_counter()
        result = get_method(method)().attribute(ctx)
        seconds = time.perf_counter() - start
        self.engine.assert_backend()
        path = Path(out) if out else self.out_dir / default_name
        meta = self._meta(ctx, method, result.meta, seconds)
        write_head_table(
            path,
            result.scores,
            result.extra["base_utility"],
            result.extra["intervened"],
            meta,
            ranks=result.extra.get("ranks"),
        )
        return read_table(path)

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
        sizes = self.loaded.adapter.sizes(self.loaded.model)
        opts = dict(options or {})
        opts.setdefault("utility", utility)
        if cls.uses_top_heads:
            opts["top_heads"] = top_heads or default_top_heads(sizes.num_layers, sizes.num_heads)
        if cls.needs_heads:
            if heads is None:
                heads = self.heads(task, utility=utility)
            table = heads if isinstance(heads, ScoreTable) else read_table(heads)
            if table.kind != "heads":
                raise ValueError(f"{table.path} is a {table.kind} table; --heads needs a table from `hones-nn heads`")
            check_table_matches(
                table,
                (sizes.num_layers, sizes.num_heads),
                model_id=self.loaded.model_id,
                task=task,
                weights_hash=self.loaded.weights_hash,
            )
            verified = table.meta.get("verified_heads") or []
            if table.meta.get("screen") and 0 < len(verified) < opts["top_heads"]:
                raise ValueError(
                    f"{table.path} is an AtP-screened table with {len(verified)} exactly scored heads, fewer than "
                    f"K_h = {opts['top_heads']}: HONES would weight the others by screen estimates (other units). "
                    f"Recompute it with --verify-top >= {opts['top_heads']} or pass --top-heads {len(verified)}"
                )
            opts["heads_table"] = table
        ctx = self.context(task, opts)
        start = time.perf_counter()
        result = cls().attribute(ctx)
        seconds = time.perf_counter() - start
        self.engine.assert_backend()
        path = Path(out) if out else self.out_dir / f"{task}.{method}.parquet"
        opts_meta = {k: (str(v.path) if isinstance(v, ScoreTable) else v) for k, v in opts.items()}
        meta = self._meta(ctx, method, {**result.meta, "options": opts_meta}, seconds)
        if result.kind == "heads":
            write_head_table(path, result.scores, result.extra["base_utility"], result.extra["intervened"], meta)
        else:
            write_neuron_table(path, result.scores, meta)
        return read_table(path)
