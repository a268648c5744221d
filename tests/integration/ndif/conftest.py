"""The local NDIF stack for the ``ndif`` tests: found at $NDIF_TEST_HOST, else at the host
start.sh recorded in .gl/ndif-state/host. Tests are skipped (with the reason) when no
server answers; set NDIF_TEST_REQUIRED=1 (CI does) to make that a failure instead.

The stack runs with API-key authentication on: start.sh issues a key per start and writes
it to .gl/ndif-state/api_key ($NDIF_TEST_API_KEY overrides it). Every test that talks to the
server has it as NDIF_API_KEY in its environment (so the CLI runs it starts send it too),
read afresh per test: a restart of the stack issues a new one. The key is never printed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
STATE = Path(os.environ.get("NDIF_STATE", ROOT / ".gl" / "ndif-state"))


def _host() -> str:
    if os.environ.get("NDIF_TEST_HOST"):
        return os.environ["NDIF_TEST_HOST"].rstrip("/")
    recorded = STATE / "host"
    return recorded.read_text().strip() if recorded.exists() else "http://127.0.0.1:8001"


def _answers(host: str) -> bool:
    """The server answers /status, as nnsight's own status helper reads it (never /connected)."""
    from hones_nn.engine.remote import RemoteRunError, server_status

    try:
        server_status(host, timeout=3)
    except RemoteRunError:
        return False
    return True


def _unavailable(reason: str) -> NoReturn:
    """A missing stack fails the run that requires it (CI: NDIF_TEST_REQUIRED=1), else skips."""
    if os.environ.get("NDIF_TEST_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ndif_host() -> str:
    host = _host()
    if not host.startswith(("http://127.", "http://localhost")):
        pytest.fail(f"the ndif tests talk to loopback only, not {host}")
    if not _answers(host):
        _unavailable(
            f"no NDIF server answers at {host}: start the local stack with "
            "`bash tests/integration/ndif/install.sh && bash tests/integration/ndif/start.sh`"
        )
    return host


def _read_key() -> str | None:
    if os.environ.get("NDIF_TEST_API_KEY"):
        return os.environ["NDIF_TEST_API_KEY"]
    path = STATE / "api_key"
    return path.read_text().strip() if path.exists() else None


@pytest.fixture
def ndif_api_key(ndif_host) -> str:
    """The stack's valid API key (the current one: a restart issues a new one)."""
    key = _read_key()
    if not key:
        _unavailable(
            f"no API key for the NDIF server at {ndif_host}: start.sh writes one to {STATE / 'api_key'} "
            "(or set NDIF_TEST_API_KEY)"
        )
    return key


@pytest.fixture(autouse=True)
def _client_sends_the_key(request, monkeypatch):
    """A test that talks to the server runs with NDIF_API_KEY set to the stack's key."""
    if "ndif_host" in request.fixturenames:
        monkeypatch.setenv("NDIF_API_KEY", request.getfixturevalue("ndif_api_key"))


@pytest.fixture(scope="session")
def stack_control(ndif_host):
    """Stop / start the stack (fault tests): only a stack that start.sh started here."""
    if not (STATE / "pids").exists():
        pytest.skip("the stack was not started by tests/integration/ndif/start.sh here: cannot stop and restart it")
    import subprocess

    def stop():
        subprocess.run(["bash", str(HERE / "stop.sh")], check=True, capture_output=True, text=True)

    def start():
        out = subprocess.run(["bash", str(HERE / "start.sh")], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        os.environ["NDIF_API_KEY"] = _read_key() or ""  # the new start's key (the test's monkeypatch restores)
        return out.stdout

    return stop, start
