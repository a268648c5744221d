"""Methods side by side: rank on discovery, mask the top ratio on test (paper Tables 1, 7, 9).

For each task, each method ranks the neurons on the discovery split through the same
runner (score tables already in the output folder are reused when they were made for the
same model and task), then the top ``top_ratio`` of each table is masked on the test split
with the same masking protocol. The clean base metric is computed once per task.

Rows of ``compare.parquet``: one per (method, task) with ``base``, ``masked``,
``relative_drop``, ``k``, ``seconds_per_instance`` (localization time per discovery
example; HONES includes its V-SEAM head localization), ``n_examples`` (test),
``n_discovery`` and ``target`` (the target tokens of a direct-projection method: one
shared ``target`` for all of them, or each method's paper default; null for the others).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hones_nn.engine.shards import ShardsMissing, ShardsPending
from hones_nn.engine.tables import read_table
from hones_nn.evaluation.evaluate import evaluate, masked_evaluation
from hones_nn.methods.base import get_method
from hones_nn.runner.pipeline import Runner
from hones_nn.tasks.task_data import prepare_task
from hones_nn.utils.io import atomic_write_with

COMPARE_SCHEMA = pa.schema(
    [
        ("method", pa.string()),
        ("task", pa.string()),
        ("metric_name", pa.string()),
        ("base", pa.float64()),
        ("masked", pa.float64()),
        ("relative_drop", pa.float64()),
        ("k", pa.int32()),
        ("seconds_per_instance", pa.float64()),
        ("n_examples", pa.int32()),
        ("n_discovery", pa.int32()),
        ("target", pa.string()),
    ]
)

# APE in the comparison: the paper's appendix D.3 (Bernoulli entropy, ranked descending)
# by default; "mmneuron" is MMNeuron's lowest-entropy variant (the same neurons for every
# task, so its drops say little about one task).
COMPARE_APE_VARIANT = "bernoulli"


def method_target(method: str, target: str | None) -> str | None:
    """The target a direct-projection method uses in a comparison: ``target`` when given
    (the same for every method), else the method's paper default; None for methods
    without a target option."""
    default = get_method(method).default_target
    if default is None:
        return None
    return target or default


def _table_name(task: str, method: str, target: str | None, ape_variant: str) -> str:
    if method == "ape" and ape_variant != "mmneuron":
        return f"{task}.{method}-{ape_variant}.parquet"
    if target is not None and target != get_method(method).default_target:
        return f"{task}.{method}.target-{target}.parquet"
    return f"{task}.{method}.parquet"


def _reusable(path: Path, runner: Runner, task: str, options: dict | None = None) -> bool:
    if not path.exists():
        return False
    meta = read_table(path).meta
    for key, value in (options or {}).items():
        if meta.get(key, (meta.get("options") or {}).get(key)) != value:
            return False
    same_model = (
        meta.get("weights_hash") == runner.loaded.weights_hash or meta.get("model_id") == runner.loaded.model_id
    )
    same_data = meta.get("n_examples") is not None and (runner.limit is None or meta["n_examples"] == runner.limit)
    return same_model and meta.get("task") == task and same_data


class CompareRoundDone(Exception):
    """A ``compare --shard i/n`` round (or a merge with stages left) ended: no comparison
    yet. ``waiting``: the stages another round must finish, one line each."""

    def __init__(self, waiting: list[str], shard: tuple[int, int] | None):
        self.waiting, self.shard = waiting, shard
        super().__init__("; ".join(waiting) or "all tables complete")

    def lines(self) -> list[str]:
        if self.shard is not None:
            i, n = self.shard
            head = f"shard {i}/{n} of compare: done for this round; no comparison written."
            after = (
                "when every --shard i/n has run (copy the processes' OUT_DIR/.checkpoints folders into one), run "
                "`hones-nn merge compare <the same options>`"
            )
        else:
            head = "merge of compare: the tables above are written; stages left for another --shard round:"
            after = "run `hones-nn compare ... --shard i/n` for every i again, then `hones-nn merge compare ...`"
        return [head, *(f"  {w}" for w in self.waiting), after]


def compare(
    runner: Runner,
    methods: list[str],
    tasks: list[str],
    top_ratio: float = 0.01,
    test_limit: int | None = None,
    utility: str = "metric",
    top_heads: int | None = None,
    target: str | None = None,
    ape_variant: str = COMPARE_APE_VARIANT,
    log=print,
) -> list[dict]:
    """Run the comparison; returns the rows (also written to ``runner.out_dir/compare.parquet``).

    ``target``: one target (``hones_nn.tasks.base.TARGET_MODES``) for every direct-projection
    method (HONES, its ablations, DLA, LLM-Knowledge); None keeps each method's paper
    default. Each row says which target it used (``target``; None for methods without one).
    ``ape_variant``: APE's variant (the paper's "bernoulli" by default, or "mmneuron")."""
    if target is not None:
        from hones_nn.tasks.base import target_option

        target = target_option({"target": target}, target)
    guided = {method for method in methods if get_method(method).needs_heads}  # unknown names fail here, first
    for method in methods:  # a method that cannot run remotely stops the comparison before any work
        runner.check_remote(get_method(method))
    sharding = runner.shard is not None or runner.merge_only
    waiting: list[str] = []  # --shard / merge: stages left to another round

    def ranked(label: str, run) -> bool:
        """Run one ranking stage; under --shard / a merge, a stage whose table cannot be
        written in this round is noted instead (nothing else is lost)."""
        try:
            run()
            return True
        except ShardsPending as pending:
            if not sharding:
                raise
            waiting.append(f"{label}: {len(pending.done)} of {pending.n_shards} shard(s) in {pending.folder}")
        except ShardsMissing as missing:
            if not runner.merge_only or missing.done:
                raise
            waiting.append(f"{label}: not started (it needed a table this merge has just written)")
        return False

    # 1. every table, on discovery
    paths: dict[tuple[str, str], Path] = {}
    heads_paths: dict[str, Path] = {}
    for task in tasks:
        heads_path = runner.out_dir / f"{task}.heads.parquet"
        heads_ready = not guided or _reusable(heads_path, runner, task)
        if not heads_ready:
            log(f"[{task}] V-SEAM heads on {runner.split}")
            heads_ready = ranked(
                f"{task} heads", functools.partial(runner.heads, task, utility=utility, out=heads_path)
            )
        heads_paths[task] = heads_path
        for method in methods:
            used_target = method_target(method, target)
            options: dict = {}
            if used_target is not None:
                options["target"] = used_target
            if method == "ape":
                options["variant"] = ape_variant
            path = runner.out_dir / _table_name(task, method, used_target, ape_variant)
            paths[(task, method)] = path
            if _reusable(path, runner, task, options):
                continue
            if method in guided and not heads_ready:
                waiting.append(f"{task} {method}: waits for the merged head table")
                continue
            log(f"[{task}] ranking with {method}" + (f" (target {used_target})" if used_target else ""))
            ranked(
                f"{task} {method}",
                functools.partial(
                    runner.rank,
                    task,
                    method,
                    heads=heads_path if method in guided else None,
                    top_heads=top_heads,
                    utility=utility,
                    out=path,
                    options=options,
                ),
            )
    if runner.shard is not None or waiting:
        raise CompareRoundDone(waiting, runner.shard)

    # 2. every top ratio masked, on test
    rows = []
    engine = runner.engine
    for task in tasks:
        heads_seconds = read_table(heads_paths[task]).meta.get("seconds_per_example") if guided else None
        td = prepare_task(
            runner.loaded,
            task,
            data=runner.data,
            split="test",
            limit=test_limit,
            skip_bad=runner.skip_bad,
            reference_compat=runner.reference_compat,
        )
        base = evaluate(engine, td, batch_size=runner.batch_size, progress=runner.progress, desc=f"{task} base")
        log(f"[{task}] base {base.metric_name} = {base.metric:.4f} on {td.n} test examples")
        for method in methods:
            used_target = method_target(method, target)
            table = read_table(paths[(task, method)])
            seconds = table.meta.get("seconds_per_example") or 0.0
            if method in guided and heads_seconds:
                seconds += heads_seconds
            neurons = table.top_ratio(top_ratio)
            started = time.perf_counter()
            result = masked_evaluation(
                engine, td, neurons, batch_size=runner.batch_size, progress=runner.progress, base=base
            )
            log(
                f"[{task}] {method}: masked {result['masked_metric']:.4f}, drop "
                f"{100 * result['relative_drop']:.2f}% ({time.perf_counter() - started:.1f}s)"
            )
            rows.append(
                {
                    "method": method,
                    "task": task,
                    "metric_name": base.metric_name,
                    "base": base.metric,
                    "masked": result["masked_metric"],
                    "relative_drop": result["relative_drop"],
                    "k": len(neurons),
                    "seconds_per_instance": float(seconds),
                    "n_examples": td.n,
                    "n_discovery": int(table.meta.get("n_examples") or 0),
                    "target": used_target,
                }
            )
    table = pa.Table.from_pylist(rows, schema=COMPARE_SCHEMA)
    atomic_write_with(runner.out_dir / "compare.parquet", lambda p: pq.write_table(table, p))
    return rows


def pivot(rows: list[dict], value: str, methods: list[str], tasks: list[str], scale: float = 1.0) -> list[dict]:
    """One row per method, one column per task (plus the mean), for printing."""
    out = []
    for method in methods:
        row = {"method": method}
        values = []
        for task in tasks:
            match = [r for r in rows if r["method"] == method and r["task"] == task]
            v = match[0][value] * scale if match else float("nan")
            row[task] = v
            if not math.isnan(v):
                values.append(v)
        row["mean"] = sum(values) / len(values) if values else float("nan")
        out.append(row)
    return out
