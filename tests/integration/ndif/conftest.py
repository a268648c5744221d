"""The local NDIF stack for the ``ndif`` tests: found at $NDIF_TEST_HOST, else at the host
start.sh recorded in .gl/ndif-state/host. Tests are skipped (with the reason) when no
server answers; set NDIF_TEST_REQUIRED=1 (CI does) to make that a failure instead."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def ndif_host() -> str:
    host = _host()
    if not host.startswith(("http://127.", "http://localhost")):
        pytest.fail(f"the ndif tests talk to loopback only, not {host}")
    if not _answers(host):
        reason = (
            f"no NDIF server answers at {host}: start the local stack with "
            "`bash tests/integration/ndif/install.sh && bash tests/integration/ndif/start.sh`"
        )
        if os.environ.get("NDIF_TEST_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return host


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
        return out.stdout

    return stop, start
