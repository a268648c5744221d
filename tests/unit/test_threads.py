"""``--threads N`` on every command, and the thread count in score-table metadata."""

from __future__ import annotations

import click
import numpy as np
import torch
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.engine.tables import read_table, write_neuron_table


def _leaf_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def test_every_command_takes_threads():
    names = []
    for path, command in _leaf_commands(cli):
        if command.context_settings.get("ignore_unknown_options"):
            continue  # passes its arguments through (train-embedded has its own --threads)
        names.append(" ".join(path))
        assert "--threads" in [o for p in command.params for o in getattr(p, "opts", [])], path
    assert "rank" in names and "heads" in names and "evaluate" in names


def test_threads_sets_torch_and_bad_counts_are_refused():
    before = torch.get_num_threads()
    try:
        # --help exits after the eager --threads callback ran
        result = CliRunner().invoke(cli, ["rank", "--threads", "1", "--help"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
        bad = CliRunner().invoke(cli, ["rank", "--threads", "0", "--task", "vqa"])
        assert bad.exit_code == 2 and "0 is not a thread count" in bad.output
    finally:
        torch.set_num_threads(before)


def test_tables_record_the_thread_count(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        path = write_neuron_table(tmp_path / "t.parquet", np.arange(6.0).reshape(2, 3), {"method": "x", "task": "vqa"})
        assert read_table(path).meta["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)
