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
      hones-nn head-budget --task vqa              the head budget K_h (the curve's elbow)
      hones-nn rank     --task vqa --method hones  head-guided FFN neuron attribution
      hones-nn evaluate --task vqa --mask scores.parquet   masking evaluation
      hones-nn compare  --methods hones,ap,dla --tasks vqa,ocr   methods side by side
    Data and models:
      hones-nn data build-synthetic / info / import-hones ...
      hones-nn evaluate --task ocr                 task metric of a model
      hones-nn remote check --model ID             is the NDIF server usable for --remote

    Without --model, commands use tiny-llava, a small LLaVA shipped in the package and
    trained on the synthetic benchmark, so everything runs offline on a CPU.
    """


def _register() -> None:
    from hones_nn.cli import compare, data, edit, evaluate, fuzzy, overlap, plot, rank, remote, steer, train

    for module in (data, evaluate, rank, compare, train, steer, overlap, plot, fuzzy, edit, remote):
        module.register(cli)


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is None:
        return None
    if value < 1:
        raise click.BadParameter(f"{value} is not a thread count; give 1 or more (torch.set_num_threads)")
    import torch

    torch.set_num_threads(value)
    return value


def _add_threads_option(command: click.Command) -> None:
    """``--threads N`` on every command (torch.set_num_threads before the command runs;
    score tables record the count as ``torch_threads``). Commands that pass their
    arguments through (train-embedded has its own --threads) are left alone."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_threads_option(sub)
        return
    if command.context_settings.get("ignore_unknown_options") or any(p.name == "threads" for p in command.params):
        return
    command.params.append(
        click.Option(
            ["--threads"],
            type=int,
            default=None,
            expose_value=False,
            is_eager=True,
            callback=_set_threads,
            help="CPU threads torch may use (torch.set_num_threads); default: torch's own choice.",
        )
    )


_register()
_add_threads_option(cli)


def main() -> None:
    cli(prog_name="hones-nn")


if __name__ == "__main__":
    main()
