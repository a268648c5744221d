"""The code's habits, checked by the test command itself: ruff (lint and format) over the
package, the CLI, tests and benchmarks, and mypy over the contracts (pyproject.toml's
[tool.mypy] files). Skipped with the reason when the tool is not installed (it comes with
the package's ``test`` extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATHS = ["hones_nn", "cli", "tests", "benchmarks"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff_lint_is_clean():
    result = _run(["ruff", "check", "--no-cache", "--output-format", "concise", *PATHS])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff_format_is_clean():
    result = _run(["ruff", "format", "--no-cache", "--check", *PATHS])
    assert result.returncode == 0, "run `ruff format`:\n" + result.stdout + result.stderr


def test_mypy_on_the_contracts():
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    result = _run([sys.executable, "-m", "mypy", "--no-incremental"])
    assert result.returncode == 0, result.stdout + result.stderr
