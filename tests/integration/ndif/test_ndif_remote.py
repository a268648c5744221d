"""`--remote` against a real NDIF server on 127.0.0.1 (the local stack of start.sh).

End to end: `hones-nn rank --method hones --remote` and `hones-nn evaluate --remote` on
the embedded model equal the local runs (tolerance 1e-5). Faults: a request raising on the
server, a client timeout (then re-attach), the server stopped mid-run (then resume), a
model the server does not have. Security: the server checks API keys (start.sh's stack runs
with auth on); the valid key appears in no output and no file the run wrote; a missing, a
malformed and an unknown key each fail at once with one line that says how to set the key,
without echoing it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ndif


def hones(*args, env=None, unset=(), timeout=900):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for name in unset:
        environment.pop(name, None)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "hones_nn.cli", *args], capture_output=True, text=True, env=environment, timeout=timeout
    )
    out.seconds = time.perf_counter() - started
    return out


# A client that cannot read weights: this sitecustomize makes every open of a weight file
# fail in the client process (the server process, elsewhere, reads them as usual), so a
# remote command that passes under it holds no weights.
_NO_WEIGHTS = """
import builtins, io, os
_open = builtins.open
def _weight_file(file):
    name = os.path.basename(str(file))
    return name.startswith(("model", "pytorch_model")) and name.endswith((".safetensors", ".bin", ".pt", ".pth"))
def _guarded(file, *args, **kwargs):
    if _weight_file(file):
        raise PermissionError("weightless client: opening " + str(file) + " is forbidden")
    return _open(file, *args, **kwargs)
builtins.open = _guarded
io.open = _guarded
try:
    import safetensors
    _safe_open = safetensors.safe_open
    def _checked(file, *args, **kwargs):
        if _weight_file(file):
            raise PermissionError("weightless client: reading " + str(file) + " is forbidden")
        return _safe_open(file, *args, **kwargs)
    safetensors.safe_open = _checked
except ImportError:
    pass
"""


@pytest.fixture(scope="module")
def no_weights_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("no-weights-site")
    (folder / "sitecustomize.py").write_text(_NO_WEIGHTS)
    return {"PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)}


def test_the_guard_stops_a_client_that_reads_weights(no_weights_env, tmp_path):
    """The guard is real: a local (weight-reading) run under it fails."""
    res = hones("evaluate", "--task", "vqa", "--limit", "1", env=no_weights_env)
    assert res.returncode != 0 and "weightless client" in res.stderr


def max_diff(a: Path, b: Path) -> float:
    from hones_nn.engine.tables import read_table

    return float(np.abs(read_table(a).matrix() - read_table(b).matrix()).max())


def summary(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(("remote (", "dry run:", "server check"))]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def local_rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    # logprob heads: on 4 items the metric utility scores every head 0, which rank refuses (issue 15)
    # and which would leave HONES no head pass to run remotely (issue 14)
    res = hones(
        "rank",
        "--task",
        "vqa",
        "--method",
        "hones",
        "--limit",
        "4",
        "--utility",
        "logprob",
        "--out-dir",
        str(out),
        "--json",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_rank_hones_remote_equals_local_and_leaks_no_key(
    ndif_host, ndif_api_key, local_rank, no_weights_env, tmp_path, capsys
):
    """The client of this run cannot open a weight file (``no_weights_env``): it reads the
    config and the processor only; the server reads the weights. It sends the stack's valid
    key, which the run must not write anywhere."""
    key = ndif_api_key
    out = tmp_path / "remote"
    res = hones(
        "rank",
        "--task",
        "vqa",
        "--method",
        "hones",
        "--limit",
        "4",
        "--utility",
        "logprob",
        "--out-dir",
        str(out),
        "--remote",
        "--ndif-host",
        ndif_host,
        env={"NDIF_API_KEY": key, **no_weights_env},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    heads = max_diff(local_rank / "vqa.heads.parquet", out / "vqa.heads.parquet")
    neurons = max_diff(local_rank / "vqa.hones.parquet", out / "vqa.hones.parquet")
    with capsys.disabled():
        print(
            f"\n[ndif] rank --method hones --remote --limit 4: {res.seconds:.1f}s; {summary(res.stderr)}; "
            f"max |remote - local|: heads {heads:.3g}, neurons {neurons:.3g}"
        )
    assert heads <= 1e-5 and neurons <= 1e-5
    from hones_nn.engine.tables import read_table

    assert read_table(out / "vqa.hones.parquet").meta["backend"] == "ndif"
    # the key: in no output, no file the run wrote (tables, metadata, checkpoints)
    assert key not in res.stdout and key not in res.stderr
    files = [path for path in out.rglob("*") if path.is_file()]
    assert files
    for path in files:
        assert key.encode() not in path.read_bytes(), path


def test_evaluate_remote_equals_local(ndif_host, ndif_api_key, local_rank, no_weights_env, capsys):
    args = ["evaluate", "--task", "vqa", "--limit", "12", "--mask", str(local_rank / "vqa.hones.parquet"), "--json"]
    local = hones(*args)
    remote = hones(*args, "--remote", "--ndif-host", ndif_host, env={"NDIF_API_KEY": ndif_api_key, **no_weights_env})
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr[-3000:]
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    with capsys.disabled():
        print(
            f"\n[ndif] evaluate --remote --limit 12 --mask: {remote.seconds:.1f}s (local {local.seconds:.1f}s); "
            f"{summary(remote.stderr)}; base {b['base_metric']} masked {b['masked_metric']}"
        )
    for key in ("base_metric", "masked_metric", "relative_drop", "n", "k"):
        assert abs(a[key] - b[key]) <= 1e-5, key
    assert ndif_api_key not in remote.stdout and ndif_api_key not in remote.stderr
    # retrieval reads logits (no generation): scores equal too
    args = ["evaluate", "--task", "retrieval", "--limit", "2", "--json"]
    a, b = hones(*args), hones(*args, "--remote", "--ndif-host", ndif_host)
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-3000:]
    assert abs(json.loads(a.stdout)["metric"] - json.loads(b.stdout)["metric"]) <= 1e-5


def test_several_jobs_in_flight_give_the_same_table(
    ndif_host, ndif_api_key, local_rank, no_weights_env, tmp_path, capsys
):
    """--remote-concurrency: shards run as concurrent jobs on the server; the table equals
    the sequential remote run's and the local one's, bit for bit in shard order."""
    args = ["rank", "--task", "vqa", "--method", "hones", "--limit", "4", "--utility", "logprob"]
    args += ["--heads", str(local_rank / "vqa.heads.parquet"), "--shard-size", "1", "--batch-size", "4"]
    args += ["--remote", "--ndif-host", ndif_host]
    env = {"NDIF_API_KEY": ndif_api_key, **no_weights_env}
    runs = {
        n: hones(*args, "--out-dir", str(tmp_path / f"c{n}"), "--remote-concurrency", str(n), env=env) for n in (1, 4)
    }
    for res in runs.values():
        assert res.returncode == 0, res.stderr[-3000:]
    from hones_nn.engine.tables import read_table

    one, four = (read_table(tmp_path / f"c{n}" / "vqa.hones.parquet") for n in (1, 4))
    assert np.array_equal(one.matrix(), four.matrix())
    assert four.meta["remote"]["concurrency"] == 4 and one.meta["remote"]["concurrency"] == 1
    local = max_diff(local_rank / "vqa.hones.parquet", tmp_path / "c4" / "vqa.hones.parquet")
    with capsys.disabled():
        print(
            f"\n[ndif] rank --method hones --limit 4 --shard-size 1 (4 shards): concurrency 1 {runs[1].seconds:.1f}s, "
            f"concurrency 4 {runs[4].seconds:.1f}s; max |remote - local| {local:.3g}"
        )
    assert local <= 1e-5


def test_head_budget_remote_equals_local(ndif_host, ndif_api_key, local_rank, no_weights_env, tmp_path, capsys):
    """The head-budget curve (head sets replaced together) from a weightless client equals
    the local one, teacher-forced and generated."""
    env = {"NDIF_API_KEY": ndif_api_key, **no_weights_env}
    heads = str(local_rank / "vqa.heads.parquet")
    for utility, budgets in (("prob", "1,2,4"), ("metric", "1,3")):
        args = ["head-budget", "--task", "vqa", "--limit", "4", "--heads", heads, "--utility", utility]
        args += ["--budgets", budgets, "--json"]
        local = hones(*args, "--out-dir", str(tmp_path / f"local-{utility}"))
        remote = hones(
            *args, "--out-dir", str(tmp_path / f"remote-{utility}"), "--remote", "--ndif-host", ndif_host, env=env
        )
        assert local.returncode == 0, local.stderr[-3000:]
        assert remote.returncode == 0, remote.stderr[-3000:]
        a, b = json.loads(local.stdout), json.loads(remote.stdout)
        with capsys.disabled():
            print(
                f"\n[ndif] head-budget --utility {utility} --remote --limit 4: {remote.seconds:.1f}s "
                f"(local {local.seconds:.1f}s); {summary(remote.stderr)}; drops {b['relative_drops']}"
            )
        assert b["backend"] == "ndif" and a["budgets"] == b["budgets"]
        np.testing.assert_allclose(b["utilities"], a["utilities"], atol=1e-5)
        assert abs(a["base"] - b["base"]) <= 1e-5
        assert ndif_api_key not in remote.stdout and ndif_api_key not in remote.stderr


def test_dry_run_counts_the_requests_and_sends_nothing(ndif_host, tmp_path, capsys):
    args = ["rank", "--task", "vqa", "--method", "hones", "--limit", "4", "--utility", "logprob"]
    args += ["--remote", "--ndif-host", ndif_host]
    dry = hones(*args, "--out-dir", str(tmp_path / "dry"), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    real = hones(*args, "--out-dir", str(tmp_path / "real"))
    assert real.returncode == 0, real.stderr[-3000:]
    with capsys.disabled():
        print(f"\n[ndif] {summary(dry.stderr)} | {summary(real.stderr)}")
    planned = int(summary(dry.stderr).split("dry run: ")[1].split(" request")[0])
    sent = int(summary(real.stderr).split("): ")[1].split(" request")[0])
    # the dry run's head scores are stand-ins: it sizes HONES for all K_h head passes, the upper bound
    assert sent <= planned
    assert "contacted no server and read no weights" in dry.stderr
    assert not (tmp_path / "dry").exists() or not list((tmp_path / "dry").rglob("*.parquet"))


def _engine(ndif_host, **settings):
    from hones_nn.engine.core import Engine
    from hones_nn.engine.remote import RemoteSettings
    from hones_nn.models.loading import load_model

    loaded = load_model("tiny-llava", weights=False)  # a remote client holds no weights
    return loaded, Engine(loaded, remote=RemoteSettings(mode="ndif", host=ndif_host, **settings))


def _inputs(loaded, n=2):
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.tasks.task_data import prepare_task

    td = prepare_task(loaded, "vqa", split="test", limit=n)
    return encode_prompts(loaded, td.images, [item.prompts[0] for item in td.items]).inputs


def test_server_side_error_shows_server_message_and_request(ndif_host, ndif_api_key, tmp_path, capsys):
    from hones_nn.engine.remote import JobJournal, RemoteRunError, request_scope
    from hones_nn.interventions.neurons import NeuronMask

    loaded, engine = _engine(ndif_host)
    journal = JobJournal(tmp_path / "jobs.json")
    with request_scope("shard-00007", journal), pytest.raises(RemoteRunError) as info:
        engine.decision_scores(_inputs(loaded), NeuronMask([(0, 10**6)]))  # index out of range, on the server
    message = str(info.value)
    with capsys.disabled():
        print(f"\n[ndif] server-side error -> {message[:400]}")
    assert "reported an error" in message and "shard-00007/req-00000" in message and "job " in message
    assert "index" in message.lower()  # the server's own message
    assert ndif_api_key not in message
    assert journal.get("shard-00007/req-00000") is None  # a failed job is not re-attached to


def test_client_timeout_then_reattach_without_resubmitting(ndif_host, tmp_path, capsys):
    from hones_nn.engine.remote import JobJournal, RemoteTimeoutError, request_scope

    loaded, engine = _engine(ndif_host, timeout_s=0.05)
    inputs = _inputs(loaded, 3)
    journal = JobJournal(tmp_path / "jobs.json")
    with request_scope("shard-00000", journal), pytest.raises(RemoteTimeoutError) as info:
        engine.generate(inputs)
    job = journal.get("shard-00000/req-00000")
    assert job and job in str(info.value) and "rerun the same command to re-attach" in str(info.value)
    # the rerun: same label, normal timeout -> re-attaches to the same job, submits nothing
    engine.remote.settings.timeout_s = 600
    with request_scope("shard-00000", JobJournal(tmp_path / "jobs.json")):
        tokens = engine.generate(inputs)
    from hones_nn.engine.core import Engine
    from hones_nn.models.loading import load_model

    assert tokens == Engine(load_model("tiny-llava")).generate(inputs)  # the local run, with the weights
    stats = engine.remote.stats
    with capsys.disabled():
        print(f"\n[ndif] client timeout -> {str(info.value)[:200]} ... re-attached: {stats.as_dict()}")
    assert stats.reattached == 1 and stats.resubmitted == 0 and stats.requests == 2  # one submit, one re-attach


def test_server_stopped_mid_run_then_resume(ndif_host, stack_control, tmp_path, capsys):
    stop, start = stack_control
    heads = tmp_path / "heads.parquet"
    res = hones("heads", "--task", "vqa", "--limit", "16", "--utility", "logprob", "--out", str(heads))
    assert res.returncode == 0, res.stderr[-2000:]
    args = [
        "rank",
        "--task",
        "vqa",
        "--method",
        "hones",
        "--limit",
        "16",
        "--heads",
        str(heads),
        "--batch-size",
        "6",
        "--option",
        "shard_size=2",
        "--json",
    ]
    local = hones(*args, "--out-dir", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-2000:]
    remote_args = [*args, "--out-dir", str(tmp_path / "remote"), "--remote", "--ndif-host", ndif_host]
    # a short retry budget: with the default (600 s) the stopped run retries past communicate's timeout
    remote_args += ["--remote-retry-budget", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hones_nn.cli", *remote_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    checkpoints = tmp_path / "remote" / ".checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(checkpoints.rglob("shard-*.safetensors")):
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the server could be stopped: " + proc.stderr.read()[-2000:]
    stop()  # mid-run: at least one shard finished, others not
    stopped_at = time.time()
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        start()  # the later tests need the stack
        raise
    done_before = len(list(checkpoints.rglob("shard-*.safetensors")))
    with capsys.disabled():
        print(
            f"\n[ndif] server stopped mid-run: exit {proc.returncode} after {time.time() - stopped_at:.1f}s, "
            f"{done_before}/8 shards kept; error: {err.strip().splitlines()[-1][:300]}"
        )
    assert proc.returncode == 3 and ("unreachable" in err or "lost contact" in err), err[-2000:]
    assert 1 <= done_before < 8
    started = start()
    with capsys.disabled():
        print(f"[ndif] restarted: {started.strip()}")
    resumed = hones(*remote_args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with capsys.disabled():
        print(f"[ndif] resumed: {summary(resumed.stderr)}")
    diff = max_diff(tmp_path / "local" / "vqa.hones.parquet", tmp_path / "remote" / "vqa.hones.parquet")
    assert diff <= 1e-5
    assert not checkpoints.exists() or not list(checkpoints.rglob("shard-*"))  # cleaned after the table


def test_model_not_hosted_is_a_clear_error(ndif_host, tmp_path, capsys):
    """A model the server cannot load (here: a copy without weights, server side)."""
    from hones_nn.engine.remote import RemoteRunError, model_hosted
    from hones_nn.models.loading import resolve_model_path

    loaded, _ = _engine(ndif_host)
    folder = tmp_path / "not-hosted"
    shutil.copytree(resolve_model_path("tiny-llava")[0], folder, ignore=shutil.ignore_patterns("*.safetensors"))
    loaded.model_id = str(folder)
    from hones_nn.engine.core import Engine
    from hones_nn.engine.remote import RemoteSettings

    engine = Engine(loaded, remote=RemoteSettings(mode="ndif", host=ndif_host, deploy_timeout_s=20))
    hosted, message = model_hosted(ndif_host, engine.remote.model_key, engine.remote.repo_id)
    assert not hosted and "does not host" in message and str(folder) in message
    with pytest.raises(RemoteRunError) as info:
        engine.decision_scores(_inputs(loaded, 1))
    with capsys.disabled():
        print(f"\n[ndif] not hosted: dry-run check -> {message[:160]}...\n[ndif] run -> {str(info.value)[:300]}")
    assert "did not deploy the model" in str(info.value)


# (key sent, HTTP status, what the one error line says): none, not a UUID, a UUID the server does not know
BAD_KEYS = [
    (None, 401, "requires an API key and none was sent"),
    ("hones-malformed-key-7f3a9c1e", 400, "as malformed"),
    (str(uuid.uuid4()), 403, "does not know the API key"),
]


@pytest.mark.parametrize(("key", "status", "says"), BAD_KEYS, ids=["missing", "malformed", "unknown"])
def test_bad_key_fails_at_once_with_one_clear_line(ndif_host, key, status, says, tmp_path, capsys):
    """The CLI: exit 3, one error line naming NDIF_API_KEY and nnsight's config, the status,
    no retries (a refused key is final, whatever the retry budget), the key never echoed."""
    args = ["evaluate", "--task", "retrieval", "--limit", "2", "--json", "--remote", "--ndif-host", ndif_host]
    # no key from the environment nor from a user's nnsight config file
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), **({"NDIF_API_KEY": key} if key else {})}
    res = hones(*args, "--remote-retry-budget", "600", env=env, unset=() if key else ("NDIF_API_KEY",))
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    with capsys.disabled():
        shown = errors[-1] if errors else res.stderr[-500:]
        print(f"\n[ndif] {status} ({res.seconds:.1f}s, exit {res.returncode}): {shown}")
    assert res.returncode == 3, res.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = errors[0]
    assert says in line and f"HTTP {status}" in line and "NDIF_API_KEY" in line and "nnsight's config" in line
    assert "unreachable" not in line and "tries" not in line  # no retry streak
    if key:
        assert key not in res.stdout and key not in res.stderr
    assert res.stdout == ""


def test_missing_key_is_final_no_retry(ndif_host, monkeypatch, tmp_path):
    """In process: the refused submit is not retried and no request is counted as sent."""
    from hones_nn.engine.remote import RemoteRunError

    monkeypatch.delenv("NDIF_API_KEY")
    loaded, engine = _engine(ndif_host, retry_budget_s=600)
    import nnsight

    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(RemoteRunError, match="none was sent") as info:
        engine.decision_scores(_inputs(loaded, 1))
    stats = engine.remote.stats
    assert stats.retries == 0 and stats.requests == 0, stats.as_dict()
    assert "NDIF_API_KEY" in str(info.value)
