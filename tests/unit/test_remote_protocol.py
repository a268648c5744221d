"""The NDIF request protocol (issue 13, part 2), against a fake server: nnsight's own
RemoteBackend and NDIF helpers run unchanged, their HTTP goes to an httpx MockTransport.
Retries (jitter, Retry-After, budget, 429 vs 400), expired result URLs, model states, the
version drift and `hones-nn remote check`. Sleeps are injected: no test waits."""

from __future__ import annotations

import io
import json
import sys

import httpx
import pytest
import torch
import zstandard

from hones_nn.engine import remote
from hones_nn.engine.nnsight_compat import RemoteBackend
from hones_nn.engine.remote import RemoteRunError, RemoteSession, RemoteSettings, RemoteStats

HOST = "http://ndif.test"
KEY = 'nnsight.modeling.transformers.TransformersModel:{"repo_id": "org/m", "revision": "main"}'
SECRET = "planted-secret-key-123456"


class FakeServer:
    """Answers nnsight's requests: POST /request, GET /response/{id}, the result URL,
    /status and /env. ``posts`` / ``downloads``: a list of (status code, headers) answers
    given in turn before the normal one ("refused": a connection error)."""

    def __init__(self, posts=(), polls=(), downloads=(), running_polls=1, status=None, env=None):
        self.posts, self.polls, self.downloads = list(posts), list(polls), list(downloads)
        self.running_polls = running_polls
        self.jobs: list[str] = []
        self.polled: dict[str, int] = {}
        self.seen: list[str] = []
        self.headers: list[dict] = []
        self.status = status if status is not None else {"deployments": {}}
        self.env = env

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.seen.append(f"{request.method} {path}")
        self.headers.append(dict(request.headers))
        if path == "/request":
            if self.posts:
                code, headers, *detail = self.posts.pop(0)  # (code, headers[, the answer's detail])
                if code == "refused":
                    raise httpx.ConnectError("connection refused", request=request)
                return httpx.Response(code, headers=headers, json={"detail": detail[0] if detail else f"answer {code}"})
            job = f"job-{len(self.jobs)}"
            self.jobs.append(job)
            return httpx.Response(200, json={"id": job, "status": "RECEIVED"})
        if path.startswith("/response/"):
            if self.polls:
                code, headers = self.polls.pop(0)
                return httpx.Response(code, headers=headers, json={"detail": f"answer {code}"})
            job = path.rsplit("/", 1)[1]
            self.polled[job] = self.polled.get(job, 0) + 1
            if self.polled[job] <= self.running_polls:
                return httpx.Response(200, json={"id": job, "status": "RUNNING"})
            return httpx.Response(200, json={"id": job, "status": "COMPLETED", "data": f"https://store.test/{job}"})
        if request.url.host == "store.test":
            if self.downloads:
                code, headers = self.downloads.pop(0)
                return httpx.Response(code, headers=headers, text="AccessDenied: Request has expired")
            buffer = io.BytesIO()
            # the server's wire format, which nnsight's RemoteBackend.finalize loads (not an output)
            torch.save({"value": torch.tensor([float(len(self.jobs))])}, buffer)  # noqa: TID251
            return httpx.Response(200, content=zstandard.ZstdCompressor().compress(buffer.getvalue()))
        if path == "/status":
            return httpx.Response(200, json=self.status)
        if path == "/env" and self.env is not None:
            return httpx.Response(200, json=self.env)
        return httpx.Response(404, json={"detail": "Not Found"})


@pytest.fixture
def server(monkeypatch):
    """Route every httpx request (nnsight's Client() and httpx.get) to a FakeServer."""
    holder: dict = {"server": FakeServer()}
    real_client = httpx.Client

    class Client(real_client):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["transport"] = httpx.MockTransport(lambda request: holder["server"](request))
            super().__init__(*args, **kwargs)

    def get(url, **kwargs):
        with Client() as client:
            return client.get(url, **{k: v for k, v in kwargs.items() if k in ("headers", "params", "timeout")})

    monkeypatch.setattr(httpx, "Client", Client)
    monkeypatch.setattr(httpx, "get", get)
    monkeypatch.setattr(RemoteBackend, "_serialize", lambda self, tracer: b"request-blob")
    monkeypatch.setenv("NDIF_API_KEY", SECRET)

    def install(**kwargs) -> FakeServer:
        holder["server"] = FakeServer(**kwargs)
        return holder["server"]

    return install


class Clock:
    """A fake clock that the injected sleep advances."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _session(clock: Clock, **settings) -> RemoteSession:
    settings = {"poll_s": 0.001, "sleep": clock.sleep, "clock": lambda: clock.now, **settings}
    s = RemoteSettings(mode="ndif", host=HOST, **settings)
    s.preflight_done = True  # the drift check has its own tests
    session = RemoteSession(s)
    session.model_key = KEY
    return session


def test_5xx_and_connection_errors_are_retried_with_full_jitter(server):
    fake = server(posts=[(503, {}), ("refused", {}), (500, {})])
    clock = Clock()
    session = _session(clock, backoff_s=1.0)
    result = session.run_ndif(None, None)
    assert torch.equal(result["value"], torch.tensor([1.0]))
    assert fake.jobs == ["job-0"]
    # each wait drawn below its ceiling 1, 2, 4 s (doubling); jitter: not the ceilings themselves
    assert len(clock.sleeps) == 3
    assert all(0.0 <= s <= c for s, c in zip(clock.sleeps, (1.0, 2.0, 4.0)))
    assert clock.sleeps != [1.0, 2.0, 4.0]
    assert session.stats.retries == 3 and session.stats.retry_wait_s == pytest.approx(sum(clock.sleeps))
    # the key goes in the header of every request to the server, not to the object store
    to_server = [h for h, p in zip(fake.headers, fake.seen) if p.startswith(("POST /request", "GET /response"))]
    to_store = [h for h, p in zip(fake.headers, fake.seen) if p == "GET /job-0"]
    assert len(to_server) == 4 + 2 and all(h.get("ndif-api-key") == SECRET for h in to_server)
    assert len(to_store) == 1 and all(SECRET not in json.dumps(h) for h in to_store)


def test_jitter_spreads_the_waits_of_clients_that_failed_together(server):
    waits = []
    for seed in range(20):
        server(posts=[(503, {})])
        clock = Clock()
        session = _session(clock, backoff_s=8.0)
        session.settings.rng.seed(seed)
        session.run_ndif(None, None)
        waits.append(clock.sleeps[0])
    assert all(0.0 <= w <= 8.0 for w in waits) and len(set(waits)) == 20
    assert min(waits) < 4.0 < max(waits)


def test_retry_after_is_honoured_seconds_and_http_date(server):
    server(posts=[(503, {"Retry-After": "7"}), (429, {"Retry-After": "3"})])
    clock = Clock()
    session = _session(clock)
    session.run_ndif(None, None)
    assert clock.sleeps == [7.0, 3.0] and session.stats.retry_wait_s == 10.0

    import email.utils
    import time

    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    server(posts=[(503, {"Retry-After": when})])
    clock = Clock()
    _session(clock).run_ndif(None, None)
    assert len(clock.sleeps) == 1 and 100.0 < clock.sleeps[0] <= 120.0


def test_429_is_retried_400_is_final(server):
    fake = server(posts=[(429, {})])
    clock = Clock()
    session = _session(clock)
    session.run_ndif(None, None)
    assert session.stats.retries == 1 and fake.jobs == ["job-0"]

    fake = server(posts=[(400, {}), (503, {})])
    clock = Clock()
    session = _session(clock)
    with pytest.raises(RemoteRunError) as info:
        session.run_ndif(None, None)
    assert "refused the request" in str(info.value) and "answer 400" in str(info.value)
    assert clock.sleeps == [] and session.stats.retries == 0 and fake.jobs == []


# NDIF's answers (ndif 0.1.2, services/api/auth.py) to a missing, a malformed and an unknown key
REFUSED_KEYS = [
    (401, "Missing or invalid API key. Please visit https://login.ndif.us/ to create a new one.", "none was sent"),
    (400, f"Invalid API key format: '{SECRET}'. API keys must be in the format: xxxxxxxx-xxxx", "as malformed"),
    (403, "Invalid API key.", "does not know the API key from NDIF_API_KEY"),
]


@pytest.mark.parametrize(("code", "detail", "says"), REFUSED_KEYS, ids=["missing", "malformed", "unknown"])
def test_a_refused_key_is_final_one_line_and_never_echoed(server, monkeypatch, code, detail, says):
    if code == 401:
        import nnsight

        monkeypatch.delenv("NDIF_API_KEY")
        monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    fake = server(posts=[(code, {}, detail), (503, {})])
    clock = Clock()
    session = _session(clock)
    with pytest.raises(RemoteRunError) as info:
        session.run_ndif(None, None)
    message = str(info.value)
    assert says in message and f"HTTP {code}" in message and "\n" not in message
    assert "NDIF_API_KEY" in message and "nnsight's config" in message  # where to set it
    assert SECRET not in message  # the 400 answer quotes the key: never echoed
    assert clock.sleeps == [] and session.stats.retries == 0 and fake.jobs == []  # final: no retry
    assert ("ndif-api-key" in fake.headers[0]) == (code != 401)


def test_a_401_with_a_key_sent_names_where_the_key_came_from(server, monkeypatch):
    import nnsight

    monkeypatch.delenv("NDIF_API_KEY")
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", SECRET)
    server(posts=[(401, {}, "Missing or invalid API key.")])
    with pytest.raises(RemoteRunError) as info:
        _session(Clock()).run_ndif(None, None)
    message = str(info.value)
    assert "refused the API key from nnsight's config" in message and SECRET not in message


def test_the_budget_ends_the_retries_with_a_clear_error(server):
    server(posts=[(503, {})] * 1000)
    clock = Clock()
    session = _session(clock, retry_budget_s=60.0, backoff_s=1.0, backoff_max_s=8.0)
    with pytest.raises(RemoteRunError) as info:
        session.run_ndif(None, None)
    message = str(info.value)
    assert "unreachable after" in message and "retry budget 60 s (--remote-retry-budget)" in message
    assert SECRET not in message
    # the waits add up to the budget, not beyond (the last one is cut to what is left)
    assert clock.now == pytest.approx(60.0) and sum(clock.sleeps) == pytest.approx(60.0)
    assert all(s <= 8.0 for s in clock.sleeps) and session.stats.retries == len(clock.sleeps) > 7


def test_a_retry_after_beyond_the_budget_is_final_and_says_so(server):
    server(posts=[(503, {"Retry-After": "900"})])
    clock = Clock()
    session = _session(clock, retry_budget_s=600.0)
    with pytest.raises(RemoteRunError) as info:
        session.run_ndif(None, None)
    assert "asked to retry in 900 s" in str(info.value) and clock.sleeps == []


def test_poll_failures_are_retried_within_the_budget(server):
    fake = server(polls=[(503, {}), (502, {"Retry-After": "2"})])
    clock = Clock()
    session = _session(clock)
    result = session.run_ndif(None, None)
    assert result is not None and fake.jobs == ["job-0"] and session.stats.retries == 2
    assert clock.sleeps[1] == 2.0


def test_an_expired_result_url_is_resubmitted_once_and_counted(server, tmp_path):
    """A journaled job re-attached after its presigned URL expired (403 from the store)."""
    fake = server(downloads=[(403, {})], running_polls=0)
    fake.jobs.append("job-old")  # submitted by an earlier run, long ago
    journal = remote.JobJournal(tmp_path / "jobs.json")
    journal.put("shard-00000/req-00000", "job-old")
    clock = Clock()
    session = _session(clock)
    with remote.request_scope("shard-00000", journal):
        result = session.run_ndif(None, None)
    assert torch.equal(result["value"], torch.tensor([2.0]))  # computed by the resubmitted job
    assert fake.jobs == ["job-old", "job-1"]
    assert journal.get("shard-00000/req-00000") == "job-1"
    st = session.stats
    assert (st.reattached, st.resubmitted_expired, st.resubmitted, st.retries) == (1, 1, 0, 0)
    (line,) = remote.summary_lines(session.settings)
    assert "1 resubmitted after their result expired" in line


def test_a_result_that_expires_again_is_an_error_not_a_loop(server, tmp_path):
    server(downloads=[(404, {}), (403, {})], running_polls=0)
    clock = Clock()
    session = _session(clock)
    journal = remote.JobJournal(tmp_path / "jobs.json")
    journal.put("s/req-00000", "job-old")
    with remote.request_scope("s", journal), pytest.raises(RemoteRunError) as info:
        session.run_ndif(None, None)
    assert "expired again" in str(info.value) and session.stats.resubmitted_expired == 1
    assert journal.get("s/req-00000") is None


def test_summary_line_counts_retries_and_waits():
    settings = RemoteSettings(mode="ndif", host=HOST)
    session = RemoteSession(settings)
    session.stats = RemoteStats(requests=3, retries=4, retry_wait_s=2.5, resubmitted_expired=1)
    (line,) = remote.summary_lines(settings)
    assert "4 retries (2.5 s waited)" in line and "1 resubmitted after their result expired" in line


def test_the_budget_is_validated():
    with pytest.raises(ValueError, match="--remote-retry-budget must be 0 or more"):
        RemoteSettings(mode="ndif", host=HOST, retry_budget_s=-1)


# ---------------------------------------------------------------- server state, drift, remote check


def _deployment(repo_id, level="HOT", state="RUNNING", revision=None, key=None):
    return {
        "model_key": key or f'nnsight.modeling.transformers.TransformersModel:{{"repo_id": "{repo_id}"}}',
        "repo_id": repo_id,
        "revision": revision,
        "deployment_level": level,
        "application_state": state,
    }


def test_model_state_tells_running_from_cold_deploying_unhealthy_and_revisions():
    status = {
        "deployments": {
            "a": _deployment("org/run"),
            "b1": _deployment("org/dep", state="DEPLOYING"),
            "b2": _deployment("org/dep", level="COLD", state="RUNNING"),
            "c": _deployment("org/cold", level="COLD"),
            "d": _deployment("org/sick", state="UNHEALTHY"),
            "e": _deployment("org/rev", revision="v2"),
            "f1": _deployment("org/two", state="UNHEALTHY"),
            "f2": _deployment("org/two", level="WARM", state="RUNNING"),
        }
    }
    state = {repo: remote.model_state(status, repo)[0] for repo in ("org/run", "org/dep", "org/cold", "org/sick")}
    assert state == {"org/run": "running", "org/dep": "deploying", "org/cold": "cold", "org/sick": "unhealthy"}
    assert remote.model_state(status, "org/rev")[0] == "other-revision"
    assert remote.model_state(status, "org/rev", "v2")[0] == "running"
    assert remote.model_state(status, "org/two")[0] == "running"  # the healthiest replica counts
    assert remote.model_state(status, "org/none")[0] == "absent"
    hosted = {repo: remote.model_hosted(HOST, None, repo, status=status) for repo in ("org/run", "org/cold")}
    assert hosted["org/run"][0] and "running (RUNNING, HOT)" in hosted["org/run"][1]
    assert not hosted["org/cold"][0] and "not deployed (cold)" in hosted["org/cold"][1]
    ok, message = remote.model_hosted(HOST, None, "org/none", status=status)
    assert not ok and "does not host org/none" in message and "org/run" in message


def test_the_model_key_carries_the_revision():
    class Loaded:
        revision = "0123456789abcdef"  # the commit the default branch resolved to
        requested_revision = "v1.1"

    assert remote.remote_revision(Loaded(), local=False) == "v1.1"  # what the user asked for
    Loaded.requested_revision = None
    assert remote.remote_revision(Loaded(), local=False) == "main"  # not the resolved commit
    assert remote.remote_revision(Loaded(), local=True) is None
    assert remote._key_parts(KEY) == ("org/m", "main")


def _env(python: str, **packages) -> dict:
    return {"python_version": python + " (main, Jan 1 2026)", "packages": packages}


def test_version_drift_is_reported_by_nnsight_comparison(server):
    from nnsight import ndif

    local = ndif.get_local_env()["packages"]
    server(
        env=_env(
            "3.0.1",
            torch="0.0.1",
            nnsight=local["nnsight"],
            httpx="0.0.2",
            only_on_server="1.0",
        )
    )
    lines = remote.environment_lines(HOST)
    py = sys.version.split()[0]
    assert lines[0] == f"Python {py} here, 3.0.1 on the server"
    assert (
        lines[1] == f"package drift that nnsight flags as critical: torch {local['torch']} here / 0.0.1 on the server"
    )
    assert lines[2] == f"1 other package(s) differ from the server's (here/server): httpx {local['httpx']}/0.0.2"
    assert all("only_on_server" not in line and "nnsight" not in line.split(":")[1] for line in lines[1:])


def test_a_server_without_env_is_a_warning_and_preflight_never_asks_connected(server):
    fake = server(env=None)
    settings = RemoteSettings(mode="ndif", host=HOST)
    lines = remote.preflight(settings)
    assert settings.preflight_done
    assert lines == [
        "version drift: cannot compare versions with the server (GET /env: " + lines[0].split("(GET /env: ")[1]
    ]
    assert "404" in lines[0]
    assert "GET /status" in fake.seen and not any("connected" in seen for seen in fake.seen)


def test_no_server_is_a_clear_error_without_the_key(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    with pytest.raises(RemoteRunError) as info:
        remote.check_server("http://127.0.0.1:9", timeout=2)
    assert "no NDIF server answers at http://127.0.0.1:9" in str(info.value) and SECRET not in str(info.value)
    settings = RemoteSettings(mode="ndif", host="http://127.0.0.1:9")
    (line,) = remote.preflight(settings, strict=False)  # the API path: requests are still tried
    assert "no NDIF server answers" in line


def _check(args):
    from click.testing import CliRunner

    from hones_nn.cli.main import cli

    return CliRunner().invoke(cli, ["remote", "check", "--ndif-host", HOST, *args])


def test_remote_check_usable_and_not(server, tmp_path):
    from nnsight import ndif

    local = ndif.get_local_env()
    folder = tmp_path / "model"
    folder.mkdir()
    status = {
        "deployments": {
            "a": _deployment("org/run"),
            "b": _deployment("org/cold", level="COLD"),
            "c": _deployment(str(folder.resolve()), state="UNHEALTHY"),
        }
    }
    fake = server(status=status, env=local)
    result = _check(["--model", "org/run"])
    assert result.exit_code == 0, result.output
    assert f"NDIF server at {HOST}: up (1 of 2 deployed model(s) running, 1 cold)" in result.output
    assert "versions: Python and the packages installed on both sides match" in result.output
    assert "model: the server hosts org/run (revision main) and it is running" in result.output
    assert result.output.rstrip().endswith("usable: yes")
    assert "API key: set ($NDIF_API_KEY)" in result.output and SECRET not in result.output
    assert not any("connected" in seen for seen in fake.seen)

    result = _check(["--model", "org/cold"])
    assert result.exit_code == 3 and "not deployed (cold)" in result.output and "usable: no" in result.output
    result = _check(["--model", "org/run", "--revision", "v9"])
    assert result.exit_code == 3 and "only at revision main, not at v9" in result.output
    result = _check(["--model", str(folder)])  # a local folder: keyed by its absolute path, no revision
    assert result.exit_code == 3 and "unhealthy" in result.output
    result = _check([])
    assert result.exit_code == 0 and "usable: yes" in result.output


def test_remote_check_without_server_exits_3(monkeypatch):
    from click.testing import CliRunner

    from hones_nn.cli.main import cli

    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    result = CliRunner().invoke(cli, ["remote", "check", "--ndif-host", "http://127.0.0.1:9"])
    assert result.exit_code == 3
    assert "no NDIF server answers at http://127.0.0.1:9" in result.output and "usable: no" in result.output
    assert SECRET not in result.output


def test_status_json_shape_matches_what_nnsight_reads(server):
    """nnsight.status() itself folds the same /status our checks read (the same fields)."""
    import nnsight

    server(status={"deployments": {"a": _deployment("org/run"), "c": _deployment("org/cold", level="COLD")}})
    from hones_nn.engine.nnsight_compat import _host

    with _host(HOST):
        folded = nnsight.status()
    assert list(folded) == ["org/run"] and folded["org/run"]["state"] == "RUNNING"
    assert json.loads(json.dumps(remote.server_status(HOST)))["deployments"]["c"]["deployment_level"] == "COLD"
