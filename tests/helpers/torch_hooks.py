"""Plain-torch helpers the hand-computation tests share (no nnsight, no library code)."""

from __future__ import annotations

import contextlib


def text_layers(model):
    """The decoder layers of a LLaVA / Qwen-VL language model (HF attribute path)."""
    return model.model.language_model.layers


@contextlib.contextmanager
def torch_hooks():
    """Collect hook handles; remove them all on exit, whatever happens."""
    handles = []
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
