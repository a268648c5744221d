"""Options and helpers shared by the commands."""

from __future__ import annotations

import contextvars
import functools
import json
import sys

import click

from hones_nn.tasks.prompts import TASK_NAMES

_CHAT_TEMPLATE: contextvars.ContextVar = contextvars.ContextVar("hones_cli_chat_template", default=None)


def model_options(fn):
    """--model, --dtype, --device, --device-map, --trust-remote-code, --chat-template (read by
    :func:`load` from the running command, not passed to the command)."""

    @functools.wraps(fn)
    def wrapper(*args, chat_template, **kwargs):
        token = _CHAT_TEMPLATE.set(chat_template)
        try:
            return fn(*args, **kwargs)
        finally:
            _CHAT_TEMPLATE.reset(token)

    options = [
        click.option(
            "--model",
            "model_name",
            default="tiny-llava",
            show_default=True,
            help="Hub id, local path, or an embedded model name (tiny-llava is shipped in the package).",
        ),
        click.option(
            "--dtype",
            default=None,
            type=click.Choice(["float32", "float16", "bfloat16", "auto"]),
            help="Weights dtype (default: float32 on CPU; the checkpoint's own with 'auto').",
        ),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps ..."),
        click.option(
            "--device-map",
            default=None,
            help="Passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs.",
        ),
        click.option(
            "--trust-remote-code",
            is_flag=True,
            default=False,
            help="Allow model code from the hub to run (off by default).",
        ),
        click.option(
            "--chat-template",
            default=None,
            type=click.Path(exists=True, dir_okay=False),
            metavar="FILE",
            help="A Jinja chat template file for a checkpoint saved without one (no chat_template.jinja or "
            "'chat_template' in its tokenizer/processor config), e.g. the base model's chat_template.jinja; it "
            "replaces the checkpoint's own.",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def data_options(fn):
    options = [
        click.option(
            "--data",
            default=None,
            help="Benchmark folder (hones-nn layout). Default: the synthetic benchmark, built on first use.",
        ),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            default=None,
            help="Use only the first N items of the split (N >= 1).",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=32,
            show_default=True,
            help="Prompts per forward pass (>= 1).",
        ),
        click.option(
            "--skip-bad",
            is_flag=True,
            default=False,
            help="Skip unusable items (corrupt image, empty answer) and report how many, instead of failing.",
        ),
        click.option(
            "--reference-compat",
            is_flag=True,
            default=False,
            help="Reproduce the official HONES code's choices instead of the paper's (see the docs).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


_REMOTE: contextvars.ContextVar = contextvars.ContextVar("hones_cli_remote", default=None)


def current_remote():
    """The RemoteSettings of the running command (None: run locally)."""
    return _REMOTE.get()


def remote_options(fn):
    """--remote, --ndif-host, --dry-run, --remote-timeout, --remote-retry-budget.

    The command body reads the settings with :func:`current_remote` and hands them to
    its Engine / Runner. The API key comes from NDIF_API_KEY or nnsight's config and is
    never printed. --dry-run runs every request in-process (serialized exactly as it would
    be sent: nothing is sent), writes tables to a temporary folder, then prints the number
    of requests, the bytes up and down, and whether the server hosts the model. Before a real
    run, the server's status is read as nnsight reads it (a clear error when none answers) and
    Python / package drift between this client and the server is printed as warnings."""

    @functools.wraps(fn)
    def wrapper(*args, remote, ndif_host, dry_run, remote_timeout, remote_retry_budget, remote_concurrency, **kwargs):
        if not remote:
            if dry_run:
                raise ValueError("--dry-run goes with --remote")
            return fn(*args, **kwargs)
        import tempfile

        from hones_nn.engine.remote import RemoteSettings, preflight, summary_lines

        settings = RemoteSettings(
            mode="plan" if dry_run else "ndif",
            host=ndif_host,
            timeout_s=remote_timeout,
            retry_budget_s=remote_retry_budget,
        )
        settings.concurrency = remote_concurrency
        if not dry_run:  # a clear error before any work; version drift as warnings
            for line in preflight(settings):
                click.echo(f"warning: {line}", err=True)
        token = _REMOTE.set(settings)
        tmp = None
        try:
            if dry_run:  # tables and checkpoints of a dry run go to a scratch folder
                tmp = tempfile.TemporaryDirectory(prefix="hones-dry-run-")
                for key in ("out_dir",):
                    if key in kwargs:
                        kwargs[key] = tmp.name
                if kwargs.get("out"):  # a table file or an output folder: same name, in the scratch folder
                    import os

                    kwargs["out"] = os.path.join(tmp.name, os.path.basename(os.path.normpath(str(kwargs["out"]))))
            result = fn(*args, **kwargs)
        finally:
            _REMOTE.reset(token)
            if tmp is not None:
                tmp.cleanup()
        for line in summary_lines(settings):
            click.echo(line, err=True)
        for session in settings.sessions:  # fails loudly if the model ran a forward here, not on the server
            session.assert_no_local_forward()
        if dry_run:
            click.echo(
                "the dry run contacted no server and read no weights; check that the server hosts the model with "
                "`hones-nn remote check --model MODEL`",
                err=True,
            )
        return result

    options = [
        click.option(
            "--remote",
            is_flag=True,
            default=False,
            help="Run every trace on an NDIF server (nnsight remote execution).",
        ),
        click.option(
            "--ndif-host",
            default=None,
            help="NDIF server URL (default: $NDIF_HOST, else nnsight's configured host). The API key comes "
            "from $NDIF_API_KEY or nnsight's config.",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            default=False,
            help="With --remote: contact no server and read no weights: every request is serialized as it would be "
            "sent and run on fake tensors (shapes only, as nnsight's scan); prints how many requests there would be "
            "and the bytes up and down. Tables go to a scratch folder (their values are stand-ins).",
        ),
        click.option(
            "--remote-timeout",
            type=float,
            default=1800.0,
            show_default=True,
            help="Seconds one remote request may take (a timed-out job stays in the checkpoint: rerun to re-attach).",
        ),
        click.option(
            "--remote-retry-budget",
            type=click.FloatRange(min=0),
            default=600.0,
            show_default=True,
            metavar="SECONDS",
            help="How long connection errors and 5xx / 429 answers are retried (jittered exponential backoff, "
            "or the server's Retry-After) before a request fails; 0: no retries.",
        ),
        click.option(
            "--remote-concurrency",
            type=click.IntRange(min=1),
            default=4,
            show_default=True,
            help="With --remote: shards whose requests are in flight at once (1 = one after another). The table is "
            "the same, bit for bit, whatever N.",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def refuses_remote(reason: str):
    """``--remote`` on a command that cannot run on NDIF: refused at once with ``reason``,
    before any other option is checked (instead of click's bare "no such option")."""

    def refuse(ctx, param, value):
        if value:
            raise click.UsageError(f"--remote: `{ctx.command_path}` cannot run on an NDIF server: {reason}", ctx=ctx)
        return value

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, remote, **kwargs):
            return fn(*args, **kwargs)

        option = click.option(
            "--remote", is_flag=True, default=False, is_eager=True, callback=refuse, help=f"Not available: {reason}"
        )
        return option(wrapper)

    return decorate


def prompt_options(fn):
    """--instruction, --answer-template, --prompt-file: the task instructions the model receives
    and what its answers look like; passed to the command as ``instructions`` (a {task: template}
    dict, answer templates under "TASK.answer", or None for the built-in ones)."""

    @functools.wraps(fn)
    def wrapper(*args, instruction, answer_template, prompt_file, **kwargs):
        from hones_nn.tasks.prompts import resolve_instructions

        kwargs["instructions"] = resolve_instructions(kwargs.get("task"), instruction, prompt_file, answer_template)
        return fn(*args, **kwargs)

    options = [
        click.option(
            "--instruction",
            default=None,
            metavar="TEXT",
            help="The user-turn instruction of --task, replacing the built-in one (hones_nn/tasks/prompts.py); "
            "fields: {question} (vqa, required), {candidate} (retrieval, required). The model's chat wrapping "
            "(e.g. 'USER: <image>\\n... ASSISTANT:') is kept. Stored in the score table's metadata. Check what "
            "the model makes of it with `hones-nn evaluate --show 5`.",
        ),
        click.option(
            "--answer-template",
            default=None,
            metavar="TEXT",
            help="What the model's answer to --task looks like around the gold text, with the field {answer}, e.g. "
            "'Answer: {answer}' or '{answer}.' (default '{answer}'). The text before {answer} ends the prompt (after "
            "the chat template's 'ASSISTANT:'), the text after it is teacher-forced with the answer; both are "
            "stripped from generations before scoring. Stored in the score table's metadata (answer_template).",
        ),
        click.option(
            "--prompt-file",
            default=None,
            type=click.Path(exists=True, dir_okay=False),
            help="A YAML or JSON file of instructions per task, e.g. 'vqa: \"Q: {question} A short answer:\"' "
            "or 'vqa: {instruction: ..., answer: \"Answer: {answer}\"}'; --instruction and --answer-template win "
            "for --task.",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


task_option = click.option("--task", required=True, type=click.Choice(TASK_NAMES), help="The task.")


def load(model_name, dtype, device, device_map, trust_remote_code):
    """The command's model: with --remote or --dry-run, its config, processor and a
    meta-device model only (the weights stay on the server; none are read here)."""
    from hones_nn.models.loading import load_model
    from hones_nn.utils.extras import require_accelerate

    require_accelerate(device_map)

    remote = current_remote()
    weights = remote is None or remote.mode == "local"
    return load_model(
        model_name,
        dtype=dtype,
        device=device,
        device_map=device_map,
        trust_remote_code=trust_remote_code,
        weights=weights,
        chat_template=_CHAT_TEMPLATE.get(),
    )


def _no_nan(obj):
    """NaN (an undefined figure, e.g. a relative drop from a base metric of 0) as JSON null."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def emit_json(obj) -> None:
    click.echo(json.dumps(_no_nan(obj), indent=2, sort_keys=True, default=float))


def debug_enabled() -> bool:
    """`hones-nn --debug ...` (or HONES_NN_DEBUG=1): show tracebacks instead of one-line errors."""
    import os

    if os.environ.get("HONES_NN_DEBUG", "") not in ("", "0"):
        return True
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and (ctx.find_root().params or {}).get("debug"))


def _interrupted_message(kwargs: dict) -> str:
    out_dir = kwargs.get("out_dir")
    if out_dir:
        return (
            f"interrupted. Finished shards are kept in {out_dir}/.checkpoints; run the same command again to "
            "resume from them (the result is identical to an uninterrupted run)."
        )
    return "interrupted; nothing was written. Run the same command again to start over."


def friendly_errors(fn):
    """Turn expected user errors into one clear line and exit code 2, not a traceback
    (``hones-nn --debug`` shows the traceback); Ctrl-C says what was kept and how to resume."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            click.echo(_interrupted_message(kwargs), err=True)
            sys.exit(130)
        except (ValueError, FileNotFoundError, KeyError, PermissionError, IsADirectoryError) as exc:
            if debug_enabled():
                raise
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            click.echo(f"error: {_redact(message)}", err=True)
            sys.exit(2)
        except RuntimeError as exc:  # remote failures: the server's message, never a key
            from hones_nn.engine.remote import BackendMismatchError, RemoteRunError

            if not isinstance(exc, (RemoteRunError, BackendMismatchError)):
                raise
            click.echo(f"error: {_redact(str(exc))}", err=True)
            sys.exit(3)

    return wrapper


def _redact(text: str) -> str:
    from hones_nn.engine.remote import redact

    return redact(text)


def print_table(rows: list[dict], columns: list[str], floatfmt: str = "{:.4f}") -> None:
    """A plain aligned text table."""

    def fmt(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))


lock_wait_option = click.option(
    "--lock-wait",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="When another hones-nn process is writing the same output (its lock file OUTPUT.lock exists), "
    "wait up to this long for it; 0: stop at once with a message.",
)


def guards_output(param: str, option: str, file_in_folder: str | None = None):
    """The command's result file checked before any work (an existing directory, a folder that
    cannot be created or written: a clear error in seconds, before any model loads) and an
    ``OutputLock`` held while the command runs, so a second writer of the same output stops
    with a message (or waits ``--lock-wait`` seconds). ``param``: the keyword holding the path
    (``option`` its flag); ``file_in_folder``: the path is a folder and this file in it is the
    result that is checked and locked. No path given: nothing to check. Place it under
    ``remote_options`` so that a dry run checks its scratch folder, not the user's."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, lock_wait, **kwargs):
            from pathlib import Path

            from hones_nn.utils.io import OutputLock, check_output_path

            value = kwargs.get(param)
            if value is None:
                return fn(*args, **kwargs)
            if file_in_folder is not None:
                folder = Path(value)
                if folder.exists() and not folder.is_dir():
                    raise ValueError(f"{option} {folder} is a file; give a folder (it holds {file_in_folder})")
                path = check_output_path(folder / file_in_folder, option)
            else:
                path = check_output_path(Path(value), option)
            with OutputLock(path, wait=lock_wait):
                return fn(*args, **kwargs)

        return lock_wait_option(wrapper)

    return decorate
