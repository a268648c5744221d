"""Optional dependencies, checked where an option needs one (a clear error naming the extra)."""

from __future__ import annotations

import importlib.util


def require_accelerate(device_map) -> None:
    """``--device-map`` (e.g. ``auto``) makes transformers place the weights with accelerate,
    an optional extra: say so before transformers fails with its own traceback."""
    if device_map is None or importlib.util.find_spec("accelerate") is not None:
        return
    raise ValueError(
        f"--device-map {device_map} needs accelerate, which is not installed: pip install 'hones-nn[accelerate]' "
        "(or pip install accelerate), or drop --device-map and give --device"
    )
