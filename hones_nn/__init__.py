"""hones-nn: which heads and neurons of a vision-language model carry a task.

HONES (head-guided FFN neuron attribution) and its baselines as nnsight trace recipes over
native Hugging Face VLMs, with one runner, Parquet score tables, masking evaluation and
steering. See the README for the command line; in Python::

    from hones_nn.models import load_model
    loaded = load_model("tiny-llava")      # the embedded default
"""

__version__ = "0.1.0"
