"""--device-map without accelerate installed: a clear error naming the extra, before any loading."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from hones_nn.utils import extras


def test_device_map_without_accelerate_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    extras.require_accelerate(None)  # no device map: nothing needed
    with pytest.raises(ValueError, match=r"--device-map auto needs accelerate.*hones-nn\[accelerate\]"):
        extras.require_accelerate("auto")

    from hones_nn.cli.main import cli

    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", "--device-map", "auto", "--limit", "1"])
    assert result.exit_code == 2, result.output
    assert "pip install 'hones-nn[accelerate]'" in result.output
    assert "Traceback" not in result.output
