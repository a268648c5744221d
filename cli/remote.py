"""`hones-nn remote check`: is an NDIF server usable for a run, before the run."""

from __future__ import annotations

import os
import sys

import click

from hones_nn.cli.common import friendly_errors


@click.group("remote")
def remote_group() -> None:
    """The NDIF server that `--remote` runs on."""


@remote_group.command("check")
@click.option(
    "--ndif-host",
    default=None,
    metavar="URL",
    help="NDIF server URL (default: $NDIF_HOST, else nnsight's configured host).",
)
@click.option(
    "--model",
    "model_name",
    default=None,
    metavar="ID",
    help="Hub id, local path or embedded model name: whether the server hosts it and in which state.",
)
@click.option(
    "--revision",
    default=None,
    help="The model's revision on the hub (default: main, as nnsight reads a deployment without one).",
)
@friendly_errors
def check_cmd(ndif_host: str | None, model_name: str | None, revision: str | None) -> None:
    """Status of the server (read as nnsight reads it), Python and package drift between this
    client and the server, and whether --model is hosted and running.

    Exit 0 when the server is usable (and the model running), 3 otherwise. The API key
    ($NDIF_API_KEY or nnsight's config) is only said to be set or not, never printed."""
    from hones_nn.engine.remote import (
        RemoteRunError,
        api_key,
        environment_lines,
        model_hosted,
        resolve_host,
        server_status,
        service_line,
    )

    host = resolve_host(ndif_host)
    source = "$NDIF_API_KEY" if os.environ.get("NDIF_API_KEY") else "nnsight's config"
    click.echo(f"API key: {'set (' + source + ')' if api_key() else 'not set'}")
    try:
        status = server_status(host)
    except RemoteRunError as exc:
        click.echo(f"server: {exc}")
        click.echo("usable: no")
        sys.exit(3)
    click.echo(service_line(host, status))
    drift = environment_lines(host)
    for line in drift or ["versions: Python and the packages installed on both sides match the server's"]:
        click.echo(f"versions: {line}" if drift else line)
    usable = True
    if model_name is not None:
        repo_id, rev = _model_key_parts(model_name, revision)
        ok, message = model_hosted(host, None, repo_id, revision=rev, status=status)
        click.echo(f"model: {message}")
        usable = ok
    click.echo(f"usable: {'yes' if usable else 'no'}")
    if not usable:
        sys.exit(3)


def _model_key_parts(model_name: str, revision: str | None) -> tuple[str, str | None]:
    """(repo id, revision) as the remote run keys the model: a local folder (or an embedded
    model) by its absolute path and no revision, a hub id by itself at ``revision``."""
    from pathlib import Path

    from hones_nn.models.loading import resolve_model_path

    path, local = resolve_model_path(model_name)
    if local:
        if revision is not None:
            raise ValueError(f"--revision {revision} names a hub revision, but --model {model_name} is a local folder")
        return str(Path(path).resolve()), None
    return path, revision or "main"


def register(cli: click.Group) -> None:
    cli.add_command(remote_group)
