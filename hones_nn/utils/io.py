"""Atomic file writes (a temp file in the same folder, fsync, then rename: a run killed
mid-write leaves either the old file or the new one, never half of one), and the one
safetensors reader of the files we write (steering scales, edits).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temp_path)`` and move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary shareable files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return atomic_write_with(path, write)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_safetensors(path: str | os.PathLike, label: str, hint: str = "") -> tuple[dict, dict[str, str]]:
    """(tensors, string metadata) of a safetensors file; a ValueError naming ``label`` (and
    ending with ``hint``, e.g. how to make a good file) when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})  # noqa: SIM118
    except Exception as exc:
        raise ValueError(f"{label} is not a readable safetensors file ({exc}){hint}") from None


def check_output_path(path: str | os.PathLike, option: str = "--out") -> Path:
    """A clear error, before any work, unless a table can be written to ``path``: it must not
    be a directory, and its folder must exist or be creatable and be writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is an existing directory; give a file name (e.g. {path / 'scores.parquet'})")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"cannot create the output folder {folder} for {option} ({exc.strerror or exc}); "
            "choose a folder you can write to"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".hones-write-check-")
    except OSError as exc:
        raise ValueError(
            f"the output folder {folder} of {option} is not writable ({exc.strerror or exc}); "
            "choose a folder you can write to, or fix its permissions"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class OutputLock:
    """A lock file ``PATH.lock`` (holding the writer's pid) around the run that writes ``path``.

    A second process that would write the same output stops with a message naming the pid
    that holds it (``wait=0``) or waits up to ``wait`` seconds for it; a lock left by a
    process that no longer runs is taken over."""

    def __init__(self, path: str | os.PathLike, wait: float = 0.0, poll: float = 1.0):
        self.path = Path(path)
        self.lock = self.path.with_name(self.path.name + ".lock")
        self.wait = wait
        self.poll = poll
        self._held = False

    def _holder(self) -> int | None:
        try:
            text = self.lock.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return int(text.split()[0])
        except (ValueError, IndexError):
            return None

    def acquire(self) -> None:
        import time

        deadline = time.monotonic() + self.wait
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._holder()
                if pid is None or not _pid_alive(pid):  # stale: its writer died
                    self.lock.unlink(missing_ok=True)
                    continue
                if time.monotonic() >= deadline:
                    raise ValueError(
                        f"another hones-nn process (pid {pid}) is writing {self.path} (lock {self.lock}); wait "
                        "for it to finish (its finished work is reused when you rerun), or give another "
                        "--out / --out-dir"
                    ) from None
                time.sleep(self.poll)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            self._held = True
            return

    def release(self) -> None:
        if self._held:
            self._held = False
            if self._holder() == os.getpid():
                self.lock.unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
