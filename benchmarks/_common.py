"""Shared helpers of the benchmarks: arguments, timing, machine info, JSON results.

Every benchmark reports RATIOS of two timings taken in the same run, on the same
inputs, interleaved repeat by repeat (so a background load slows both sides alike);
absolute times are recorded for context only and are never compared to thresholds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def quiet() -> None:
    """Silence progress bars and chatty warnings so the printed report stays readable."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    try:
        import datasets

        datasets.disable_progress_bars()
    except Exception:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the benchmark runs (numbers are noisy)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (torch.set_num_threads); 0 keeps torch's default"
    )
    p.add_argument("--model", default="tiny-llava", help="model name or folder for hones_nn.models.load_model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--data", default=None, help="benchmark folder (default: the cached synthetic benchmark)")
    p.add_argument("--task", default="vqa", help="task whose discovery split feeds the benchmark")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warmup runs per measurement")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/<name>.json)")
    return p


def setup_torch(threads: int) -> None:
    import torch

    if threads and threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)


def begin(args) -> tuple[float, dict]:
    """The start of every benchmark: quiet logs, pin torch's threads, start the clock.

    Returns (the start time for the result's ``wall_s``, :func:`machine_info`)."""
    quiet()
    started = time.perf_counter()
    setup_torch(args.threads)
    return started, machine_info()


def load(model_name: str, device: str | None = None):
    """(LoadedModel, HF model, architecture adapter, model sizes) of the benchmarked model,
    on ``device`` (None: cuda when available, else cpu)."""
    import torch

    from hones_nn.models.loading import load_model

    loaded = load_model(model_name, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return loaded, loaded.model, loaded.adapter, loaded.adapter.sizes(loaded.model)


def freeze_heap() -> None:
    """Move everything alive now (modules, model, data) out of the collector's sight:
    a full ``gc.collect()`` otherwise costs ~0.3 s with transformers + nnsight loaded."""
    gc.collect()
    gc.freeze()


def _synchronize() -> None:
    """Wait for queued GPU work, so that a timing covers it (nothing to wait for on a CPU)."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall time of one call, with the garbage collector paused (as ``timeit`` does)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        _synchronize()
        start = time.perf_counter()
        value = fn()
        _synchronize()
        seconds = time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()
    return seconds, value


def compare(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, dict]:
    """Time each function ``repeats`` times after ``warmup`` untimed calls, interleaved
    (a, b, c, a, b, c, ...) so slow drifts of the machine hit every variant alike.

    Returns per name: median_s, min_s, all times, and the last return value.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in fns}
    last: dict[str, object] = {}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            seconds, value = timed(fn)
            times[name].append(seconds)
            last[name] = value
    gc.collect()
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "times_s": ts, "value": last[name]}
        for name, ts in times.items()
    }


def ratio(a: float, b: float) -> float:
    return float("nan") if b == 0 else a / b


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except Exception:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    import nnsight
    import torch
    import transformers

    import hones_nn

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "load_average_at_start": _loadavg(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "versions": {
            "hones_nn": getattr(hones_nn, "__version__", None),
            "torch": torch.__version__,
            "nnsight": nnsight.__version__,
            "transformers": transformers.__version__,
        },
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
    }


def command_line() -> str:
    """The command that ran this benchmark: ``python -m benchmarks.<name> ARGS`` (run from the
    repository root, as benchmarks/run_all.sh does)."""
    module = sys.modules["__main__"].__spec__.name
    return " ".join(["python", "-m", module, *map(shlex.quote, sys.argv[1:])])


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return _jsonable(value.item())
    except ImportError:
        pass
    return str(value)


def write_result(
    name: str,
    args,
    settings: dict,
    results: dict,
    summary: list[dict],
    machine: dict,
    started: float,
    notes: list[str] | None = None,
    model: dict | None = None,
) -> Path:
    """Write benchmarks/results/<name>.json (or --out) and return its path.

    ``summary``: the rows report.py turns into a table: dicts with ``what``, ``ratio``,
    and optionally ``a_ms``/``b_ms`` (the two sides) and ``note``.
    """
    path = Path(args.out) if args.out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": command_line(),
        "quick": bool(args.quick),
        "settings": settings,
        "machine": machine,
        "model": model or {},
        "wall_s": round(time.perf_counter() - started, 2),
        "load_average_at_end": _loadavg(),
        "summary": summary,
        "results": results,
        "notes": notes or [],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    tmp.replace(path)
    return path


def model_info(loaded) -> dict:
    sizes = loaded.adapter.sizes(loaded.model)
    return {
        "model_id": loaded.model_id,
        "weights_hash": loaded.weights_hash,
        "architecture": loaded.adapter.architecture,
        "num_layers": sizes.num_layers,
        "num_heads": sizes.num_heads,
        "d_ff": sizes.d_ff,
        "hidden_size": sizes.hidden_size,
        "dtype": str(next(loaded.model.parameters()).dtype),
        "device": str(next(loaded.model.parameters()).device),
    }


def ms(seconds: float) -> float:
    return round(1000.0 * seconds, 3)


def print_table(rows: list[list], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
