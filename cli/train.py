"""`hones-nn train-embedded`: reproduce the shipped tiny model."""

from __future__ import annotations

import click


@click.command("train-embedded", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_embedded(args):
    """Train the embedded tiny LLaVA (options: see `python -m hones_nn.models.train --help`).

    Resumable: rerunning the same command continues from the last checkpoint.
    """
    from hones_nn.models.train import main

    main(list(args))


def register(cli: click.Group) -> None:
    cli.add_command(train_embedded)
