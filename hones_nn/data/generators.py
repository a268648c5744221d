"""The synthetic benchmark's generators, by the name a benchmark's manifest records.

``synthetic-v1`` (:mod:`hones_nn.data.synthetic`, the default and the shipped tiny models'
data) and ``synthetic-v2`` (:mod:`hones_nn.data.synthetic_v2`, the harder one of issue 17).
Every generator module has the same interface: ``GENERATOR_VERSION``, ``GENERATOR_REVISION``
(a change of the images or labels under the same name; cached benchmarks are keyed by it),
``RETRIEVAL_NEGATIVES`` ("hard" or "random"), ``PERTURBED_NEGATIVE_SHARE``, ``IMAGE_ID_PREFIX``,
``IMAGE_SIZE``, ``PATCH_SIZE``, ``World`` (seeded image-disjoint split streams),
``sample_scene``, ``perturb_scene``, ``render``, ``vqa_for``, ``captions_for``,
``scene_record``, ``COLORS``, ``KINDS``, ``NUMBER_WORDS``, ``CAPTION_TEMPLATES``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

DEFAULT_GENERATOR = "synthetic-v1"
GENERATORS = {"synthetic-v1": "hones_nn.data.synthetic", "synthetic-v2": "hones_nn.data.synthetic_v2"}


def generator_module(name: str) -> ModuleType:
    """The module of generator ``name`` (a ValueError naming the known ones otherwise)."""
    try:
        path = GENERATORS[name]
    except KeyError:
        raise ValueError(
            f"--generator {name!r}: no such synthetic benchmark generator; choose one of {', '.join(GENERATORS)}"
        ) from None
    return importlib.import_module(path)
