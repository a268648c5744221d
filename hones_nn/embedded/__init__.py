"""The embedded models: tiny VLMs trained on the synthetic benchmark, and how to build them.

* :mod:`~hones_nn.embedded.architectures`: the shipped architectures' configs, processors
  and untrained builders (tiny-llava, tiny-qwen2.5-vl);
* :mod:`~hones_nn.embedded.tokenizer`: their word-level tokenizer;
* :mod:`~hones_nn.embedded.tiny_random`: randomly initialised tiny configs of every
  supported architecture (the test suite's models);
* :mod:`~hones_nn.embedded.train`: the resumable training recipe (``hones-nn train-embedded``).

The trained weights are data, in ``weights/NAME/`` beside this file; ``load_model(NAME)``
(:mod:`hones_nn.models.loading`) finds them by path.
"""

from hones_nn.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS"]
