"""--remote-retry-budget and the pre-run server check, through the CLI on the shipped model
(issue 13, part 2): the drift lines are printed as warnings before any request, and the
budget reaches the request's retries (0: a refused connection is final at once)."""

from __future__ import annotations

from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.engine import remote


def test_budget_and_drift_warnings_reach_the_run(monkeypatch):
    seen = {}

    def status(host, timeout=10.0):
        seen["status"] = host
        return {"deployments": {}}

    monkeypatch.setattr(remote, "server_status", status)
    monkeypatch.setattr(remote, "environment_lines", lambda host: ["Python 3.0.1 here, 3.0.2 on the server"])
    result = CliRunner().invoke(
        cli,
        [
            "evaluate", "--task", "vqa", "--limit", "1", "--remote",
            "--ndif-host", "http://127.0.0.1:9", "--remote-retry-budget", "0",
        ],
    )  # fmt: skip
    assert seen["status"] == "http://127.0.0.1:9"
    assert result.exit_code == 3, result.output
    out = result.output
    assert "warning: version drift: Python 3.0.1 here, 3.0.2 on the server" in out
    assert out.index("warning: version drift") < out.index("unreachable after 1 tries")
    assert "retry budget 0 s (--remote-retry-budget)" in out


def test_a_negative_budget_is_refused():
    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", "--remote", "--remote-retry-budget", "-1"])
    assert result.exit_code == 2 and "--remote-retry-budget" in result.output
