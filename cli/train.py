"""`hones-nn train-embedded`: reproduce the shipped tiny model."""

from __future__ import annotations

import click


@click.command("train-embedded", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_embedded(args):
    """Reproduce a shipped model: `hones-nn train-embedded --recipe --out-dir DIR` (tiny-llava),
    `... --recipe --architecture qwen2.5-vl --out-dir DIR` (tiny-qwen2.5-vl).

    Without --recipe, one training run with the options of
    `python -m hones_nn.embedded.train --help`. Resumable: rerun the same command.
    """
    import sys

    from hones_nn.cli.common import debug_enabled
    from hones_nn.embedded.train import main

    try:
        main(list(args))
    except ValueError as exc:  # a bad option (architecture, generator, task weights): one line, no traceback
        if debug_enabled():
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def register(cli: click.Group) -> None:
    cli.add_command(train_embedded)
