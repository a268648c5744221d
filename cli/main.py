"""`hones-nn`: locate the heads and neurons that carry a task in a vision-language model."""

from __future__ import annotations

import click

from hones_nn import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hones-nn")
@click.option(
    "--debug", is_flag=True, default=False, help="Show a traceback instead of a one-line error (or HONES_NN_DEBUG=1)."
)
def cli(debug: bool) -> None:
    """Which heads and neurons of a vision-language model carry a task, proven by masking.

    \b
    Pipeline (HONES, ACL 2026):
      hones-nn heads    --task vqa                 V-SEAM head localization (mean replacement)
      hones-nn rank     --task vqa --method hones  head-guided FFN neuron attribution
      hones-nn evaluate --task vqa --mask scores.parquet   masking evaluation
      hones-nn compare  --methods hones,ap,dla --tasks vqa,ocr   methods side by side
    Data and models:
      hones-nn data build-synthetic / info / import-hones ...
      hones-nn evaluate --task ocr                 task metric of a model

    Without --model, commands use tiny-llava, a small LLaVA shipped in the package and
    trained on the synthetic benchmark, so everything runs offline on a CPU.
    """


def _register() -> None:
    from hones_nn.cli import compare, data, edit, evaluate, fuzzy, overlap, plot, rank, steer, train

    for module in (data, evaluate, rank, compare, train, steer, overlap, plot, fuzzy, edit):
        module.register(cli)


_register()


def main() -> None:
    cli(prog_name="hones-nn")


if __name__ == "__main__":
    main()
