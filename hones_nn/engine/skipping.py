"""Start a head's rows at its layer: the plan shared by every head-condition recipe.

A head intervention in decoder layer l changes nothing below l, so the rows that replace
a head in layer l need only layers l and up, given the clean run's output of layer l - 1
(and, for a generation, the clean prefill's keys/values below l). The recipes (V-SEAM's
teacher-forced and generated utilities, HONES's contributions) all run the same plan:

* prompts ("units") go in groups; a group is encoded once (one padded width) and run
  clean, recording the outputs of the layers just below the heads' layers;
* each layer's heads then run as rows of that encoding (``expand_encoding``), a batch
  holding one layer's heads, the layers below skipped (nnsight's ``Envoy.skip``) with the
  clean output in their place.

Results equal the plain path (each recipe has a test). The plan pays a clean run per group
and a batch per layer, so it is used from :data:`SKIP_MIN_LAYERS` decoder layers up.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from hones_nn.interventions.heads import first_layer

# With fewer layers the layers skipped (at most half on average) do not pay for the extra
# clean run and per-layer batches (measured: 2-layer models ran 0.3-0.6x as fast, the
# 4-layer embedded model 1.2-1.4x faster; a 32-layer 7B skips about half its compute).
SKIP_MIN_LAYERS = 4


def skips_by_default(engine) -> bool:
    """Whether the plan pays on this engine's model (local runs, :data:`SKIP_MIN_LAYERS`)."""
    return engine.remote is None and engine.adapter.sizes(engine.model).num_layers >= SKIP_MIN_LAYERS


def heads_by_layer(conditions: Sequence) -> dict[int, list[int]]:
    """{layer: indices of the conditions whose lowest replaced head is in it}, layers
    ascending (a head set starts at its lowest layer)."""
    by_layer: dict[int, list[int]] = {}
    for c, condition in enumerate(conditions):
        if condition is not None:
            by_layer.setdefault(first_layer(condition), []).append(c)
    return dict(sorted(by_layer.items()))


def recorded_layers(conditions: Sequence) -> tuple[int, ...]:
    """The layers whose clean output a head row starts from (l - 1 for each head layer l > 0)."""
    return tuple(sorted({layer - 1 for layer in heads_by_layer(conditions) if layer > 0}))


def layer_rows(value, index: Sequence[int]):
    """Rows ``index`` of a decoder layer's output (a tensor, or a tuple led by one)."""
    if torch.is_tensor(value):
        return value.index_select(0, torch.as_tensor(list(index), device=value.device))
    return (layer_rows(value[0], index), *value[1:])


@dataclass
class HeadChunk:
    """One batch of a group: rows ``index`` of the group's encoding, each under condition
    ``conditions[k]``, all heads in ``layer`` (the layer the rows start at)."""

    layer: int
    index: list[int]
    conditions: list[int]


def skip_plan(n_units: int, conditions: Sequence, batch_size: int) -> Iterator[tuple[list[int], list[HeadChunk]]]:
    """(the group's unit indices, its head batches) for groups of units in order.

    A group holds as many units as one layer's heads fit in a batch for (at least one)."""
    by_layer = heads_by_layer(conditions)
    widest = max((len(v) for v in by_layer.values()), default=1)
    per_group = max(1, batch_size // widest)
    for g0 in range(0, n_units, per_group):
        group = list(range(g0, min(n_units, g0 + per_group)))
        chunks = []
        for layer, conds in by_layer.items():
            pairs = [(k, c) for k in range(len(group)) for c in conds]
            for start in range(0, len(pairs), batch_size):
                part = pairs[start : start + batch_size]
                chunks.append(HeadChunk(layer, [k for k, _ in part], [c for _, c in part]))
        yield group, chunks
