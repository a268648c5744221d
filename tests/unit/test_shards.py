"""The sharded loop's throughput modes (hones_nn.engine.shards): several shards in flight
(results in shard order whatever order they finish in), --shard i/n and the merge, and a
resume after a failure in a concurrent run. A fake compute stands in for the model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hones_nn.engine import remote
from hones_nn.engine.shards import ShardOptions, ShardsPending, parse_shard, run_shards, shard_options

N_ITEMS, SHARD = 10, 2  # 5 shards


def _value(i: int) -> float:
    return float(np.sin(i + 1) * 1e3 + 1 / (i + 3))  # inexact floats: a sum's order shows in its bits


def _compute_factory(log: list, delays: dict | None = None, fail: set | None = None):
    """compute(ids): sleeps so that later shards finish first; records (shard, its request scope, thread)."""

    def compute(ids: list[int]) -> dict[str, np.ndarray]:
        k = ids[0] // SHARD
        scope = remote._SCOPE.get()
        if delays:
            time.sleep(delays.get(k, 0.0))
        if fail and k in fail:
            raise RuntimeError(f"shard {k} failed")
        log.append((k, scope[0] if scope else None, threading.get_ident()))
        values = np.array([_value(i) for i in ids])
        return {"sum": np.array([values.sum()]), "values": values}

    return compute


def _reduce(parts):
    # order-sensitive: a running float sum and the concatenation of per-item values
    total = 0.0
    for p in parts:
        total += p["sum"][0]
    return total, np.concatenate([p["values"] for p in parts])


def _run(tmp_path, options: ShardOptions, compute, config=None):
    with shard_options(options):
        return run_shards(tmp_path, config or {"run": "test"}, N_ITEMS, SHARD, compute, _reduce, progress=False)


def test_concurrent_shards_finish_out_of_order_but_reduce_in_order(tmp_path):
    sequential = _run(tmp_path / "seq", ShardOptions(concurrency=1), _compute_factory([]))
    log: list = []
    delays = {0: 0.3, 1: 0.2, 2: 0.1, 3: 0.0, 4: 0.0}  # shard 0 finishes last
    checkpoints = tmp_path / "conc"
    seen_files: list[int] = []

    def compute(ids):
        # when a shard starts, the files of the shards that finished before it are already written
        seen_files.append(len(list(checkpoints.glob("*/shard-*.safetensors"))))
        return _compute_factory(log, delays)(ids)

    concurrent = _run(checkpoints, ShardOptions(concurrency=3), compute)
    finished = [k for k, _, _ in log]
    assert finished != sorted(finished)  # they did finish out of order
    assert len({t for _, _, t in log}) > 1  # in several threads
    assert all(scope == f"shard-{k:05d}" for k, scope, _ in log)  # each in its own request scope
    assert concurrent[0] == sequential[0]  # bit for bit
    assert np.array_equal(concurrent[1], sequential[1])
    assert concurrent[1].tolist() == [_value(i) for i in range(N_ITEMS)]
    assert max(seen_files) >= 1  # checkpoints were written as shards finished, not at the end
    assert not list(checkpoints.glob("*/shard-*"))  # removed once reduced


def test_concurrent_run_interrupted_resumes_to_the_same_value(tmp_path):
    expected = _run(tmp_path / "one", ShardOptions(concurrency=1), _compute_factory([]))
    log: list = []
    with pytest.raises(RuntimeError, match="shard 1 failed"):
        _run(tmp_path / "two", ShardOptions(concurrency=3), _compute_factory(log, {1: 0.2}, fail={1}))
    kept = sorted(p.name for p in (tmp_path / "two").glob("*/shard-*.safetensors"))
    assert "shard-00000.safetensors" in kept and "shard-00001.safetensors" not in kept
    log2: list = []
    resumed = _run(tmp_path / "two", ShardOptions(concurrency=3), _compute_factory(log2))
    assert {k for k, _, _ in log2}.isdisjoint({int(n[6:11]) for n in kept})  # finished shards not recomputed
    assert resumed[0] == expected[0] and np.array_equal(resumed[1], expected[1])


def test_shard_i_of_n_then_merge_equals_one_process(tmp_path):
    expected = _run(tmp_path / "one", ShardOptions(), _compute_factory([]))
    out = tmp_path / "split"
    done = {}
    for i in (1, 2):
        log: list = []
        with pytest.raises(ShardsPending) as info:
            _run(out, ShardOptions(select=(i, 2)), _compute_factory(log))
        done[i] = sorted(k for k, _, _ in log)
        assert info.value.missing == ([1, 3] if i == 1 else [])  # the last one too writes no result
    assert done == {1: [0, 2, 4], 2: [1, 3]}
    # every shard present now: a shard run reduces instead of computing, and so does the merge
    merge = ShardOptions(merge_only=True)
    merged = _run(out, merge, _compute_factory([], fail=set(range(5))))
    assert merged[0] == expected[0] and np.array_equal(merged[1], expected[1])
    assert merge.runs and all(p.exists() for p in merge.runs)  # kept until the runner writes its table


def test_merge_with_missing_shards_names_them_and_computes_nothing(tmp_path):
    with pytest.raises(ShardsPending):
        _run(tmp_path, ShardOptions(select=(1, 3)), _compute_factory([]))  # shards 0 and 3 only
    log: list = []
    with pytest.raises(ValueError, match=r"3 of 5 shard\(s\) missing .*shard 1-2, 4\)") as info:
        _run(tmp_path, ShardOptions(merge_only=True), _compute_factory(log))
    assert "--shard i/n" in str(info.value)
    assert log == []


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4)
    assert parse_shard(None) is None
    assert parse_shard("auto", {"RANK": "3", "WORLD_SIZE": "8"}) == (4, 8)
    assert parse_shard("auto", {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}) == (1, 2)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="RANK and WORLD_SIZE"):
        parse_shard("auto", {})
    with pytest.raises(ValueError, match="--shard computes some shards and --merge-only none"):
        ShardOptions(select=(1, 2), merge_only=True)
