"""Every private nnsight symbol hones_nn uses, in one place.

nnsight is pinned to a tested range (``nnsight>=0.8.1,<0.9`` in pyproject.toml). Its
public API (``nnsight.save``, ``NNsight``, ``nnsight.register``, ``CONFIG``,
``TransformersModel``, ``nnsight.status`` ...) may be imported anywhere; everything else
(underscore names, and classes or functions only reachable through internal module paths)
is imported **here only**, so a new nnsight release is checked in one file.
``tests/unit/test_nnsight_private.py`` fails when another module imports one.

Each symbol, why it is needed, checked on nnsight 0.8.1:

* ``Backend`` (``nnsight.tracing.backend``): the base class of the project's remote
  backend (``HonesRemoteBackend``), which an Envoy's ``trace(backend=...)`` accepts.
* ``RemoteBackend``, ``RemoteError`` (``nnsight.intervention.backends.remote``): the
  non-blocking submit / poll protocol (``submit``, ``poll``, ``download_result``,
  ``finalize``, ``_serialize``) and the exception of a job that failed on the server.
  ``RemoteBackend.download_result`` fetches a COMPLETED job's presigned result URL with
  ``httpx`` and ``raise_for_status()``: an expired URL raises ``httpx.HTTPStatusError``
  (403, or 404 once the object is gone).
* ``LocalSimulationBackend`` (``nnsight.intervention.backends.local``): the
  ``remote="local"`` rehearsal (serialize, deserialize with local modules hidden, run).
* ``RequestModel`` (``nnsight.schema.request``): ``RequestModel.serialize`` sizes a
  request exactly as it would be sent (--dry-run).
* ``Remotable`` (``nnsight.modeling.mixins.remotable``): the mixin of models that can
  run remotely (the engine checks its envoy is one).
* ``saves`` (``nnsight.tracing.tracer._saves``): the ids of the values ``.save()``d in
  a trace, to size what a server would send back.
* ``push`` (``nnsight.tracing.util.push``): writes a remote result into the caller's
  frame, as nnsight's blocking path does.
* ``seed_model_id`` (``nnsight.modeling.huggingface._ID_CACHE``): nnsight canonicalizes a
  repo id through the hub when it builds the model key; a local path has no hub entry.
* ``fetch_status`` / ``fetch_env`` (``nnsight.ndif._get``, ``get_local_env``,
  ``get_remote_env``, ``EnvComparison``, ``CRITICAL_PACKAGES``, ``_DEPLOYED_LEVELS``):
  nnsight's own NDIF helpers (``nnsight.status()``, ``nnsight.compare()``) read
  ``GET /status`` and ``GET /env`` of ``CONFIG.API.HOST`` and swallow errors (printing
  "Down"); these wrappers call the same requests for a given host and let the reason of
  a failure through, so the CLI can name it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nnsight
from nnsight.intervention.backends.local import LocalSimulationBackend
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError
from nnsight.modeling.mixins.remotable import Remotable
from nnsight.schema.request import RequestModel
from nnsight.tracing.backend import Backend
from nnsight.tracing.tracer import _saves as saves
from nnsight.tracing.tracer import mark
from nnsight.tracing.util import push

NNSIGHT_TESTED = ">=0.8.1,<0.9"  # the range pyproject.toml allows; every symbol here checked on 0.8.1
NNSIGHT_VERSION = nnsight.__version__

__all__ = [
    "NNSIGHT_TESTED",
    "NNSIGHT_VERSION",
    "Backend",
    "LocalSimulationBackend",
    "Remotable",
    "RemoteBackend",
    "RemoteError",
    "RequestModel",
    "critical_packages",
    "deployed_levels",
    "fetch_env",
    "fetch_status",
    "mark",
    "push",
    "saves",
    "seed_model_id",
]


def seed_model_id(path: str) -> None:
    """Map a local path to itself in nnsight's repo-id cache (the server loads the same path)."""
    from nnsight.modeling import huggingface

    huggingface._ID_CACHE.setdefault(path, path)


@contextlib.contextmanager
def _host(host: str) -> Iterator[None]:
    """nnsight's NDIF helpers read ``CONFIG.API.HOST``: point it at ``host`` for the call."""
    from nnsight import CONFIG

    held = CONFIG.API.HOST
    CONFIG.API.HOST = host
    try:
        yield
    finally:
        CONFIG.API.HOST = held


def fetch_status(host: str, api_key: str | None = None, timeout: float = 10.0) -> dict:
    """The raw ``GET /status`` answer, as ``nnsight.status(raw=True)`` reads it, but raising
    (httpx errors) instead of printing "Down" and returning ``{}``."""
    from nnsight import ndif

    with _host(host):
        return ndif._get(
            "/status", timeout=(min(5.0, timeout), timeout), headers={"ndif-api-key": api_key} if api_key else None
        )


def fetch_env(host: str):
    """nnsight's local-vs-server environment comparison (``nnsight.compare()``) against
    ``host``, fetched afresh (nnsight caches the server's environment per process)."""
    from nnsight import ndif

    with _host(host):
        remote = ndif.get_remote_env(force_refresh=True)
    return ndif.EnvComparison(ndif.get_local_env(), remote)


def critical_packages() -> set[str]:
    """The packages whose drift nnsight flags as critical (nnsight, transformers, torch)."""
    from nnsight import ndif

    return set(ndif.CRITICAL_PACKAGES)


def deployed_levels() -> set[str]:
    """The deployment levels nnsight counts as deployed (HOT, WARM; COLD is downloaded only)."""
    from nnsight import ndif

    return set(ndif._DEPLOYED_LEVELS)
