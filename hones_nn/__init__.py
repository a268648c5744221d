"""hones-nn: which heads and neurons of a vision-language model carry a task.

HONES (head-guided FFN neuron attribution) and its baselines as nnsight trace recipes over
native Hugging Face VLMs, with one engine, Parquet score tables, masking evaluation and
steering. The command line is ``hones-nn`` (see the README); in Python::

    import hones_nn as hn

    model = hn.load_model("tiny-llava")                  # the embedded default
    heads = hn.heads(model, "vqa", limit=64)             # V-SEAM heads (pandas DataFrame)
    neurons = hn.rank(model, "vqa", "hones", heads=heads)
    hn.evaluate(model, "vqa", mask=neurons, random_control=5)
    hn.compare(model, ["hones", "dla"], ["vqa"], discovery_limit=32)

The functions live in :mod:`hones_nn.runner.api` and are imported on first use, so
``import hones_nn`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hones_nn.utils.version import __version__

__all__ = [
    "__version__",
    "compare",
    "evaluate",
    "head_budget",
    "heads",
    "load_model",
    "rank",
    "read_scores",
    "trace_engine",
]
_FRONT_DOOR = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from hones_nn.runner.api import compare, evaluate, head_budget, heads, load_model, rank, read_scores, trace_engine


def __getattr__(name: str):
    if name in _FRONT_DOOR:
        from hones_nn.runner import api

        return getattr(api, name)
    raise AttributeError(f"module 'hones_nn' has no attribute {name!r}")
