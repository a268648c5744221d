"""Remote execution of the recipes' traces on NDIF (``--remote``).

Every recipe runs its traces through ``Engine.envoy`` (``with engine.envoy.trace(...)``).
For a remote run that envoy is a :class:`RemoteModel`: nnsight's ``TransformersModel``
built from the model's repo id or local path (a bare ``NNsight(module)`` ignores
``remote=True`` without a word), whose ``trace`` / ``generate`` always hand the block
to a :class:`HonesRemoteBackend`. Call sites do not change.

The backend, per trace:

* serializes the block once (the processor-batched encoding of many examples, the
  closures of the interventions; only the few ``.save()``d tensors come back);
* ``mode="ndif"``: submits it **non-blocking** (``POST /request``, retries with
  exponential backoff on connection errors and 5xx), records the job id in the run's
  :class:`JobJournal` (inside the checkpoint folder of the :class:`ShardedRun`), then
  polls ``GET /response/{id}`` until COMPLETED (transient poll errors retried), and
  pushes the saved values into the caller's frame like nnsight's blocking path. A
  restarted run finds the job id under the same label and re-attaches instead of
  resubmitting; a job the server no longer knows (the server was restarted) is
  resubmitted after ``lost_job_grace_s``. A server-side error raises
  :class:`RemoteRunError` with the server's message and a description of the request;
  a job still running at ``timeout_s`` raises :class:`RemoteTimeoutError` and stays in
  the journal, so a rerun re-attaches to it;
* ``mode="local"``: nnsight's ``remote="local"`` rehearsal (serialize, deserialize with
  the project's modules hidden, run in-process): the serialization path of every recipe
  is covered by the ordinary test suite, with no server.

The API key (``NDIF_API_KEY`` or nnsight's config) goes only into the request header;
:func:`redact` scrubs it from every message this module raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nnsight.tracing.backend import Backend

MODES = ("ndif", "local", "plan")
DEFAULT_HOST = "http://127.0.0.1:8001"

# in-process runs (rehearsal, --dry-run) of concurrent shards, one at a time
_IN_PROCESS_LOCK = threading.Lock()

# the label scope of the current requests (set by ShardedRun per shard) and its journal
_SCOPE: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("hones_remote_scope", default=None)


class RemoteRunError(RuntimeError):
    """A remote request failed (server error, unreachable server, model not hosted)."""


class RemoteTimeoutError(RemoteRunError):
    """A remote job did not finish in time; its id stays in the checkpoint for a rerun."""


class BackendMismatchError(RuntimeError):
    """``--remote`` was asked for but the traces did not run through the remote backend."""


# ---------------------------------------------------------------- settings and secrets


def resolve_host(host: str | None = None) -> str:
    """--ndif-host, else NDIF_HOST, else nnsight's configured host."""
    if host:
        value = host
    elif os.environ.get("NDIF_HOST"):
        value = os.environ["NDIF_HOST"]
    else:
        from nnsight import CONFIG

        value = CONFIG.API.HOST or DEFAULT_HOST
    value = value.rstrip("/")
    if not value.startswith(("http://", "https://")):
        value = "http://" + value
    return value


def api_key() -> str:
    """NDIF_API_KEY, else nnsight's config (``nnsight.CONFIG.API.APIKEY``); never printed."""
    key = os.environ.get("NDIF_API_KEY")
    if key:
        return key
    try:
        from nnsight import CONFIG

        return CONFIG.API.APIKEY or ""
    except Exception:
        return ""


def redact(text: str) -> str:
    key = api_key()
    text = str(text)
    if key and len(key) >= 4:
        text = text.replace(key, "<redacted>")
    return text


@dataclass
class RemoteSettings:
    # "ndif" (a server), "local" (in-process rehearsal of the serialization) or "plan"
    # (--dry-run: every request serialized and measured, run in-process, nothing sent)
    mode: str = "ndif"
    host: str | None = None
    timeout_s: float = 1800.0  # per request, from submission to result
    max_retries: int = 5  # transient failures (connection refused, 5xx) per submit / poll
    backoff_s: float = 0.5  # first backoff; doubles, capped at 30 s
    poll_s: float = 0.05  # first poll interval; grows 1.5x to 1 s
    lost_job_grace_s: float = 15.0  # a journaled job unknown to the server this long is resubmitted
    deploy_timeout_s: float = 300.0  # a model still provisioning / deploying after this is taken as not hosted
    concurrency: int = 4  # shards (their requests) in flight at once (--remote-concurrency; 1 = sequential)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown remote mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode in ("ndif", "plan"):
            self.host = resolve_host(self.host)
        self.sessions: list = []  # the RemoteSessions run under these settings (for summaries)

    def describe(self) -> dict:
        """What may go into metadata and logs (never the key)."""
        return {"mode": self.mode, "host": self.host}


@dataclass
class RemoteStats:
    requests: int = 0
    reattached: int = 0
    resubmitted: int = 0
    retries: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    latencies: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        lat = sorted(self.latencies)
        return {
            "requests": self.requests,
            "reattached": self.reattached,
            "resubmitted": self.resubmitted,
            "retries": self.retries,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "latency_mean_s": round(sum(lat) / len(lat), 4) if lat else None,
            "latency_median_s": round(lat[len(lat) // 2], 4) if lat else None,
        }


# ---------------------------------------------------------------- job journal (in the checkpoint)


class JobJournal:
    """label -> job id, one JSON file written atomically on every change."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.jobs: dict[str, str] = {}
        if self.path.exists():
            try:
                self.jobs = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.jobs = {}

    def get(self, label: str) -> str | None:
        return self.jobs.get(label)

    def put(self, label: str, job_id: str) -> None:
        self.jobs[label] = job_id
        self._write()

    def drop(self, label: str) -> None:
        if self.jobs.pop(label, None) is not None:
            self._write()

    def drop_prefix(self, prefix: str) -> None:
        keys = [k for k in self.jobs if k.startswith(prefix)]
        for k in keys:
            del self.jobs[k]
        if keys:
            self._write()

    def _write(self) -> None:
        from hones_nn.utils.io import atomic_write_json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.jobs)


@contextlib.contextmanager
def request_scope(prefix: str, journal: JobJournal | None) -> Iterator[None]:
    """Label the remote requests made inside (``prefix/req-00000`` ...) and record their
    job ids in ``journal``, so a rerun of the same shard re-attaches to them."""
    token = _SCOPE.set((prefix, journal, [0]))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _next_label() -> tuple[str | None, JobJournal | None]:
    scope = _SCOPE.get()
    if scope is None:
        return None, None
    prefix, journal, counter = scope
    label = f"{prefix}/req-{counter[0]:05d}"
    counter[0] += 1
    return label, journal


# ---------------------------------------------------------------- the model and its backend


def _seed_model_id(path: str) -> None:
    """nnsight canonicalizes a repo id through the hub; a local path has none, and the
    server loads the same path: map it to itself (private nnsight API, wrapped here)."""
    from nnsight.modeling import huggingface

    huggingface._ID_CACHE.setdefault(path, path)


def _transformers_model_class():
    from nnsight.modeling.transformers import TransformersModel

    class RemoteModel(TransformersModel):
        """TransformersModel whose traces always run through the HONES remote backend."""

        def trace(self, *inputs, **kwargs):  # `generate` opens its trace through here too
            kwargs.setdefault("backend", self._hones_session.backend(self))
            return super().trace(*inputs, **kwargs)

        def _remoteable_class(self):
            return TransformersModel  # the server knows the model by nnsight's class

        def __getstate__(self):
            state = super().__getstate__()
            state.pop("_hones_session", None)
            return state

        def __reduce_ex__(self, protocol):
            # ship as a plain TransformersModel: the server has no hones_nn classes to rebuild
            import copyreg

            return (copyreg._reconstructor, (TransformersModel, object, None), self.__getstate__())  # type: ignore[attr-defined]

    return RemoteModel


class RemoteSession:
    """The remote side of one Engine: settings, the model key, counters."""

    def __init__(self, settings: RemoteSettings):
        self.settings = settings
        self.stats = RemoteStats()
        self.model_key: str | None = None
        self.repo_id: str | None = None
        self.local_forwards = 0  # ndif: forwards of the local model (must stay 0; Engine counts them)
        settings.sessions.append(self)

    def assert_no_local_forward(self) -> None:
        if self.local_forwards:
            raise BackendMismatchError(
                f"--remote was asked for, but {self.local_forwards} forward pass(es) of the model ran on this machine "
                f"instead of the NDIF server ({self.stats.requests} request(s) went to the server)"
            )

    def backend(self, model):
        return HonesRemoteBackend(model, self)

    # -------------------------------------------------------------- ndif execution
    def describe_request(self, label: str | None, job_id: str | None) -> str:
        parts = [f"model {self.model_key}", f"host {self.settings.host}"]
        if label:
            parts.append(f"request {label}")
        if job_id:
            parts.append(f"job {job_id}")
        return ", ".join(parts)

    def _sleep_backoff(self, attempt: int) -> None:
        time.sleep(min(30.0, self.settings.backoff_s * (2**attempt)))

    def _submit(self, backend, tracer, label) -> None:
        """POST with retries on transient failures (connection refused, 5xx)."""
        last = None
        for attempt in range(self.settings.max_retries + 1):
            try:
                backend.submit(tracer)
                return
            except Exception as exc:
                if not _transient(exc):
                    raise RemoteRunError(
                        redact(
                            f"the NDIF server refused the request ({self.describe_request(label, None)}): "
                            f"{_message(exc)}"
                        )
                    ) from None
                last = exc
                if attempt < self.settings.max_retries:
                    self.stats.retries += 1
                    self._sleep_backoff(attempt)
        raise RemoteRunError(
            redact(
                f"the NDIF server is unreachable after {self.settings.max_retries + 1} tries "
                f"({self.describe_request(label, None)}): {_message(last)}. Finished shards and submitted job ids are "
                "kept in the run checkpoint: rerun the same command to resume."
            )
        ) from None

    def run_ndif(self, model, tracer) -> dict:
        from nnsight.intervention.backends.remote import RemoteError

        label, journal = _next_label()
        job_id = journal.get(label) if (journal is not None and label) else None
        start = time.perf_counter()
        backend = _counting_backend(self.model_key, self.settings.host, job_id, self.stats)
        reattached = job_id is not None
        if reattached:
            self.stats.reattached += 1
        else:
            self._submit(backend, tracer, label)
            if journal is not None and label:
                journal.put(label, backend.job_id)
        self.stats.requests += 1
        deadline = start + self.settings.timeout_s
        interval, failures, unknown_since, deploying_since = self.settings.poll_s, 0, None, None
        while True:
            try:
                result = backend.poll(tracer)
                failures = 0
            except RemoteError as exc:  # the job failed on the server
                if journal is not None and label:
                    journal.drop(label)
                raise RemoteRunError(
                    redact(
                        f"the NDIF server reported an error for {self.describe_request(label, backend.job_id)}: {exc}"
                    )
                ) from None
            except Exception as exc:
                if not _transient(exc) or failures >= self.settings.max_retries:
                    raise RemoteRunError(
                        redact(
                            f"lost contact with the NDIF server while waiting for "
                            f"{self.describe_request(label, backend.job_id)}: {_message(exc)}. "
                            "The job id is kept in the "
                            "run checkpoint: rerun the same command to re-attach."
                        )
                    ) from None
                self.stats.retries += 1
                self._sleep_backoff(failures)
                failures += 1
                continue
            if result is not None:
                break
            state = getattr(backend.status, "name", str(backend.status))
            if state in ("PROVISIONING", "DEPLOYING"):
                deploying_since = deploying_since or time.perf_counter()
                if time.perf_counter() - deploying_since > self.settings.deploy_timeout_s:
                    if journal is not None and label:
                        journal.drop(label)
                    raise RemoteRunError(
                        redact(
                            f"the NDIF server at {self.settings.host} did not deploy the model within "
                            f"{self.settings.deploy_timeout_s:g} s ({self.describe_request(label, backend.job_id)}, "
                            f"status {state}): it does not host this model, or cannot load it. "
                            "`--dry-run` lists what the server hosts."
                        )
                    )
            else:
                deploying_since = None
            if backend.status is None:  # the server has no record of this job
                unknown_since = unknown_since or time.perf_counter()
                if reattached and time.perf_counter() - unknown_since > self.settings.lost_job_grace_s:
                    # the server was restarted and lost it: submit again (its result was never kept)
                    backend.job_id = None
                    self._submit(backend, tracer, label)
                    if journal is not None and label:
                        journal.put(label, backend.job_id)
                    self.stats.resubmitted += 1
                    reattached, unknown_since = False, None
            if time.perf_counter() > deadline:
                raise RemoteTimeoutError(
                    redact(
                        f"{self.describe_request(label, backend.job_id)} did not finish within "
                        f"{self.settings.timeout_s:g} s "
                        f"(last status: {getattr(backend.status, 'name', backend.status)}). "
                        "Its job id is kept in the run checkpoint: rerun the same command to re-attach."
                    )
                )
            time.sleep(interval)
            interval = min(1.0, interval * 1.5)
        self.stats.latencies.append(time.perf_counter() - start)
        _push_result(result, tracer)
        return result

    def run_local(self, model, tracer) -> None:
        """Rehearsal (``local``) and --dry-run (``plan``): serialize exactly as a remote
        request (bytes up), deserialize with the project's modules hidden, run in-process,
        and measure what the server would send back (the saved values, zstd-compressed)."""
        from nnsight.intervention.backends.local import LocalSimulationBackend
        from nnsight.schema.request import RequestModel

        start = time.perf_counter()
        _next_label()
        # one in-process run at a time: nnsight's interleaver of the one model cannot run traces of
        # several threads at once (--remote-concurrency captures and serializes them in parallel)
        with _IN_PROCESS_LOCK:
            self.stats.bytes_up += len(RequestModel.serialize(tracer, compress=True))
            LocalSimulationBackend(model)(tracer)
            self.stats.requests += 1
            self.stats.latencies.append(time.perf_counter() - start)
            if self.settings.mode == "plan":
                self.stats.bytes_down += _saved_bytes(tracer)


class HonesRemoteBackend(Backend):
    """The nnsight backend of a remote Engine's traces."""

    is_hones_remote = True

    def __init__(self, model, session: RemoteSession):
        self.model = model
        self.session = session

    def __call__(self, tracer):
        if self.session.settings.mode in ("local", "plan"):
            return self.session.run_local(self.model, tracer)
        return self.session.run_ndif(self.model, tracer)


def _counting_backend(model_key, host, job_id, stats: RemoteStats):
    from nnsight.intervention.backends.remote import RemoteBackend

    class _Counting(RemoteBackend):
        def _serialize(self, tracer):
            blob = super()._serialize(tracer)
            stats.bytes_up += len(blob)
            return blob

        def finalize(self, content):
            stats.bytes_down += len(content)
            return super().finalize(content)

    backend = _Counting(model_key, host=host, api_key=api_key() or None, blocking=False, job_id=job_id)
    backend.display.enabled = False
    return backend


def _push_result(result: dict, tracer) -> None:
    from nnsight.tracing.tracer import save
    from nnsight.tracing.util import push

    if not isinstance(result, dict):
        return
    for value in result.values():
        save(value)
    if tracer is not None and tracer.info is not None and tracer.info.frame is not None:
        push(tracer.info.frame, result)


def _saved_bytes(tracer) -> int:
    """Estimated size of what a server would send back for this trace: the raw bytes of
    every saved tensor (and the text of any other saved value), zstd-compressed as the
    server compresses its answer. Nothing is pickled."""
    import torch
    import zstandard
    from nnsight.tracing.tracer import _saves

    frame = tracer.info.frame if tracer.info is not None else None
    if frame is None:
        return 0
    saves = _saves()
    chunks: list[bytes] = []

    def collect(value) -> None:
        if isinstance(value, torch.Tensor):
            chunks.append(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)
        else:
            chunks.append(repr(value).encode())

    for value in frame.f_locals.values():
        if id(value) in saves:
            collect(value)
    return len(zstandard.ZstdCompressor(level=3).compress(b"".join(chunks)))


def _message(exc) -> str:
    if exc is None:
        return "no answer"
    text = str(exc) or type(exc).__name__
    return text


def _transient(exc) -> bool:
    """Connection problems and 5xx answers are retried; anything else is final."""
    import httpx

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, httpx.HTTPStatusError):
            return exc.response.status_code >= 500
        exc = exc.__cause__ or exc.__context__
    return False


def build_remote_model(loaded, session: RemoteSession):
    """nnsight TransformersModel of ``loaded`` whose traces go through ``session``.

    ``ndif``: built from the repo id or local path (meta weights: the server holds the
    real ones). ``local`` rehearsal: wraps the loaded module, so it runs on real weights."""
    from hones_nn.models.loading import resolve_model_path

    cls = _transformers_model_class()
    path, local = resolve_model_path(loaded.model_id)
    task = "image-text-to-text"
    if local:
        path = str(Path(path).resolve())
        _seed_model_id(path)
    if session.settings.mode in ("local", "plan"):
        model = cls(loaded.model, task=task, processor=loaded.processor)
        model.repo_id = path  # the key a server would be asked for
    else:
        model = cls(path, task=task, processor=loaded.processor, revision=None)
    model.__dict__["_hones_session"] = session
    session.repo_id = path
    try:
        session.model_key = model.to_model_key()
    except Exception:
        if session.settings.mode == "ndif":
            raise
    _register_project_modules()
    return model


def _register_project_modules() -> None:
    """Ship hones_nn's functions and classes (interventions, adapters) by value."""
    import nnsight

    nnsight.register("hones_nn")


# ---------------------------------------------------------------- server checks


def server_status(host: str, timeout: float = 10.0) -> dict:
    import httpx

    headers = {"ndif-api-key": api_key()} if api_key() else None
    try:
        response = httpx.get(f"{host}/status", headers=headers, timeout=timeout)
        response.raise_for_status()
        return response.json()
    except Exception as exc:
        raise RemoteRunError(redact(f"cannot read the NDIF server's status at {host}: {_message(exc)}")) from None


def check_server(host: str, timeout: float = 10.0) -> None:
    import httpx

    try:
        response = httpx.get(f"{host}/connected", timeout=timeout)
        response.raise_for_status()
    except Exception as exc:
        raise RemoteRunError(redact(f"no NDIF server answers at {host}: {_message(exc)}")) from None


def model_hosted(host: str, model_key: str, repo_id: str) -> tuple[bool, str]:
    """(whether the server lists the model among its deployments, a message)."""
    status = server_status(host)
    deployments = status.get("deployments", {}) if isinstance(status, dict) else {}
    for entry in deployments.values():
        if entry.get("model_key") == model_key or entry.get("repo_id") == repo_id:
            return True, (
                f"the server hosts {repo_id} ({entry.get('application_state', '?')}, "
                f"{entry.get('deployment_level', '?')})"
            )
    listed = sorted({str(e.get("repo_id")) for e in deployments.values()})
    return False, (
        f"the NDIF server at {host} does not host {repo_id} now (it hosts: "
        f"{', '.join(listed) or 'nothing'}). A server that deploys on request will try to load it on the "
        "first request; one that cannot will leave the request deploying until --remote-timeout."
    )


def summary_lines(settings: RemoteSettings) -> list[str]:
    """What a remote run (or --dry-run) cost, for the command's closing lines."""
    total = RemoteStats()
    for session in settings.sessions:
        st = session.stats
        total.requests += st.requests
        total.reattached += st.reattached
        total.resubmitted += st.resubmitted
        total.retries += st.retries
        total.bytes_up += st.bytes_up
        total.bytes_down += st.bytes_down
        total.latencies.extend(st.latencies)
    d = total.as_dict()
    if settings.mode == "plan":
        return [
            f"dry run: {d['requests']} request(s) to {settings.host}, about {d['bytes_up'] / 1e6:.2f} MB up and "
            f"{d['bytes_down'] / 1e6:.2f} MB down (nothing was sent)"
        ]
    return [
        f"remote ({settings.mode}, {settings.host or 'in-process'}): {d['requests']} request(s), "
        f"{d['bytes_up'] / 1e6:.2f} MB up, {d['bytes_down'] / 1e6:.2f} MB down, median latency "
        f"{d['latency_median_s']} s, {d['reattached']} re-attached, {d['resubmitted']} resubmitted, "
        f"{d['retries']} retries"
    ]
