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
