"""Remote execution without a server: nnsight's ``remote="local"`` rehearsal runs every
trace through the same serialization as a real NDIF request (project modules hidden on
deserialize), so these tests cover the remote path of every recipe in the ordinary suite.
The real server is exercised by tests/integration/ndif/ (marked ``ndif``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hones_nn.engine.core import Engine
from hones_nn.engine.encoding import encode_prompts
from hones_nn.engine.remote import (
    BackendMismatchError,
    JobJournal,
    RemoteRunError,
    RemoteSettings,
    redact,
    request_scope,
)
from hones_nn.models.loading import load_model
from hones_nn.tasks.task_data import prepare_task


@pytest.fixture(scope="module")
def rehearsal(embedded):
    return Engine(embedded, remote=RemoteSettings(mode="local"))


def _inputs(embedded, task, n, split="test"):
    td = prepare_task(embedded, task, split=split, limit=n)
    prompts = [item.prompts[0] for item in td.items]
    return encode_prompts(embedded, td.images, prompts).inputs


def test_rehearsal_uses_transformers_model_and_matches_local(embedded, embedded_engine, rehearsal):
    from nnsight.modeling.transformers import TransformersModel

    assert isinstance(rehearsal.envoy, TransformersModel)
    assert rehearsal.backend_name == "remote-local"
    assert rehearsal.remote.model_key.startswith("nnsight.modeling.transformers.TransformersModel:")
    inputs = _inputs(embedded, "vqa", 3)
    before = rehearsal.remote.stats.requests
    assert rehearsal.generate(inputs) == embedded_engine.generate(inputs)
    local = embedded_engine.decision_scores(inputs)
    remote = rehearsal.decision_scores(inputs)
    assert torch.allclose(local, remote, atol=1e-5)
    assert rehearsal.remote.stats.requests == before + 2  # one request per processor-batched trace
    assert rehearsal.remote.stats.bytes_up > 0


def test_rehearsal_hones_rank_matches_local(embedded, embedded_engine, rehearsal, tmp_path):
    from hones_nn.runner.pipeline import Runner

    kwargs = dict(batch_size=64, progress=False, split="discovery", limit=3)
    local = Runner(loaded=embedded, out_dir=tmp_path / "local", _engine=embedded_engine, **kwargs)
    remote = Runner(loaded=embedded, out_dir=tmp_path / "remote", _engine=rehearsal, **kwargs)
    heads = local.heads("vqa", utility="logprob")
    a = local.rank("vqa", "hones", heads=heads)
    requests = rehearsal.remote.stats.requests
    b = remote.rank("vqa", "hones", heads=heads)
    assert np.abs(a.matrix() - b.matrix()).max() <= 1e-5
    assert rehearsal.remote.stats.requests > requests
    assert b.meta["backend"] == "remote-local"
    assert "remote" in b.meta and "mode" in b.meta["remote"]


def test_backend_assertion_fails_loudly(embedded):
    from nnsight import NNsight

    from hones_nn.models.loading import load_model

    loaded = load_model("tiny-llava")  # its own copy: the check hooks the local weights
    remote = Engine(loaded, remote=RemoteSettings(mode="ndif", host="http://127.0.0.1:9"))
    remote.assert_backend()  # nothing ran anywhere yet
    loaded.model(**_inputs(loaded, "vqa", 1))  # a forward of the local weights, not through the server
    with pytest.raises(BackendMismatchError, match="1 forward pass"):
        remote.assert_backend()
    engine = Engine(embedded, remote=RemoteSettings(mode="local"))
    engine.envoy = NNsight(embedded.model)  # a bare NNsight silently runs locally
    engine.decision_scores(_inputs(embedded, "vqa", 1))
    with pytest.raises(BackendMismatchError, match="cannot run remotely"):
        engine.assert_backend()
    Engine(embedded).assert_backend()  # a local engine has nothing to assert


def test_engine_ships_without_local_weights(embedded, rehearsal):
    import pickle  # noqa: TID251 (the test checks what a remote request would serialize)

    state = rehearsal.__getstate__()
    assert set(state) >= {"envoy", "adapter"}
    assert "loaded" not in state and "model" not in state
    from nnsight.modeling.transformers import TransformersModel

    # the remote wrapper pickles as nnsight's own class (the server has no hones_nn)
    reduced = rehearsal.envoy.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    assert reduced[1][0] is TransformersModel and "_hones_session" not in reduced[2]


def test_journal_and_request_labels(tmp_path):
    from hones_nn.engine.remote import _next_label

    journal = JobJournal(tmp_path / "jobs.json")
    with request_scope("shard-00002", journal):
        labels = [_next_label()[0] for _ in range(3)]
    assert labels == ["shard-00002/req-00000", "shard-00002/req-00001", "shard-00002/req-00002"]
    assert _next_label() == (None, None)
    journal.put("shard-00002/req-00000", "job-a")
    journal.put("shard-00003/req-00000", "job-b")
    assert JobJournal(tmp_path / "jobs.json").get("shard-00002/req-00000") == "job-a"  # on disk
    journal.drop_prefix("shard-00002/")
    assert json.loads((tmp_path / "jobs.json").read_text()) == {"shard-00003/req-00000": "job-b"}


def test_sharded_run_clears_finished_shards_jobs(tmp_path):
    from hones_nn.engine.remote import _SCOPE
    from hones_nn.engine.shards import ShardedRun

    run = ShardedRun(tmp_path, {"k": 1}, n_items=4, shard_size=2)
    seen = []

    def compute(shard):
        prefix, journal, _ = _SCOPE.get()
        seen.append(prefix)
        journal.put(f"{prefix}/req-00000", f"job-{prefix}")
        return {"x": np.array([float(len(shard))])}

    run.run(compute, progress=False)
    assert seen == ["shard-00000", "shard-00001"]
    assert json.loads((run.dir / "jobs.json").read_text()) == {}  # finished shards keep no job ids


def test_unreachable_server_retries_then_clear_error(embedded, monkeypatch):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    monkeypatch.setenv("NDIF_API_KEY", "planted-secret-key-123456")
    settings = RemoteSettings(mode="ndif", host=f"http://127.0.0.1:{port}", max_retries=2, backoff_s=0.01)
    engine = Engine(embedded, remote=settings)
    with pytest.raises(RemoteRunError) as info:
        engine.decision_scores(_inputs(embedded, "vqa", 1))
    message = str(info.value)
    assert "unreachable after 3 tries" in message and f"127.0.0.1:{port}" in message
    assert "planted-secret-key-123456" not in message
    assert engine.remote.stats.retries == 2


def test_redact_and_settings_never_hold_the_key(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "planted-secret-key-abcdef")
    assert redact("header planted-secret-key-abcdef leaked") == "header <redacted> leaked"
    settings = RemoteSettings(mode="ndif", host="http://127.0.0.1:1")
    assert "planted-secret-key-abcdef" not in json.dumps(settings.describe())


def test_cli_dry_run_needs_remote():
    from click.testing import CliRunner

    from hones_nn.cli.main import cli

    result = CliRunner().invoke(cli, ["evaluate", "--task", "vqa", "--limit", "1", "--dry-run"])
    assert result.exit_code == 2 and "--dry-run goes with --remote" in result.output


def test_cli_remote_without_server_is_a_clear_error():
    from click.testing import CliRunner

    from hones_nn.cli.main import cli

    result = CliRunner().invoke(
        cli, ["evaluate", "--task", "vqa", "--limit", "1", "--remote", "--ndif-host", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 3 and "no NDIF server answers at http://127.0.0.1:9" in result.output


def test_transient_failures_are_retried_others_are_final():
    import httpx

    from hones_nn.engine.remote import _transient

    request = httpx.Request("POST", "http://127.0.0.1:1/request")

    def status(code):
        return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))

    def wrapped(cause):  # how nnsight raises: RemoteError("Failed to send request") from the httpx error
        try:
            raise RuntimeError("Failed to send request") from cause
        except RuntimeError as exc:
            return exc

    assert _transient(wrapped(httpx.ConnectError("refused")))
    assert _transient(wrapped(status(503)))
    assert not _transient(wrapped(status(401)))
    assert not _transient(ValueError("bad input"))


def test_dry_run_plan_counts_and_measures_without_a_server(embedded, embedded_engine):
    from hones_nn.engine.remote import summary_lines

    settings = RemoteSettings(mode="plan", host="http://127.0.0.1:9")  # nothing listens: nothing is sent
    weightless = load_model("tiny-llava", weights=False)
    engine = Engine(weightless, remote=settings)
    inputs = _inputs(embedded, "vqa", 2)
    # a dry run executes nothing real: stand-ins of the right shapes come back
    generated = engine.generate(inputs)
    assert len(generated) == 2 and all(len(row) <= engine.max_new_tokens for row in generated)
    scores = engine.decision_scores(inputs)
    assert scores.shape == embedded_engine.decision_scores(inputs).shape == (2,)
    assert torch.isfinite(scores).all()
    stats = engine.remote.stats
    assert stats.requests == 2 and stats.bytes_up > 0 and stats.bytes_down > 0
    assert stats.bytes_up_max <= stats.bytes_up
    (line,) = summary_lines(settings)
    assert line.startswith("dry run: 2 request(s) to http://127.0.0.1:9") and "nothing was sent" in line
