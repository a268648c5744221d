"""Throughput on the shipped tiny-llava: several remote shards in flight (nnsight's
``remote="local"`` rehearsal, traces in worker threads) give the table of a sequential
run bit for bit, also after an interruption; ``--shard i/n`` processes and a merge give
the table of one process bit for bit, and a merge with a shard missing names it."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from hones_nn.engine.core import Engine
from hones_nn.engine.remote import RemoteSettings
from hones_nn.runner.pipeline import Runner

RUN = dict(batch_size=4, progress=False, split="discovery", limit=6, shard_size=2)  # 3 shards


def _rehearsal(embedded, concurrency: int) -> Engine:
    return Engine(embedded, remote=RemoteSettings(mode="local", concurrency=concurrency))


def _runner(embedded, engine, out, **kw) -> Runner:
    return Runner(loaded=embedded, out_dir=out, _engine=engine, remote=engine.remote.settings, **{**RUN, **kw})


def test_concurrent_remote_heads_and_hones_equal_sequential(embedded, tmp_path):
    tables = {}
    for n in (1, 3):
        r = _runner(embedded, _rehearsal(embedded, n), tmp_path / f"c{n}", limit=4)  # 2 shards in flight
        heads = r.heads("vqa", utility="logprob")
        tables[n] = (heads, r.rank("vqa", "hones", heads=heads))
    for a, b in zip(tables[1], tables[3]):
        assert np.array_equal(a.matrix(), b.matrix())  # bit for bit
    assert tables[3][1].meta["remote"]["concurrency"] == 3
    assert tables[1][1].meta["remote"]["concurrency"] == 1


def test_concurrent_remote_run_interrupted_resumes_to_the_same_table(embedded, tmp_path, monkeypatch):
    from hones_nn.methods import vseam

    expected = _runner(embedded, _rehearsal(embedded, 1), tmp_path / "one").heads("vqa", utility="logprob")
    original = vseam.sweep
    calls = []

    def failing(engine, td, ids, *args, **kwargs):
        calls.append(ids[0])
        if ids[0] == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of shard 1 (of 0, 1, 2)
        return original(engine, td, ids, *args, **kwargs)

    monkeypatch.setattr(vseam, "sweep", failing)
    out = tmp_path / "two"
    with pytest.raises(KeyboardInterrupt):
        _runner(embedded, _rehearsal(embedded, 3), out).heads("vqa", utility="logprob")
    monkeypatch.setattr(vseam, "sweep", original)
    assert 2 in calls and len(calls) >= 2  # shard 1 ran beside another one
    kept = sorted(p.name for p in out.glob(".checkpoints/*/shard-*.safetensors"))
    # every shard that finished is kept (a shard not yet started when Ctrl-C came is not run)
    assert kept == [f"shard-{i // 2:05d}.safetensors" for i in sorted(calls) if i != 2]
    resumed = _runner(embedded, _rehearsal(embedded, 3), out).heads("vqa", utility="logprob")
    assert np.array_equal(resumed.matrix(), expected.matrix())


def _cli(*args):
    from hones_nn.cli.main import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_shards_then_merge_equal_one_process(tmp_path):
    from hones_nn.engine.tables import read_table

    common = ["--task", "vqa", "--limit", "8", "--shard-size", "2", "--utility", "logprob", "--batch-size", "4"]
    one = _cli("heads", *common, "--out-dir", str(tmp_path / "one"))
    assert one.exit_code == 0, one.output
    out = str(tmp_path / "split")
    first = _cli("heads", *common, "--out-dir", out, "--shard", "1/2")
    assert first.exit_code == 0, first.output
    assert "shard 1/2" in first.output and "no table written" in first.output and "hones-nn merge" in first.output
    assert not list((tmp_path / "split").glob("*.parquet"))
    missing = _cli("merge", "heads", *common, "--out-dir", out)
    assert missing.exit_code == 2
    assert "2 of 4 shard(s) missing" in missing.output and "(shard 1, 3)" in missing.output
    second = _cli("heads", *common, "--out-dir", out, "--shard", "2/2")
    assert second.exit_code == 0, second.output
    merged = _cli("merge", "heads", *common, "--out-dir", out)
    assert merged.exit_code == 0, merged.output
    a = read_table(tmp_path / "one" / "vqa.heads.parquet")
    b = read_table(tmp_path / "split" / "vqa.heads.parquet")
    assert np.array_equal(a.matrix(), b.matrix())
    for column in ("base_utility", "intervened_utility"):
        assert a.table.column(column).equals(b.table.column(column))
    assert not list((tmp_path / "split").glob(".checkpoints/*/shard-*"))  # removed after the table

    # rank with --shard: needs the head table, then the same round trip
    heads = str(tmp_path / "one" / "vqa.heads.parquet")
    rank = ["rank", "--method", "hones", *common, "--heads", heads]
    ref = _cli(*rank, "--out-dir", str(tmp_path / "one"))
    assert ref.exit_code == 0, ref.output
    out2 = str(tmp_path / "rank")
    for i in (1, 2):
        assert _cli(*rank, "--out-dir", out2, "--shard", f"{i}/2").exit_code == 0
    assert _cli("merge", *rank, "--out-dir", out2).exit_code == 0
    x = read_table(tmp_path / "one" / "vqa.hones.parquet")
    y = read_table(tmp_path / "rank" / "vqa.hones.parquet")
    assert np.array_equal(x.matrix(), y.matrix())


def test_cli_rank_shard_without_heads_says_to_shard_heads_first(tmp_path):
    result = _cli(
        "rank", "--task", "vqa", "--method", "hones", "--limit", "4", "--out-dir", str(tmp_path), "--shard", "1/2"
    )
    assert result.exit_code == 2
    assert "shard the heads first" in result.output and "hones-nn merge heads" in result.output
