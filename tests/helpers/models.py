"""Tiny random models built once per test session and shared (the ``tiny_model`` fixture).

A shared model must not be changed: a test that writes its weights or fills parameter
``.grad`` (a plain ``.backward()`` through the model) builds its own with
``build_tiny_random``."""

from __future__ import annotations

_TINY: dict = {}


def tiny_model(architecture: str):
    """The LoadedModel of ``build_tiny_random(architecture)`` (seed 0), built on first use."""
    if architecture not in _TINY:
        from hones_nn.embedded.tiny_random import build_tiny_random

        _TINY[architecture] = build_tiny_random(architecture)
    return _TINY[architecture]
