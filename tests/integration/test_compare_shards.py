"""`compare --shard i/n` and `hones-nn merge compare`: the comparison of two processes'
shards equals one process's (issue 13: --shard on every command that ranks). Methods
guided by heads take a second round, once the head table is merged."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hones_nn.cli.main import cli

OPTIONS = ["--tasks", "vqa", "--methods", "hones,ap", "--discovery-limit", "4", "--test-limit", "4"]
OPTIONS += ["--shard-size", "2", "--utility", "logprob", "--top-heads", "4", "--json"]


def _run(*args):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_sharded_compare_equals_one_process(tmp_path, benchmark_dir):
    one = _run("compare", *OPTIONS, "--out-dir", str(tmp_path / "one"))
    out = ["--out-dir", str(tmp_path / "sharded")]
    for i in (1, 2):  # round 1: heads and ap
        report = _run("compare", *OPTIONS, *out, "--shard", f"{i}/2")
        assert report["shard"] == [i, 2] and report["waiting"]
    merged = _run("merge", "compare", *OPTIONS, *out)
    assert merged["shard"] is None and any("hones" in w for w in merged["waiting"])  # hones waited for heads
    assert (tmp_path / "sharded" / "vqa.heads.parquet").exists() and (tmp_path / "sharded" / "vqa.ap.parquet").exists()
    for i in (1, 2):  # round 2: hones, guided by the merged heads
        _run("compare", *OPTIONS, *out, "--shard", f"{i}/2")
    rows = _run("merge", "compare", *OPTIONS, *out)
    assert isinstance(rows, list) and len(rows) == len(one) == 2
    for a, b in zip(sorted(one, key=lambda r: r["method"]), sorted(rows, key=lambda r: r["method"])):
        assert a["method"] == b["method"]
        assert a["masked"] == b["masked"] and a["base"] == b["base"]
        assert a["relative_drop"] == b["relative_drop"] or (a["relative_drop"] is None and b["relative_drop"] is None)


def test_merge_with_a_shard_missing_names_it(tmp_path, benchmark_dir):
    out = ["--out-dir", str(tmp_path / "sharded")]
    _run("compare", *OPTIONS, *out, "--shard", "1/2")
    result = CliRunner().invoke(cli, ["merge", "compare", *OPTIONS, *out])
    assert result.exit_code == 2 and "missing" in result.output and "Traceback" not in result.output
