"""Seconds per training step of the embedded models (issue 17: how long would a CPU training take?).

One step of ``hones_nn.embedded.train`` (a batch of ``--batch-size`` examples drawn and
rendered, forward, backward, clipping, AdamW) for each architecture, interleaved repeat by
repeat after one warm-up step each, on ``--threads`` threads. Reported per architecture:
the median seconds per step (context: it depends on the machine and its load), the share
of it spent drawing the batch, and the RATIO to tiny-llava's float32 step in the same run
(the shipped models' training_info.json hold their measured training seconds, so a ratio
turns into an estimate for the new models). ``--precisions float32,bfloat16`` also times
each architecture under bf16 autocast (``train-embedded --precision bfloat16``).

    python -m benchmarks.bench_train_step --threads 1 --repeats 3
    python -m benchmarks.bench_train_step --threads 2 --architectures llava,llava-16k --precisions float32,bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

ARCHITECTURES = ("llava", "qwen2.5-vl", "llava-16k", "qwen2.5-vl-reader")


def main(argv=None) -> dict:
    from benchmarks import _common as C

    C.quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--architectures", default=",".join(ARCHITECTURES))
    p.add_argument("--precisions", default="float32", help="comma-separated: float32, bfloat16")
    args = p.parse_args(argv)

    import torch

    from hones_nn.data.generators import generator_module
    from hones_nn.embedded.architectures import BUILDERS
    from hones_nn.embedded.train import TrainConfig, make_batch, training_autocast
    from hones_nn.models.adapters import adapter_for

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {}
    for arch in args.architectures.split(","):
        for precision in args.precisions.split(","):
            config = TrainConfig(out="", architecture=arch, batch_size=args.batch_size, precision=precision)
            model, processor = BUILDERS[arch](seed=0)
            model.train()
            scenes = generator_module(config.generator).World(0).scenes({"train": 500})["train"]
            params = [q for q in model.parameters() if q.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4)
            name = arch if precision == "float32" else f"{arch} ({precision})"
            runs[name] = (config, model, processor, adapter_for(model.config), scenes, params, optimizer)

    def step(arch: str, i: int) -> tuple[float, float]:
        config, model, processor, adapter, scenes, params, optimizer = runs[arch]
        t0 = time.perf_counter()
        batch = make_batch(processor, scenes, i, config, adapter)
        t1 = time.perf_counter()
        with training_autocast(config):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, t1 - t0

    for arch in runs:
        step(arch, 0)  # warm-up
    times: dict[str, list[tuple[float, float]]] = {a: [] for a in runs}
    for r in range(args.repeats):
        for arch in runs:
            times[arch].append(step(arch, r + 1))
    result = {}
    base = statistics.median(t for t, _ in times["llava"]) if "llava" in times else None
    for arch, ts in times.items():
        total = statistics.median(t for t, _ in ts)
        data = statistics.median(d for _, d in ts)
        n_params = sum(q.numel() for q in runs[arch][1].parameters())
        result[arch] = {
            "s_per_step": round(total, 3),
            "batch_share": round(data / total, 3),
            "ratio_to_tiny_llava": round(total / base, 2) if base else None,
            "parameters": n_params,
        }
        print(
            f"{arch:29s} {total:7.3f} s/step  (batch drawing {100 * data / total:4.1f}%)  "
            f"x{result[arch]['ratio_to_tiny_llava']} tiny-llava  {n_params:,} parameters"
        )
    print(f"threads={args.threads} batch_size={args.batch_size} repeats={args.repeats} precisions={args.precisions}")
    return result


if __name__ == "__main__":
    main()
