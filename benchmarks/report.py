"""Turn benchmarks/results/*.json into benchmarks/RESULTS.md (a README section).

    python benchmarks/report.py [--results DIR] [--out FILE]

One short table per benchmark, with the exact command that produced it and the machine
it ran on. Only ratios measured within one run are meant to be compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ORDER = ["trace_overhead", "head_batching", "hones_attribution"]
TITLES = {
    "trace_overhead": "nnsight trace overhead vs plain Hugging Face calls",
    "head_batching": "Batched V-SEAM head localization vs one head per forward",
    "hones_attribution": "HONES attribution vs plain forwards",
}
BLURBS = {
    "trace_overhead": "Same processor-batched batch (first B prompts of the discovery split) on both sides; "
                      "ratio = nnsight / HF (1.00 = no overhead). `nn_interv` and `hf_hook` apply the same "
                      "per-row head mean replacement. Generation: greedy, Engine's kwargs; *forced* runs all "
                      "`max_new_tokens` steps on both sides.",
    "head_batching": "Same examples and conditions (clean + every head) on both sides; speed-up = reference "
                     "loop time / batched `sweep` time. The scores must agree (`allclose`).",
    "hones_attribution": "Same (example, condition) rows and batches on every line; ratio = time / plain HF "
                         "forwards with encoding (1 + K_h forwards per example). The torch-hooks line recomputes "
                         "the contributions without nnsight and must agree (`allclose`).",
}


def _f(x, digits=2, signed=False):
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _machine(d: dict) -> str:
    m = d.get("machine", {})
    v = m.get("versions", {})
    s = d.get("settings", {})
    model = d.get("model", {})
    parts = [
        f"{m.get('date_utc', '?')}",
        f"{m.get('cpu_model') or 'cpu ?'} ({m.get('cpu_count')} cpus, torch threads {m.get('torch_threads')})",
        f"load avg {m.get('load_average_at_start')} -> {d.get('load_average_at_end')}",
        f"torch {v.get('torch')}, nnsight {v.get('nnsight')}, transformers {v.get('transformers')}, "
        f"hones_nn {v.get('hones_nn')} (git {m.get('git_commit')}{', dirty' if m.get('git_dirty') else ''})",
        f"model {model.get('model_id')} ({model.get('num_layers')}x{model.get('num_heads')} heads, "
        f"d_ff {model.get('d_ff')}, {model.get('dtype')}, {model.get('device')}), task {s.get('task')}",
        f"wall {d.get('wall_s')} s" + (" — **quick mode (noisy, for smoke tests)**" if d.get("quick") else ""),
    ]
    load, cpus = m.get("load_average_at_start"), m.get("cpu_count")
    if load and cpus and max(load[0], (d.get("load_average_at_end") or [0])[0]) > 0.75 * cpus:
        parts.append(f"**machine busy (1-min load {load[0]} on {cpus} cpus): timings are noisy**")
    return "; ".join(parts)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def render_trace_overhead(d: dict) -> list[str]:
    res = d["results"]
    lines = ["Forward pass (median ms):", ""]
    lines += _table(["B", "nnsight variant", "baseline", "nnsight ms", "baseline ms", "overhead ms", "ratio"],
                    [[r["batch"], f"`{r['variant']}`", f"`{r['baseline']}`", _f(r["a_ms"], 1), _f(r["b_ms"], 1),
                      _f(r["overhead_ms"], 1, True), _f(r["ratio"], 3)] for r in res.get("forward_rows", [])])
    gen = res.get("generation_rows", [])
    if gen:
        lines += ["", "Generation (median ms; `Engine.generate` vs `model.generate`, greedy):", ""]
        lines += _table(["B", "mode", "steps", "intervention", "Engine ms", "HF ms", "overhead ms", "ms/step",
                         "ratio"],
                        [[r["batch"], r["mode"], r["steps"], "head (per step) / hooks" if "intervention" in r["variant"]
                          else "none", _f(r["a_ms"], 1), _f(r["b_ms"], 1), _f(r["overhead_ms"], 1, True),
                          _f(r["overhead_ms_per_step"], 2, True), _f(r["ratio"], 3)] for r in gen])
        per_step = [(b, e["per_step_overhead_ms_differential"], e["hf_ms_per_step_differential"])
                    for b, e in res.get("generation", {}).items() if "per_step_overhead_ms_differential" in e]
        if per_step:
            lines += ["", "Per-step nnsight overhead, (forced - natural) differential: "
                      + "; ".join(f"B={b}: {_f(o, 2, True)} ms/step (HF step {_f(h, 2)} ms)" for b, o, h in per_step)
                      + "."]
    return lines


def render_head_batching(d: dict) -> list[str]:
    rows = []
    for utility, v in d["results"].items():
        rows.append([utility, v["examples"], v["conditions"], v["rows"],
                     f"{v['forwards_or_generations']['reference']} / {v['forwards_or_generations']['batched']}",
                     _f(v["reference_s"]), _f(v["batched_s"]), f"**{_f(v['speedup'])}x**",
                     f"{'yes' if v['allclose'] else 'NO'} ({v['max_abs_diff']:.1e})"])
    return _table(["utility", "examples", "conditions", "rows", "passes ref / batched", "reference s", "batched s",
                   "speed-up", "allclose (max diff)"], rows)


def render_hones_attribution(d: dict) -> list[str]:
    res = d["results"]
    labels = {"hones": "`contributions()` (nnsight)", "plain_enc": "plain HF forwards + encode (baseline)",
              "plain_fwd": "plain HF forwards, pre-encoded", "hooks": "torch hooks, same computation",
              "rank": "`Runner.rank(task, \"hones\")` end to end"}
    med = res["median_s"]
    base, fwd = med["plain_enc"], med["plain_fwd"]
    rows = [[labels.get(name, name), _f(t), _f(res["ms_per_example"][name], 1), f"**{_f(t / base, 3)}**",
             _f(t / fwd, 3)] for name, t in med.items()]
    lines = [f"{res['examples']} examples x (1 + K_h = {res['top_heads']}) = {res['rows']} rows in {res['batches']} "
             f"forwards of <= {d['settings'].get('batch_size')} rows; head table: {res.get('head_table')}.", ""]
    lines += _table(["variant", "median s", "ms / example", "ratio to plain + encode", "ratio to plain fwd"], rows)
    lines += ["", f"Cross-check torch hooks vs `contributions()`: allclose = {res['hooks_allclose']} "
                  f"(max |diff| {res['hooks_max_abs_diff']:.1e}; head replacement changes contributions by up to "
                  f"{res.get('max_abs_effect_of_head_replacement', float('nan')):.1e})."]
    return lines


def render_generic(d: dict) -> list[str]:
    return _table(["what", "A ms", "B ms", "ratio", "note"],
                  [[r.get("what"), _f(r.get("a_ms"), 1), _f(r.get("b_ms"), 1), _f(r.get("ratio"), 3),
                    r.get("note", "")] for r in d.get("summary", [])])


RENDER = {"trace_overhead": render_trace_overhead, "head_batching": render_head_batching,
          "hones_attribution": render_hones_attribution}


def build(results_dir: Path) -> str:
    files = sorted(results_dir.glob("*.json"))
    data = {}
    for f in files:
        try:
            d = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {f}: {exc}", file=sys.stderr)
            continue
        data[d.get("benchmark", f.stem)] = d
    names = [n for n in ORDER if n in data] + sorted(n for n in data if n not in ORDER)
    lines = ["## Benchmarks", "",
             "Ratios of two timings taken in the same run on the same inputs (medians of interleaved repeats "
             "after warmup); absolute times depend on the machine and are given for context only. "
             "Regenerate with `bash benchmarks/run_all.sh` (or one script, then `python benchmarks/report.py`).",
             ""]
    if not names:
        lines += ["No results yet: run `bash benchmarks/run_all.sh`.", ""]
    for name in names:
        d = data[name]
        lines += [f"### {TITLES.get(name, name)}", "", BLURBS.get(name, ""), "",
                  f"Command: `{d.get('command')}`  ", f"Run: {_machine(d)}", ""]
        try:
            lines += RENDER.get(name, render_generic)(d)
        except (KeyError, TypeError) as exc:
            print(f"{name}: unexpected result layout ({exc!r}); using the generic table", file=sys.stderr)
            lines += render_generic(d)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--results", default=str(BENCH_DIR / "results"), help="folder of result JSON files")
    p.add_argument("--out", default=str(BENCH_DIR / "RESULTS.md"), help="markdown file to write")
    args = p.parse_args()
    text = build(Path(args.results))
    out = Path(args.out)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
