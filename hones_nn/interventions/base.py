"""Edits of module values inside an nnsight trace, applied in execution order.

nnsight 0.8 requires values to be touched in the order the model computes them (layer 0
before layer 1; inside a layer the attention's ``o_proj`` input before the MLP). An
intervention is therefore a list of :class:`SiteEdit` s, each naming its layer and site;
:func:`apply_edits` sorts all edits of all interventions of a forward and touches each
site once, so interventions compose (mask neurons while replacing a head, say).

Sites (of decoder layer l of the language model):

* ``o_proj_input``: the concatenated head outputs, [B, S, H * d_head] (heads, V-SEAM);
* ``act_output``: g = act_fn(gate_proj(x)), [B, S, d_ff] (AP / MA / APE / Pan et al.);
* ``down_proj_input``: z = g * up_proj(x), [B, S, d_ff], "the neuron" of HONES;
* ``layer_output``: the decoder layer's output, the residual stream after it (read by
  the recipes that start a head's rows at its layer, :mod:`hones_nn.engine.skipping`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

SITE_ORDER = {"o_proj_input": 0, "act_output": 1, "down_proj_input": 2, "layer_output": 3}


@dataclass(init=False)
class SiteEdit:
    """``fn(value)`` runs on the proxy of ``site`` in ``layer``: edit it in place, or read
    it and return something to keep (the caller ``.save()`` s what it needs)."""

    layer: int
    site: str
    fn: Callable[[Any], Any]

    # Written out, not generated: an intervention built inside a remote trace runs this on
    # the NDIF server, which rebuilds project code from its source; a dataclass-generated
    # __init__ has no source and ships as bytecode, which breaks across Python versions
    # (a 3.11 client, a 3.12 server).
    def __init__(self, layer: int, site: str, fn: Callable[[Any], Any]) -> None:
        self.layer = layer
        self.site = site
        self.fn = fn
        if self.site not in SITE_ORDER:
            raise ValueError(f"unknown site {self.site!r}; sites are {', '.join(SITE_ORDER)}")


def site_value(model, adapter, layer: int, site: str):
    """The nnsight proxy of ``site`` in decoder layer ``layer``."""
    if site == "o_proj_input":
        return adapter.o_proj(model, layer).input
    if site == "act_output":
        return adapter.act_fn(model, layer).output
    if site == "down_proj_input":
        return adapter.down_proj(model, layer).input
    if site == "layer_output":
        return adapter.layer(model, layer).output
    raise ValueError(f"unknown site {site!r}")


def apply_edits(model, adapter, edits: Iterable[SiteEdit]) -> list:
    """Apply every edit in execution order; returns the edits' return values in input order."""
    edits = list(edits)
    order = sorted(range(len(edits)), key=lambda k: (edits[k].layer, SITE_ORDER[edits[k].site], k))
    results: list = [None] * len(edits)
    value, current = None, None
    for k in order:
        edit = edits[k]
        key = (edit.layer, edit.site)
        if key != current:
            # one site at a time: the previous site's tensor is released as soon as its last
            # edit ran (holding every layer's activation until the trace ends doubled the
            # peak memory of a read-every-layer recipe such as HONES)
            value, current = None, key
            value = site_value(model, adapter, edit.layer, edit.site)
        results[k] = edit.fn(value)
    return results


class Intervention:
    """Something done to every forward of a run (every generation step included).

    ``shares_prefix``: the edits act alike on every row of a batch and at each position
    on that position's value alone (no row-specific part, no draw over a row's length).
    Prompts that share a prefix may then run it once under the intervention and their
    suffixes on its key/value cache (:mod:`hones_nn.engine.prefix`) with the same result.
    """

    shares_prefix: bool = False

    def edits(self, batch_size: int) -> list[SiteEdit]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": type(self).__name__}


class NoIntervention(Intervention):
    shares_prefix = True

    def edits(self, batch_size: int) -> list[SiteEdit]:
        return []


class Compose(Intervention):
    def __init__(self, *parts: Intervention):
        self.parts = [p for p in parts if p is not None]
        self.shares_prefix = all(p.shares_prefix for p in self.parts)

    def edits(self, batch_size: int) -> list[SiteEdit]:
        return [e for p in self.parts for e in p.edits(batch_size)]

    def describe(self) -> dict:
        return {"kind": "Compose", "parts": [p.describe() for p in self.parts]}
