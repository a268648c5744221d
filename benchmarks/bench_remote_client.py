"""What a weightless remote client costs: peak RSS and bytes up per request of
``hones-nn rank --task vqa --method hones --remote --dry-run`` on model folders that hold
no weights at all.

    python -m benchmarks.bench_remote_client [--limit 2] [--out FILE]

Two folders are built in a scratch directory, from configs only:

* ``shipped``: the shipped tiny-llava's config, processor and tokenizer files, without
  its ``model.safetensors``;
* ``llava-7b-shaped``: the same files with the language model scaled to LLaVA-1.5-7B's
  (Llama: 32 layers x hidden 4096, 32 heads, MLP 11008, vocabulary 32064); no weights of
  this shape exist anywhere. The vision tower stays the tiny one, so the shipped
  processor's images fit it.

Each command runs in its own process (``os.wait4`` gives that process's peak RSS); the
dry run serializes every request exactly as it would be sent and runs it on fake tensors
(nothing is sent, no weight is read). The goal of issue 13: under 3 GB RSS and under 2 MB
per request at 7B shape.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._common import base_parser, begin, print_table, write_result


def weightless_folders(root: Path) -> dict[str, Path]:
    from hones_nn.embedded.tiny_random import LLAVA_15_7B_TEXT, weightless_copy

    return {
        "shipped": weightless_copy(root / "shipped"),
        "llava-7b-shaped": weightless_copy(root / "llava-7b-shaped", LLAVA_15_7B_TEXT),
    }


def dry_run(folder: Path, limit: int, scratch: Path) -> dict:
    cmd = [
        sys.executable, "-m", "hones_nn.cli", "rank", "--task", "vqa", "--method", "hones",
        "--remote", "--dry-run", "--model", str(folder), "--limit", str(limit),
        "--out-dir", str(scratch / "out"), "--batch-size", "8",
    ]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = proc.communicate()
    _, status, usage = os.wait4(proc.pid, 0) if proc.returncode is None else (proc.pid, proc.returncode, None)
    if usage is None:  # communicate() reaped it: measure through the children's rusage instead
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    else:
        peak_kb = usage.ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    match = re.search(
        r"dry run: (\d+) request\(s\).*?([\d.]+) MB up \(largest ([\d.]+) MB\).*?([\d.]+) MB down", stderr
    )
    if not match:
        raise SystemExit(f"no dry-run summary in the output:\n{stderr[-3000:]}")
    requests, up, largest, down = int(match[1]), float(match[2]), float(match[3]), float(match[4])
    return {
        "requests": requests,
        "mb_up": up,
        "mb_up_per_request_mean": round(up / max(requests, 1), 4),
        "mb_up_largest_request": largest,
        "mb_down": down,
        "peak_rss_gb": round(peak_kb / 1e6, 3),
    }


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=2, help="discovery items of each dry run")
    args = p.parse_args()
    started, machine = begin(args)
    results, summary = {}, []
    with tempfile.TemporaryDirectory(prefix="hones-remote-client-") as tmp:
        for name, folder in weightless_folders(Path(tmp)).items():
            assert not list(folder.glob("*.safetensors"))
            results[name] = dry_run(folder, args.limit, Path(tmp) / name)
            r = results[name]
            summary.append(
                {
                    "what": f"{name}: peak RSS {r['peak_rss_gb']} GB, "
                    f"largest request {r['mb_up_largest_request']} MB up",
                    "ratio": None,
                    "note": f"{r['requests']} requests, {r['mb_up']} MB up, {r['mb_down']} MB down (stand-in sizes)",
                }
            )
    print_table(
        [[n, r["requests"], r["peak_rss_gb"], r["mb_up_per_request_mean"], r["mb_up_largest_request"], r["mb_down"]]
         for n, r in results.items()],
        ["model (no weights)", "requests", "peak RSS GB", "MB up / request", "largest MB up", "MB down"],
    )  # fmt: skip
    path = write_result(
        "remote_client",
        args,
        {"limit": args.limit, "task": "vqa", "method": "hones", "batch_size": 8},
        results,
        summary,
        machine,
        started,
        notes=["goal (issue 13): under 3 GB peak RSS and under 2 MB up per request at 7B shape"],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
