"""The front door: ``import hones_nn as hn``.

::

    import hones_nn as hn

    model = hn.load_model("tiny-llava")                  # or "llava-hf/llava-1.5-7b-hf", a folder ...
    heads = hn.heads(model, "vqa", limit=64)             # V-SEAM head table (a DataFrame)
    neurons = hn.rank(model, "vqa", "hones", heads=heads)
    result = hn.evaluate(model, "vqa", mask=neurons, top_ratio=0.01, random_control=5)
    table = hn.compare(model, ["hones", "dla"], ["vqa", "ocr"], discovery_limit=32)

Score tables come back as pandas DataFrames (one row per head or neuron, ``rank`` 1 = most
important) with the table's metadata in ``.attrs`` (method, task, model, data, config,
``path`` of the Parquet file written); every function that takes a table also takes such
a DataFrame or a path. The command line (``hones-nn heads``, ``rank``, ``evaluate``,
``compare``) calls these same functions.

Run options shared by the functions that run the model (the :class:`Runner`'s fields):
``out_dir`` (where tables and resumable checkpoints go, default ``hones_runs``), ``data``
(a benchmark folder; default the synthetic benchmark), ``split``, ``limit``,
``batch_size``, ``seed``, ``skip_bad``, ``reference_compat``, ``progress``, ``remote``
(a :class:`hones_nn.engine.remote.RemoteSettings`; its ``concurrency`` shards are in flight
at once), ``shard_size`` (examples per checkpointed shard), and for data-parallel runs
``shard=(i, n)`` (compute only the shards k with k % n == i - 1: :func:`heads` and
:func:`rank` then return a :class:`~hones_nn.runner.pipeline.ShardsWritten` instead of a
table) and ``merge_only=True`` (reduce from the shard files the ``shard`` runs left in
``out_dir``; a missing shard is an error, never computed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hones_nn.engine.shards import ShardsPending
from hones_nn.engine.tables import ScoreTable, read_neuron_table, read_table, top_k_for_ratio
from hones_nn.models.loading import LoadedModel, load_model
from hones_nn.runner.pipeline import Runner, ShardsWritten

if TYPE_CHECKING:
    import pandas as pd

    from hones_nn.engine.core import Engine

__all__ = ["compare", "evaluate", "heads", "load_model", "rank", "read_scores", "runner", "to_frame", "trace_engine"]


def _model(model: LoadedModel | str) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(str(model))
    raise TypeError(f"model must be a LoadedModel (hn.load_model) or a model name/path, not {type(model).__name__}")


def _engine(loaded: LoadedModel, remote=None) -> Engine:
    from hones_nn.engine.core import Engine

    if remote is not None:
        return Engine(loaded, remote=remote)
    # one local nnsight wrapper per loaded model, kept on it: a notebook calls these functions many times
    engine = getattr(loaded, "_local_engine", None)
    if engine is None:
        engine = Engine(loaded)
        loaded._local_engine = engine  # type: ignore[attr-defined]
    return engine


def trace_engine(model: LoadedModel | str, remote=None) -> Engine:
    """The nnsight engine that runs ``model`` (one per loaded model for local runs), for the
    studies below the front door (overlap, steering, the logit lens)."""
    return _engine(_model(model), remote)


def runner(model: LoadedModel | str, **run: Any) -> Runner:
    """A :class:`Runner` over ``model`` with the run options ``run`` (see the module doc)."""
    loaded = _model(model)
    r = Runner(loaded=loaded, **run)
    r._engine = _engine(loaded, r.remote)
    return r


def to_frame(table: ScoreTable) -> pd.DataFrame:
    """A score table as a DataFrame sorted by rank, its metadata (and ``path``) in ``.attrs``."""
    frame = table.table.to_pandas().sort_values("rank", kind="stable").reset_index(drop=True)
    frame.attrs = {**table.meta, "path": str(table.path)}
    return frame


def _table(value, what: str) -> ScoreTable:
    """A ScoreTable from a table-like value (a DataFrame this module returned, a ScoreTable, a path)."""
    if isinstance(value, ScoreTable):
        return value
    if isinstance(value, (str, Path)):
        return read_table(value)
    path = getattr(value, "attrs", {}).get("path")
    if path:
        return read_table(path)
    raise TypeError(
        f"{what} must be a score table: a DataFrame returned by hn.heads / hn.rank, a ScoreTable, "
        f"or the path of a Parquet table, not {type(value).__name__}"
    )


def read_scores(path: str | Path) -> pd.DataFrame:
    """A score table written by ``hones-nn heads`` / ``rank`` (or by these functions)."""
    return to_frame(read_table(path))


def heads(
    model: LoadedModel | str,
    task: str,
    *,
    utility: str = "metric",
    caption_corpus: bool = False,
    screen: str | None = None,
    verify_top: int | None = None,
    out: str | Path | None = None,
    **run: Any,
) -> pd.DataFrame | ShardsWritten:
    """V-SEAM head scores of ``task`` on the discovery split (written to ``out``, default
    ``OUT_DIR/TASK.heads.parquet``); ``screen="atp"`` pre-screens by attribution patching
    and verifies the top ``verify_top`` heads exactly."""
    r = runner(model, **run)
    try:
        table = r.heads(
            task, utility=utility, caption_corpus=caption_corpus, out=out, screen=screen, verify_top=verify_top
        )
    except ShardsPending as pending:  # shard=(i, n): this process's shards are written, no table
        assert r.shard is not None
        return ShardsWritten.of(pending, r.shard)
    return to_frame(table)


def rank(
    model: LoadedModel | str,
    task: str,
    method: str = "hones",
    *,
    heads: Any = None,
    top_heads: int | None = None,
    utility: str = "metric",
    options: dict | None = None,
    out: str | Path | None = None,
    **run: Any,
) -> pd.DataFrame | ShardsWritten:
    """Every FFN neuron of the language model ranked by ``method`` for ``task`` (written to
    ``out``, default ``OUT_DIR/TASK.METHOD.parquet``). Head-guided methods take ``heads``
    (a table from :func:`heads`) or compute it first; ``options`` are the method's own
    (``hones-nn methods``)."""
    head_table = None if heads is None else _table(heads, "heads")
    r = runner(model, **run)
    try:
        table = r.rank(task, method, heads=head_table, top_heads=top_heads, utility=utility, out=out, options=options)
    except ShardsPending as pending:  # shard=(i, n): this process's shards are written, no table
        assert r.shard is not None
        return ShardsWritten.of(pending, r.shard)
    return to_frame(table)


def head_budget(
    model: LoadedModel | str,
    task: str,
    *,
    budgets: list[int] | None = None,
    heads: Any = None,
    utility: str = "metric",
    out: str | Path | None = None,
    **run: Any,
) -> dict:
    """HONES appendix D.2: the relative drop of ``task``'s metric with its top K V-SEAM heads
    replaced together, for each K in ``budgets`` (default: 1, 2, 3, 4, 6, 8, ... up to the
    model's head count or 64), and the curve's elbow, the K_h to pass to :func:`rank`
    (``top_heads``). ``heads``: a table from :func:`heads`, else found in or computed to
    OUT_DIR. Written as JSON to ``out`` (default ``OUT_DIR/TASK.head-budget.json``)."""
    head_table = None if heads is None else _table(heads, "heads")
    return runner(model, **run).head_budget(task, budgets=budgets, heads=head_table, utility=utility, out=out)


def evaluate(
    model: LoadedModel | str,
    task: str,
    *,
    mask: Any = None,
    top_ratio: float = 0.01,
    random_control: int = 0,
    split: str = "test",
    data: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    skip_bad: bool = False,
    reference_compat: bool = False,
    progress: bool = True,
    remote=None,
    instructions: dict[str, str] | None = None,
    show: int = 0,
) -> dict:
    """The task metric on ``split`` (greedy decoding; retrieval by Yes/No logits).

    ``mask``: a neuron score table (DataFrame, ScoreTable or path) whose top ``top_ratio``
    is zeroed at every position, or ``"random"``; then the result also holds the masked
    metric and the relative drop, and ``random_control`` random sets of the same size
    (seeds 0..n-1) are masked beside it. ``instructions`` ({task: template}) replace the
    built-in task instructions; ``show`` > 0 adds ``examples``: the first ``show`` items'
    full prompts, the model's outputs and the gold answers. Returns a JSON-ready dict."""
    from hones_nn.evaluation.evaluate import evaluate as run_evaluation
    from hones_nn.evaluation.evaluate import masked_evaluation
    from hones_nn.tasks.task_data import prepare_task

    loaded = _model(model)
    if show < 0:
        raise ValueError(f"--show must be 0 or more, got {show}")
    td = prepare_task(
        loaded,
        task,
        data=data,
        split=split,
        limit=limit,
        skip_bad=skip_bad,
        reference_compat=reference_compat,
        instructions=instructions,
    )
    engine = _engine(loaded, remote)
    if mask is None and show:
        from hones_nn.evaluation.evaluate import score_outputs

        outputs = engine.run_task(td.task, td.items, td.images, batch_size=batch_size, progress=progress)
        scored = score_outputs(td, outputs)
        result = scored.as_json()
        result["examples"] = _examples(loaded, td, outputs, scored.utilities, show, reference_compat)
    elif mask is None:
        result = run_evaluation(engine, td, batch_size=batch_size, progress=progress).as_json()
    elif isinstance(mask, str) and mask == "random":
        k = top_k_for_ratio(loaded.sizes.num_neurons, top_ratio)
        result = masked_evaluation(
            engine, td, None, random_seeds=random_control or 5, k=k, batch_size=batch_size, progress=progress
        )
    else:
        path = mask if isinstance(mask, (str, Path)) else _table(mask, "mask").path  # a path is read once
        table = read_neuron_table(path, loaded, "--mask")
        neurons = table.top_ratio(top_ratio)
        result = masked_evaluation(
            engine, td, neurons, random_seeds=random_control, batch_size=batch_size, progress=progress
        )
        result.update(mask=str(table.path), method=table.meta.get("method"))
    result.update(model=loaded.model_id, split=split)
    if td.skipped:
        result["skipped_items"] = td.skipped
    return result


def _examples(loaded: LoadedModel, td, outputs: list[list], utilities: list[float], n: int, compat: bool) -> list:
    """The first ``n`` items as the model saw them: the full prompt (chat wrapping included),
    the output (generated text; retrieval: the decision score per candidate), gold, utility."""
    rows = []
    for item, out, utility in list(zip(td.items, outputs, utilities))[:n]:
        prompt = item.prompts[0]
        full = loaded.adapter.prompt(loaded.processor, prompt.user_text, reference_compat=compat, prefix=prompt.prefix)
        output = out[0] if td.task.generative else [round(float(v), 4) for v in out]
        rows.append(
            {
                "item": item.item_id,
                "prompt": full,
                "output": output,
                "gold": td.task.target_texts(item),
                "utility": float(utility),
            }
        )
    return rows


def compare(
    model: LoadedModel | str,
    methods: list[str],
    tasks: list[str],
    *,
    top_ratio: float = 0.01,
    discovery_limit: int | None = None,
    test_limit: int | None = None,
    utility: str = "metric",
    top_heads: int | None = None,
    out_dir: str | Path = "hones_compare",
    log=None,
    target: str | None = None,
    ape_variant: str = "bernoulli",
    **run: Any,
) -> pd.DataFrame:
    """Methods side by side (paper Tables 1, 7, 9): each ranks on discovery (tables already
    in ``out_dir`` are reused), each top ``top_ratio`` is masked on test; one row per
    (method, task), also written to ``out_dir/compare.parquet``. ``target``: one target
    for every direct-projection method (first | all | idf; None: each method's paper
    default), recorded per row; ``ape_variant``: bernoulli (paper appendix) or mmneuron."""
    import pandas as pd

    from hones_nn.evaluation.compare import compare as run_compare

    r = runner(model, out_dir=Path(out_dir), limit=discovery_limit, split="discovery", **run)
    rows = run_compare(
        r,
        list(methods),
        list(tasks),
        top_ratio=top_ratio,
        test_limit=test_limit,
        utility=utility,
        top_heads=top_heads,
        target=target,
        ape_variant=ape_variant,
        log=log or (lambda *_: None),
    )
    frame = pd.DataFrame(rows)
    frame.attrs = {
        "path": str(Path(out_dir) / "compare.parquet"),
        "top_ratio": top_ratio,
        "methods": list(methods),
        "tasks": list(tasks),
        "model_id": r.loaded.model_id,
        "target": target,
        "ape_variant": ape_variant,
    }
    return frame
