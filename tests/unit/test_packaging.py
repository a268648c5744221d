"""Packaging and documentation stay true: package list, README commands, CI script."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = (
        {"hones_nn"}
        | {
            "hones_nn." + p.parent.relative_to(ROOT / "hones_nn").as_posix().replace("/", ".")
            for p in (ROOT / "hones_nn").glob("*/__init__.py")
        }
        | {"hones_nn.cli"}
    )
    assert found == listed, f"pyproject packages differ from the folders: {found ^ listed}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    assert test_command.strip() in (ROOT / ".ci" / "run").read_text()


def test_readme_quick_start_uses_real_commands():
    from click.testing import CliRunner

    from hones_nn.cli.main import cli

    readme = (ROOT / "README.md").read_text()
    for command in set(re.findall(r"hones-nn ([a-z-]+)", readme)):
        if command in ("data",):
            continue
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0, f"`hones-nn {command}` in the README does not exist"


def test_cli_is_not_a_top_level_package():
    import importlib.util

    assert importlib.util.find_spec("hones_nn.cli") is not None
    spec = importlib.util.find_spec("cli")
    assert spec is None or "site-packages" not in str(spec.origin)
