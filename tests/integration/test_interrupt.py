"""Issue 15: Ctrl-C on a real CLI run says what was kept and that the same command resumes,
exits 130, and the resumed table is bit-identical to an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


def _command(out_dir: Path) -> list[str]:
    exe = Path(sys.executable).with_name("hones-nn")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "hones_nn.cli"]
    return [
        *head,
        "heads",
        "--task",
        "vqa",
        "--limit",
        "24",
        "--shard-size",
        "2",
        "--utility",
        "logprob",
        "--out-dir",
        str(out_dir),
    ]


def _run(out_dir: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(out_dir), capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _columns(path: Path):
    """The table's data, its metadata (which holds the run time) left out."""
    return pq.read_table(path).replace_schema_metadata(None)


@pytest.mark.slow
def test_ctrl_c_keeps_shards_and_the_same_command_resumes(benchmark_dir, tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        _command(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
        env=dict(os.environ),
        # a test session started in the background (nohup ... &) ignores SIGINT, and its
        # children would inherit that: the run under test gets Ctrl-C's default handling
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if list(out.glob(".checkpoints/*/shard-*.safetensors")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before a shard was written: make the run longer"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert f"Finished shards are kept in {out}/.checkpoints" in stderr, stderr[-3000:]
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr and "Aborted!" not in stderr
    kept = list(out.glob(".checkpoints/*/shard-*.safetensors"))
    assert 1 <= len(kept) < 12 and not (out / "vqa.heads.parquet").exists()
    assert not list(out.glob("*.lock"))  # the lock was released

    _run(out)  # the same command resumes
    reference = tmp_path / "uninterrupted"
    _run(reference)
    resumed, whole = _columns(out / "vqa.heads.parquet"), _columns(reference / "vqa.heads.parquet")
    assert resumed.num_rows > 0 and resumed.equals(whole)
