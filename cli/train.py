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
    from hones_nn.embedded.train import main

    main(list(args))


def register(cli: click.Group) -> None:
    cli.add_command(train_embedded)
