"""Remote execution of the recipes' traces on NDIF (``--remote``).

Every recipe runs its traces through ``Engine.envoy`` (``with engine.envoy.trace(...)``).
For a remote run that envoy is a :class:`RemoteModel`: nnsight's ``TransformersModel``
built from the model's repo id or local path (a bare ``NNsight(module)`` ignores
``remote=True`` without a word), whose ``trace`` / ``generate`` always hand the block
to a :class:`HonesRemoteBackend`. Call sites do not change.

The backend, per trace:

* serializes the block once (the processor-batched encoding of many examples, the
  closures of the interventions; only the few ``.save()``d tensors come back);
* ``mode="ndif"``: before the first request, reads the server's status and environment
  as nnsight does (``/status``, ``/env``; never ``/connected``) and reports Python and
  package drift (:func:`preflight`); submits the block **non-blocking**
  (``POST /request``; connection errors, 5xx and 429 retried with exponential backoff
  and full jitter, or after the server's ``Retry-After``, until ``retry_budget_s`` is
  spent; other 4xx final), records the job id in the run's
  :class:`JobJournal` (inside the checkpoint folder of the :class:`ShardedRun`), then
  polls ``GET /response/{id}`` until COMPLETED (transient poll errors retried), and
  pushes the saved values into the caller's frame like nnsight's blocking path. A
  restarted run finds the job id under the same label and re-attaches instead of
  resubmitting; a job the server no longer knows (the server was restarted) is
  resubmitted after ``lost_job_grace_s``; a COMPLETED job whose result URL has expired
  (the object store answers 403 / 404: a re-attach after the URL's lifetime) is
  resubmitted once (``resubmitted_expired``). A server-side error raises
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
import email.utils
import json
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hones_nn.engine.nnsight_compat import Backend

MODES = ("ndif", "local", "plan")
DEFAULT_HOST = "http://127.0.0.1:8001"

# in-process runs (rehearsal, --dry-run) of concurrent shards, one at a time
_IN_PROCESS_LOCK = threading.Lock()

# the label scope of the current requests (set by ShardedRun per shard) and its journal
_SCOPE: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("hones_remote_scope", default=None)


# --dry-run: the stand-in values of the next request's saved names, for a block that cannot
# run on fake tensors (a generation's decode loop stops on the values it produces)
_PLAN_STANDINS: contextvars.ContextVar = contextvars.ContextVar("hones_plan_standins", default=None)


@contextlib.contextmanager
def plan_standins(make) -> Iterator[None]:
    """Inside the block, a dry-run request does not execute: ``make()`` gives the values
    (a {name: value} dict of the caller's saved names) the server would send back, of the
    same shapes; a real remote run ignores it."""
    token = _PLAN_STANDINS.set(make)
    try:
        yield
    finally:
        _PLAN_STANDINS.reset(token)


def _tensor_bytes(value) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class RemoteRunError(RuntimeError):
    """A remote request failed (server error, unreachable server, model not hosted)."""


class RemoteTimeoutError(RemoteRunError):
    """A remote job did not finish in time; its id stays in the checkpoint for a rerun."""


class ResultExpiredError(RemoteRunError):
    """A COMPLETED job's result can no longer be downloaded (its presigned URL expired)."""


class BackendMismatchError(RuntimeError):
    """``--remote`` was asked for but the traces did not run through the remote backend."""


class RemoteServerWarning(UserWarning):
    """Before the first request of a run through the API: the client's Python or packages
    differ from the NDIF server's, or its status could not be read (reported, not fatal)."""


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
    # transient failures (connection errors, 5xx, 429) of a submit or a poll are retried until
    # this many seconds have passed since the first failure of the streak (--remote-retry-budget)
    retry_budget_s: float = 600.0
    max_retries: int | None = None  # an optional cap on retries per streak (None: the budget alone)
    backoff_s: float = 0.5  # ceiling of the first backoff; doubles per retry up to backoff_max_s
    backoff_max_s: float = 60.0  # each wait is drawn uniformly below the ceiling (full jitter)
    poll_s: float = 0.05  # first poll interval; grows 1.5x to 1 s
    lost_job_grace_s: float = 15.0  # a journaled job unknown to the server this long is resubmitted
    deploy_timeout_s: float = 300.0  # a model still provisioning / deploying after this is taken as not hosted
    # injectable for tests: how the retries wait, read the time and draw their jitter
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    rng: random.Random = field(default_factory=random.Random, repr=False)
    # whether the server's status and environment were read (versions drift reported) for this run
    preflight_done: bool = False
    concurrency: int = 4  # shards (their requests) in flight at once (--remote-concurrency; 1 = sequential)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown remote mode {self.mode!r}; use one of {', '.join(MODES)}")
        if not self.retry_budget_s >= 0:
            raise ValueError(
                f"--remote-retry-budget must be 0 or more seconds, not {self.retry_budget_s!r} "
                "(0: a transient failure is not retried)"
            )
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
    resubmitted_expired: int = 0  # journaled jobs whose result URL had expired, submitted again
    retries: int = 0
    retry_wait_s: float = 0.0  # seconds slept between retries
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_up_max: int = 0  # the largest single request
    latencies: list[float] = field(default_factory=list)

    def sent(self, size: int) -> None:
        self.bytes_up += size
        self.bytes_up_max = max(self.bytes_up_max, size)

    def as_dict(self) -> dict:
        lat = sorted(self.latencies)
        return {
            "requests": self.requests,
            "reattached": self.reattached,
            "resubmitted": self.resubmitted,
            "resubmitted_expired": self.resubmitted_expired,
            "retries": self.retries,
            "retry_wait_s": round(self.retry_wait_s, 3),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "bytes_up_max": self.bytes_up_max,
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
    from hones_nn.engine.nnsight_compat import seed_model_id

    seed_model_id(path)


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


class _Retry:
    """One streak of transient failures (of a submit, or of the polls of one job).

    Each retry waits a time drawn uniformly in [0, min(backoff_max_s, backoff_s * 2**k)]
    ("full jitter": clients that failed together do not come back together), or exactly the
    server's ``Retry-After`` when it sends one (a 503 or 429 that says "in N seconds").
    The streak gives up once ``retry_budget_s`` has passed since its first failure, or when
    the server asks for a wait longer than what is left of it."""

    def __init__(self, session: RemoteSession):
        self.session = session
        self.tries = 0
        self.started: float | None = None
        self.refused_after: float | None = None  # a Retry-After beyond the budget

    def reset(self) -> None:
        self.tries, self.started = 0, None

    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.session.settings.clock() - self.started

    def wait(self, exc: BaseException) -> bool:
        """Sleep before the next try; False when the budget is spent (the failure is final)."""
        settings, stats = self.session.settings, self.session.stats
        now = settings.clock()
        if self.started is None:
            self.started = now
        self.tries += 1
        left = settings.retry_budget_s - (now - self.started)
        if left <= 0 or (settings.max_retries is not None and self.tries > settings.max_retries):
            return False
        retry_after = _retry_after(exc)
        if retry_after is not None:
            if retry_after > left:
                self.refused_after = retry_after
                return False
            delay = retry_after
        else:
            ceiling = min(settings.backoff_max_s, settings.backoff_s * 2 ** (self.tries - 1))
            delay = min(left, settings.rng.uniform(0.0, ceiling))
        settings.sleep(delay)
        stats.retries += 1
        stats.retry_wait_s += delay
        return True


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

    def _give_up(self, retry: _Retry, label, job_id, exc, what: str) -> RemoteRunError:
        waited = f"{retry.tries} tries over {retry.elapsed():.1f} s"
        if retry.refused_after is not None:
            why = (
                f"the server asked to retry in {retry.refused_after:g} s, beyond what is left of the retry "
                f"budget ({self.settings.retry_budget_s:g} s, --remote-retry-budget)"
            )
        else:
            why = f"retry budget {self.settings.retry_budget_s:g} s (--remote-retry-budget)"
        return RemoteRunError(
            redact(
                f"the NDIF server is unreachable after {waited} ({why}; {self.describe_request(label, job_id)}): "
                f"{_message(exc)}. {what}"
            )
        )

    def _submit(self, backend, tracer, label) -> None:
        """POST, retrying transient failures (connection errors, 5xx, 429) with jittered
        exponential backoff or the server's Retry-After, within the retry budget."""
        retry = _Retry(self)
        while True:
            try:
                backend.submit(tracer)
                return
            except Exception as exc:
                refused = _key_refused(exc, self.settings.host)
                if refused:  # 400 / 401 / 403: final, the key must change first
                    raise RemoteRunError(redact(refused)) from None
                if not _transient(exc):
                    raise RemoteRunError(
                        redact(
                            f"the NDIF server refused the request ({self.describe_request(label, None)}): "
                            f"{_message(exc)}"
                        )
                    ) from None
                if not retry.wait(exc):
                    raise self._give_up(
                        retry,
                        label,
                        None,
                        exc,
                        "Finished shards and submitted job ids are kept in the run checkpoint: rerun the same "
                        "command to resume.",
                    ) from None

    def _resubmit(self, backend, tracer, label, journal) -> None:
        backend.job_id = None
        backend.status = None
        if journal is not None and label:
            journal.drop(label)
        self._submit(backend, tracer, label)
        if journal is not None and label:
            journal.put(label, backend.job_id)

    def run_ndif(self, model, tracer) -> dict:
        from hones_nn.engine.nnsight_compat import RemoteError

        if not self.settings.preflight_done:
            for line in preflight(self.settings, strict=False):
                warnings.warn(line, RemoteServerWarning, stacklevel=2)
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
        interval, unknown_since, deploying_since = self.settings.poll_s, None, None
        retry, expired_resubmitted = _Retry(self), False
        while True:
            try:
                result = backend.poll(tracer)
                retry.reset()
            except ResultExpiredError as exc:
                # the job finished long ago (a re-attach after the URL's lifetime): run it again, once
                if expired_resubmitted:
                    if journal is not None and label:
                        journal.drop(label)
                    raise RemoteRunError(
                        redact(
                            f"the result of {self.describe_request(label, backend.job_id)} expired again right "
                            f"after it was resubmitted: {exc}"
                        )
                    ) from None
                expired_resubmitted = True
                self._resubmit(backend, tracer, label, journal)
                self.stats.resubmitted_expired += 1
                reattached, unknown_since, deploying_since = False, None, None
                deadline = time.perf_counter() + self.settings.timeout_s
                continue
            except RemoteError as exc:  # the job failed on the server
                if journal is not None and label:
                    journal.drop(label)
                raise RemoteRunError(
                    redact(
                        f"the NDIF server reported an error for {self.describe_request(label, backend.job_id)}: {exc}"
                    )
                ) from None
            except Exception as exc:
                if not _transient(exc):
                    raise RemoteRunError(
                        redact(
                            f"lost contact with the NDIF server while waiting for "
                            f"{self.describe_request(label, backend.job_id)}: {_message(exc)}. "
                            "The job id is kept in the run checkpoint: rerun the same command to re-attach."
                        )
                    ) from None
                if not retry.wait(exc):
                    raise self._give_up(
                        retry,
                        label,
                        backend.job_id,
                        exc,
                        "The job id is kept in the run checkpoint: rerun the same command to re-attach.",
                    ) from None
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
                            "`hones-nn remote check --model ...` shows what the server hosts and in which state."
                        )
                    )
            else:
                deploying_since = None
            if backend.status is None:  # the server has no record of this job
                unknown_since = unknown_since or time.perf_counter()
                if reattached and time.perf_counter() - unknown_since > self.settings.lost_job_grace_s:
                    # the server was restarted and lost it: submit again (its result was never kept)
                    self._resubmit(backend, tracer, label, journal)
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
        """Rehearsal (``local``): serialize exactly as a remote request (bytes up),
        deserialize with the project's modules hidden (an installed ``hones_nn`` too: code
        not shipped by value fails here as it would on the server), run in-process on the
        real weights."""
        from hones_nn.engine.nnsight_compat import LocalSimulationBackend, RequestModel

        start = time.perf_counter()
        _next_label()
        # one in-process run at a time: nnsight's interleaver of the one model cannot run traces of
        # several threads at once (--remote-concurrency captures and serializes them in parallel)
        with _IN_PROCESS_LOCK:
            self.stats.sent(len(RequestModel.serialize(tracer, compress=True)))
            with _project_hidden():
                LocalSimulationBackend(model)(tracer)
            self.stats.requests += 1
            self.stats.latencies.append(time.perf_counter() - start)

    def run_plan(self, model, tracer) -> None:
        """--dry-run (``plan``): serialize the request exactly as it would be sent (bytes
        up, nothing sent), run the block on the meta-device model under fake tensors as
        nnsight's ``scan`` does (shapes only: no weights, no compute), size what the server
        would send back from the saved values' shapes, and hand the caller stand-in values
        of those shapes so the run goes on to its next request. The stand-ins are seeded
        noise: the run's tables mean nothing and a dry run writes none."""
        start = time.perf_counter()
        _next_label()
        with _IN_PROCESS_LOCK:  # as run_local: one in-process run at a time
            self._plan_locked(tracer, start)

    def _plan_locked(self, tracer, start: float) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        from hones_nn.engine.nnsight_compat import RequestModel

        self.stats.sent(len(RequestModel.serialize(tracer, compress=True)))
        standins = _PLAN_STANDINS.get()
        if standins is not None:  # a generation: its decode loop cannot run on fake tensors
            values = standins()
            self.stats.bytes_down += _tensor_bytes(values)
            _push_result(values, tracer)
        else:
            with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv(assume_static_by_default=True)):
                tracer.execute(tracer.info.code)
            self.stats.bytes_down += _realize_saved(tracer, self.stats.requests)
        self.stats.requests += 1
        self.stats.latencies.append(time.perf_counter() - start)


class HonesRemoteBackend(Backend):
    """The nnsight backend of a remote Engine's traces."""

    is_hones_remote = True

    def __init__(self, model, session: RemoteSession):
        self.model = model
        self.session = session

    def __call__(self, tracer):
        if self.session.settings.mode == "plan":
            return self.session.run_plan(self.model, tracer)
        if self.session.settings.mode == "local":
            return self.session.run_local(self.model, tracer)
        return self.session.run_ndif(self.model, tracer)


def _counting_backend(model_key, host, job_id, stats: RemoteStats):
    import httpx

    from hones_nn.engine.nnsight_compat import RemoteBackend

    class _Counting(RemoteBackend):
        def download_result(self, url):
            # nnsight GETs the presigned URL of a COMPLETED job with raise_for_status(): once the
            # URL (or the object behind it) has expired, the object store answers 403 or 404
            try:
                return super().download_result(url)
            except httpx.HTTPStatusError as exc:
                if isinstance(url, str) and exc.response.status_code in (403, 404):
                    raise ResultExpiredError(
                        f"the result of job {self.job_id} can no longer be downloaded "
                        f"(HTTP {exc.response.status_code} from the object store: its URL expired)"
                    ) from exc
                raise

        def _serialize(self, tracer):
            blob = super()._serialize(tracer)
            stats.sent(len(blob))
            return blob

        def finalize(self, content):
            stats.bytes_down += len(content)
            return super().finalize(content)

    backend = _Counting(model_key, host=host, api_key=api_key() or None, blocking=False, job_id=job_id)
    backend.display.enabled = False
    return backend


def _push_result(result: dict, tracer) -> None:
    from nnsight import save

    from hones_nn.engine.nnsight_compat import push

    if not isinstance(result, dict) or tracer is None:  # no trace to hand the values to
        return
    for value in result.values():
        save(value)
    if tracer is not None and tracer.info is not None and tracer.info.frame is not None:
        push(tracer.info.frame, result)


def _realize_saved(tracer, seed: int) -> int:
    """Replace the fake tensors a plan-mode block left in the caller's frame (saved
    values, and the lists / dicts holding them) by real tensors of the same shape and
    dtype: seeded standard-normal floats, integers in [0, 2); return their size in bytes
    as the server would send them (raw, before compression: an upper bound)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor

    from hones_nn.engine.nnsight_compat import push

    frame = tracer.info.frame if tracer.info is not None else None
    if frame is None:
        return 0
    generator = torch.Generator().manual_seed(1_000_003 + seed)
    total = [0]

    def real(value):
        if isinstance(value, FakeTensor):
            total[0] += value.numel() * value.element_size()
            if value.dtype.is_floating_point:
                return torch.randn(tuple(value.shape), generator=generator).to(value.dtype)
            if value.dtype == torch.bool:
                return torch.zeros(tuple(value.shape), dtype=torch.bool)
            return torch.randint(0, 2, tuple(value.shape), generator=generator).to(value.dtype)
        if isinstance(value, list):
            value[:] = [real(v) for v in value]
            return value
        if isinstance(value, dict):
            for key in list(value):
                value[key] = real(value[key])
            return value
        if isinstance(value, tuple):
            return type(value)(real(v) for v in value) if not hasattr(value, "_fields") else value
        return value

    changed = {}
    for name, value in list(frame.f_locals.items()):
        if isinstance(value, (FakeTensor, list, dict, tuple)):
            new = real(value)
            if new is not value:
                changed[name] = new
    if changed:
        push(frame, changed)
        from hones_nn.engine.nnsight_compat import mark

        for value in changed.values():
            mark(value)
    return total[0]


@contextlib.contextmanager
def _project_hidden() -> Iterator[None]:
    """While deserializing a rehearsed request, make ``hones_nn`` unimportable, as on a
    server that does not have it installed (nnsight's rehearsal hides the project's
    folders from ``sys.path`` but an installed package is found again by its finder)."""
    import importlib.abc
    import sys

    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname == "hones_nn" or fullname.startswith("hones_nn."):
                raise ModuleNotFoundError(
                    f"No module named {fullname!r} (hidden: the NDIF server does not have hones_nn installed)"
                )
            return None

    blocker = _Blocker()
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)


_KEY_FIX = (
    "set NDIF_API_KEY, or save it in nnsight's config "
    "(python -c \"import nnsight; nnsight.CONFIG.set_default_api_key('<key>')\"); keys: https://login.ndif.us"
)


def _key_source() -> str:
    return "NDIF_API_KEY" if os.environ.get("NDIF_API_KEY") else "nnsight's config (CONFIG.API.APIKEY)"


def _key_refused(exc, host: str | None) -> str | None:
    """One line for an API key the server refused (401 none sent, 400 not a UUID, 403 unknown),
    naming where the key comes from and how to set it; never the key itself. None otherwise."""
    import httpx

    for cause in _causes(exc):
        if isinstance(cause, httpx.HTTPStatusError):
            code = cause.response.status_code
            about_key = "api key" in cause.response.text.lower()  # NDIF's detail for 400 / 403 on a key
            if code == 401 and not api_key():
                return f"the NDIF server at {host} requires an API key and none was sent (HTTP 401): {_KEY_FIX}"
            if code == 401:
                return f"the NDIF server at {host} refused the API key from {_key_source()} (HTTP 401): {_KEY_FIX}"
            if code == 400 and about_key and api_key():
                return (
                    f"the NDIF server at {host} rejected the API key from {_key_source()} as malformed (HTTP 400): "
                    f"a key looks like xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx; {_KEY_FIX}"
                )
            if code == 403 and about_key and api_key():
                return (
                    f"the NDIF server at {host} does not know the API key from {_key_source()} (HTTP 403): "
                    f"check it, or {_KEY_FIX}"
                )
            return None
    return None


def _message(exc) -> str:
    if exc is None:
        return "no answer"
    text = str(exc) or type(exc).__name__
    return text


def _causes(exc) -> Iterator[BaseException]:
    """``exc`` and what it was raised from (nnsight wraps httpx errors in RemoteError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _transient(exc) -> bool:
    """Connection problems, 5xx and 429 answers are retried; anything else (other 4xx, an
    expired result URL) is final."""
    import httpx

    for cause in _causes(exc):
        if isinstance(cause, ResultExpiredError):
            return False
        if isinstance(cause, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        if isinstance(cause, httpx.HTTPStatusError):
            code = cause.response.status_code
            return code >= 500 or code == 429
    return False


def _retry_after(exc) -> float | None:
    """The seconds of the answer's ``Retry-After`` header (delay-seconds or an HTTP date)."""
    import httpx

    for cause in _causes(exc):
        if isinstance(cause, httpx.HTTPStatusError):
            value = cause.response.headers.get("Retry-After")
            if not value:
                return None
            value = value.strip()
            if value.isdigit():
                return float(value)
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            return max(0.0, when.timestamp() - time.time())
    return None


def build_remote_model(loaded, session: RemoteSession):
    """nnsight TransformersModel of ``loaded`` whose traces go through ``session``.

    ``ndif`` and ``plan`` (--dry-run): nnsight's model built from the repo id or local
    path, never dispatched: meta weights (the server holds the real ones; a dry run
    executes on fake tensors). ``local`` rehearsal: wraps the loaded module, so it runs on
    real weights."""
    from hones_nn.models.loading import resolve_model_path

    cls = _transformers_model_class()
    path, local = resolve_model_path(loaded.model_id)
    task = "image-text-to-text"
    if local:
        path = str(Path(path).resolve())
        _seed_model_id(path)
    if session.settings.mode == "local":
        model = cls(loaded.model, task=task, processor=loaded.processor)
        model.repo_id = path  # the key a server would be asked for
    else:
        model = cls(path, task=task, processor=loaded.processor, revision=remote_revision(loaded, local))
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
#
# As nnsight itself checks a server (nnsight.status / nnsight.is_model_running /
# nnsight.compare, through hones_nn.engine.nnsight_compat): GET /status for the service and
# its deployments, GET /env for the server's Python and packages. Never /connected (NDIF
# answers 503 there while reconnecting; newer NDIF has no such route).

# the states of a model on the server, as `model_state` names them
RUNNING, DEPLOYING, COLD, UNHEALTHY, OTHER_REVISION, ABSENT = (
    "running",
    "deploying",
    "cold",
    "unhealthy",
    "other-revision",
    "absent",
)


def remote_revision(loaded, local: bool) -> str | None:
    """The revision the model key names.

    A hub id: the revision the user asked for (``LoadedModel.requested_revision``: a
    branch, tag or commit), else ``"main"``, as nnsight reads a deployment without one
    (``nnsight.is_model_running``'s default). Not the commit it resolved to: NDIF lists
    its deployments by the revision they were deployed at ("main"), and a key naming a
    commit hash would ask for another deployment. The resolved commit stays in the
    tables' metadata. A local path: None, since a folder has no git revision and the
    server loads the same path (its deployments of a path report none, read as "main")."""
    if local:
        return None
    return getattr(loaded, "requested_revision", None) or "main"


def server_status(host: str, timeout: float = 10.0) -> dict:
    """The server's raw ``/status`` (its deployments), read as nnsight reads it."""
    from hones_nn.engine.nnsight_compat import fetch_status

    try:
        status = fetch_status(host, api_key() or None, timeout=timeout)
    except Exception as exc:  # any failure to read it is the one error below, with its reason
        raise RemoteRunError(redact(f"no NDIF server answers at {host}: {_message(exc)}")) from None
    if not isinstance(status, dict):
        raise RemoteRunError(f"the NDIF server at {host} answered /status with {type(status).__name__}, not a mapping")
    return status


def check_server(host: str, timeout: float = 10.0) -> dict:
    """A clear error when no NDIF server answers at ``host``; its status otherwise."""
    return server_status(host, timeout=timeout)


def service_line(host: str, status: dict) -> str:
    """One line on the service: its deployments by state, as ``nnsight.status()`` folds them."""
    from hones_nn.engine.nnsight_compat import deployed_levels

    deployments = status.get("deployments") or {}
    live = [d for d in deployments.values() if d.get("deployment_level") in deployed_levels()]
    running = sum(d.get("application_state") == "RUNNING" for d in live)
    verdict = (
        "up" if running else ("redeploying" if any(d.get("application_state") == "DEPLOYING" for d in live) else "down")
    )
    return (
        f"NDIF server at {host}: {verdict} ({running} of {len(live)} deployed model(s) running, "
        f"{len(deployments) - len(live)} cold)"
    )


def drift_lines(comparison) -> list[str]:
    """Python and package drift between this client and the server (nnsight's EnvComparison):
    critical packages (nnsight, torch, transformers, as nnsight flags them) by name, others
    counted. Only packages installed on both sides count."""
    lines = []
    if not comparison.python_matches:
        lines.append(f"Python {comparison.local_python} here, {comparison.remote_python} on the server")
    both = {p: v for p, v in comparison.mismatches.items() if v["local"] != "-"}
    critical = {p: v for p, v in both.items() if v["critical"]}
    if critical:
        lines.append(
            "package drift that nnsight flags as critical: "
            + ", ".join(f"{p} {v['local']} here / {v['remote']} on the server" for p, v in sorted(critical.items()))
        )
    others = sorted(p for p in both if p not in critical)
    if others:
        shown = ", ".join(f"{p} {both[p]['local']}/{both[p]['remote']}" for p in others[:5])
        lines.append(
            f"{len(others)} other package(s) differ from the server's (here/server): {shown}"
            + (", ..." if len(others) > 5 else "")
        )
    return lines


def environment_lines(host: str) -> list[str]:
    """Version drift lines for ``host``; a line saying why when the server does not report
    its environment (``/env``). Warnings, never errors: nnsight 0.8 has no client-side
    verdict of incompatibility; a server that gates client versions refuses the first
    request with its reason (a final 4xx, shown as the error)."""
    import httpx

    from hones_nn.engine.nnsight_compat import fetch_env

    try:
        comparison = fetch_env(host)
    except (httpx.HTTPError, ValueError, KeyError, AttributeError) as exc:
        return [f"cannot compare versions with the server (GET /env: {redact(_message(exc))})"]
    return drift_lines(comparison)


def preflight(settings: RemoteSettings, strict: bool = True) -> list[str]:
    """Before the first request: the server answers (``strict``: else a clear error), and the
    version drift between this client and it, as warning lines. Runs once per settings."""
    settings.preflight_done = True
    try:
        check_server(settings.host or resolve_host())
    except RemoteRunError as exc:
        if strict:
            raise
        return [f"{exc} (requests are still tried, with retries)"]
    return [f"version drift: {line}" for line in environment_lines(settings.host or resolve_host())]


def _key_parts(model_key: str) -> tuple[str | None, str | None]:
    """(repo_id, revision) from nnsight's ``"import.path.Class:{json}"`` model key."""
    try:
        data = json.loads(model_key.split(":", 1)[1])
    except (IndexError, ValueError):
        return None, None
    return data.get("repo_id"), data.get("revision")


def model_state(
    status: dict, repo_id: str, revision: str | None = None, model_key: str | None = None
) -> tuple[str, dict | None]:
    """The state of a model among the server's deployments, and its healthiest entry.

    Matched as ``nnsight.is_model_running`` matches (the repo id, the revision with None read
    as "main"), or by the exact model key. ``running``: a HOT/WARM replica is RUNNING (usable);
    ``deploying``: one is DEPLOYING / NOT_STARTED; ``unhealthy``: its replicas are UNHEALTHY;
    ``cold``: downloaded, not deployed (a server that deploys on request loads it on the first
    request, which waits); ``other-revision``: hosted at another revision only; ``absent``."""
    from hones_nn.engine.nnsight_compat import deployed_levels

    want = revision or "main"
    entries: list[dict] = []
    other_revisions: list[dict] = []
    for entry in (status.get("deployments") or {}).values():
        if model_key is not None and entry.get("model_key") == model_key:
            entries.append(entry)
        elif entry.get("repo_id") == repo_id:
            (entries if (entry.get("revision") or "main") == want else other_revisions).append(entry)
    if not entries:
        return (OTHER_REVISION, other_revisions[0]) if other_revisions else (ABSENT, None)
    level_rank = {"HOT": 0, "WARM": 1}
    state_rank = {"RUNNING": 0, "DEPLOYING": 1, "NOT_STARTED": 2, "UNHEALTHY": 3}
    best = min(
        entries,
        key=lambda e: (
            e.get("deployment_level") not in deployed_levels(),
            state_rank.get(e.get("application_state", "UNHEALTHY"), 9),
            level_rank.get(str(e.get("deployment_level")), 9),
        ),
    )
    if best.get("deployment_level") not in deployed_levels():
        return COLD, best
    state = best.get("application_state", "UNHEALTHY")
    if state == "RUNNING":
        return RUNNING, best
    if state in ("DEPLOYING", "NOT_STARTED"):
        return DEPLOYING, best
    return UNHEALTHY, best


def model_hosted(
    host: str, model_key: str | None, repo_id: str, revision: str | None = None, status: dict | None = None
) -> tuple[bool, str]:
    """(whether the server runs the model now, a message naming its state). The repo id and
    revision come from ``model_key`` when given (nnsight's key), else from the arguments."""
    status = server_status(host) if status is None else status
    if model_key:
        key_repo, revision = _key_parts(model_key)
        repo_id = key_repo or repo_id
    state, entry = model_state(status, repo_id, revision, model_key)
    at = f"{repo_id} (revision {revision or 'main'})"
    level = f"{(entry or {}).get('application_state', '?')}, {(entry or {}).get('deployment_level', '?')}"
    if state == RUNNING:
        return True, f"the server hosts {at} and it is running ({level})"
    if state == DEPLOYING:
        return False, f"the server is deploying {at} ({level}): not running yet; requests wait until it is"
    if state == UNHEALTHY:
        return False, f"the server's deployment of {at} is unhealthy ({level}): requests would fail or hang"
    if state == COLD:
        return False, (
            f"the server has {at} downloaded but not deployed (cold): a server that deploys on request loads it "
            "on the first request, which waits until then"
        )
    listed = sorted({str(e.get("repo_id")) for e in (status.get("deployments") or {}).values()})
    if state == OTHER_REVISION:
        return False, (
            f"the server hosts {repo_id} only at revision {(entry or {}).get('revision') or 'main'}, not at "
            f"{revision or 'main'}"
        )
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
        total.resubmitted_expired += st.resubmitted_expired
        total.retries += st.retries
        total.retry_wait_s += st.retry_wait_s
        total.bytes_up += st.bytes_up
        total.bytes_down += st.bytes_down
        total.bytes_up_max = max(total.bytes_up_max, st.bytes_up_max)
        total.latencies.extend(st.latencies)
    d = total.as_dict()
    if settings.mode == "plan":
        return [
            f"dry run: {d['requests']} request(s) to {settings.host}, about {d['bytes_up'] / 1e6:.3f} MB up "
            f"(largest {d['bytes_up_max'] / 1e6:.3f} MB) and {d['bytes_down'] / 1e6:.3f} MB down (nothing was sent)"
        ]
    return [
        f"remote ({settings.mode}, {settings.host or 'in-process'}): {d['requests']} request(s), "
        f"{d['bytes_up'] / 1e6:.2f} MB up, {d['bytes_down'] / 1e6:.2f} MB down, median latency "
        f"{d['latency_median_s']} s, {d['reattached']} re-attached, {d['resubmitted']} resubmitted, "
        f"{d['resubmitted_expired']} resubmitted after their result expired, "
        f"{d['retries']} retries ({d['retry_wait_s']:g} s waited)"
    ]
