"""The trace engine: everything a method stands on to run the model through nnsight.

* :mod:`~hones_nn.engine.encoding`: processor-batched, left-padded model inputs;
* :mod:`~hones_nn.engine.core`: :class:`~hones_nn.engine.core.Engine` (greedy generation
  and decision logits under an intervention, a task over items);
* :mod:`~hones_nn.engine.sweep`: many (example, head condition) rows per forward;
* :mod:`~hones_nn.engine.readout`: values at the last prompt position and the readout
  weights they are projected through;
* :mod:`~hones_nn.engine.shards`: the one checkpointed, resumable shard loop;
* :mod:`~hones_nn.engine.tables`: Parquet score tables;
* :mod:`~hones_nn.engine.remote`: the NDIF backend.

Modules are imported on use (``from hones_nn.engine.core import Engine``), so reading a
score table does not load torch's model stack.
"""
