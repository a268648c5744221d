"""hones-nn at LLaVA-1.5-7B shape: seconds per instance, peak memory, ratio to plain forwards.

The model is built from LLaVA-1.5-7B's config (llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at
336 px, 576 image tokens, a 32-layer 4096-wide Llama with d_ff 11008 and a 32,064-token
vocabulary) with random weights: nothing is downloaded. The processor is the embedded one
(word tokenizer, chat template) with CLIP image processing at 336 px and patch 14, so the
synthetic benchmark's prompts and images run unchanged and every prompt carries 576 image
tokens (about 600-650 tokens in all). Random weights change nothing in the cost of a
forward; a generation runs its full 24 new tokens (no early EOS) on both sides.

``--layers N`` keeps the first N decoder layers of the language model and of the vision
tower (a slice of the same shape: same widths, heads, vocabulary, image tokens): the
machine without an accelerator runs 4 (the fewest at which a head's rows start at its
layer, :mod:`hones_nn.engine.skipping`), in float32 (this CPU's bfloat16 matmuls are
several times slower than its float32 ones). On a GPU, run the whole model in bfloat16.

Stages, at each batch size B (rows per forward), each timed against the plain Hugging
Face calls the method needs on the same rows (ratio = hones-nn / plain, 1.00 = no
overhead), and per discovery instance:

  plain        ``model(**inputs)`` on B rows (the limit every stage is compared with)
  vseam-prob   V-SEAM rows with the teacher-forced utility: B items, each under the
               clean run and one head per layer (a sweep's heads are spread evenly over
               the layers, so the time per row scales to an instance)
  vseam-gen    the same rows with the paper's metric (greedy generation, 24 new tokens)
               against plain ``model.generate`` of every row
  hones        HONES's neuron stage on the same rows: z(T) of every layer, projected
  retrieval    one query's 50 candidates, clean and under a head of the last layer:
               hones-nn's shared prefix against one plain forward per candidate
               (measured on a few, scaled to 50 on a CPU; all 50 on a GPU)

V-SEAM's seconds per instance are (L*H + 1) rows; HONES's (1 + K_h) rows; retrieval's
(L*H + 1) query conditions. Peak memory: the CUDA allocator's peak on a GPU; on a CPU the
resident set's peak above the loaded model's, sampled every 20 ms.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import _common as C

NAME = "real_size"

LLAVA_15_7B_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "layer_norm_eps": 1e-5,
    "hidden_act": "quick_gelu",
}


def parse_args():
    p = C.base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--layers", type=int, default=None, help="decoder layers kept (default: all on cuda, 4 on cpu)")
    p.add_argument("--dtype", default=None, help="bfloat16 (default on cuda) or float32 (default on cpu)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,2,4,8,16,32,64 on cuda; 1 on cpu)")
    p.add_argument("--stages", default="plain,vseam-prob,vseam-gen,hones,retrieval", help="comma-separated stages")
    p.add_argument(
        "--plain-candidates", type=int, default=None, help="retrieval candidates run plainly (default 50 cuda, 2 cpu)"
    )
    p.add_argument("--retrieval-batch", type=int, default=50, help="candidate suffixes per forward (retrieval)")
    args = p.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device.startswith("cuda")
    args.layers = args.layers or (32 if gpu else 4)
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2,4,8,16,32,64" if gpu else "1")).split(",")]
    args.plain_candidates = args.plain_candidates or (50 if gpu else 2)
    if args.quick:
        args.batch_sizes, args.plain_candidates = [1], 1
    return args


def build(layers: int, device: str, dtype):
    """LLaVA-1.5-7B's architecture with ``layers`` decoder layers (text and vision), random
    weights, and a LoadedModel as ``load_model`` returns it."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaForConditionalGeneration, LlavaProcessor

    from hones_nn.embedded.architectures import LLAVA_CHAT_TEMPLATE, tiny_llava_config
    from hones_nn.embedded.tiny_random import LLAVA_15_7B_TEXT, in_memory
    from hones_nn.embedded.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    vision = CLIPVisionConfig(**{**LLAVA_15_7B_VISION, "num_hidden_layers": min(layers, 24)})
    t = LLAVA_15_7B_TEXT
    sizes = {
        "text_hidden": t["hidden_size"],
        "text_layers": layers,
        "text_heads": t["num_attention_heads"],
        "text_kv_heads": t["num_key_value_heads"],
        "text_mlp": t["intermediate_size"],
    }
    config = tiny_llava_config(tokenizer, sizes, text={"max_position_embeddings": t["max_position_embeddings"]})
    config.text_config.vocab_size = t["vocab_size"]  # the tokenizer's ids are a subset
    config.text_config.head_dim = t["head_dim"]
    config.vision_config = vision
    config.image_seq_length = (336 // 14) ** 2
    config.vision_feature_layer = -2 if vision.num_hidden_layers > 2 else -1  # llava-1.5 reads the penultimate
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype)
    return in_memory(model, processor, f"llava-1.5-7b-shaped-{layers}-layers-random")


class PeakMemory:
    """Peak memory of a block above its start: CUDA allocator, or sampled CPU RSS."""

    def __init__(self, device: str):
        self.device = device
        self.peak_bytes = 0

    def _rss(self) -> int:
        import resource  # noqa: F401  (Linux: /proc is enough)

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self.stop = threading.Event()
            self.top = self.base

            def sample():
                while not self.stop.wait(0.02):
                    self.top = max(self.top, self._rss())

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.peak_bytes = max(self.top, self._rss()) - self.base
        return False


def main() -> int:
    args = parse_args()
    started, machine = C.begin(args)
    import numpy as np
    import torch

    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.engine.sweep import sweep
    from hones_nn.methods.base import default_top_heads
    from hones_nn.methods.hones import contributions, target_tokens
    from hones_nn.runner.pipeline import Runner

    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    loaded = build(args.layers, args.device, dtype)
    build_s = time.perf_counter() - t0
    model, sizes = loaded.model, loaded.sizes
    L, H = sizes.num_layers, sizes.num_heads
    k_h = default_top_heads(L, H)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    gpu = args.device.startswith("cuda")
    tmp = Path(tempfile.mkdtemp(prefix="hones-real-size-"))
    n_items = max(args.batch_sizes)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def measure(fn):
        """(seconds, peak bytes, result) of one call after one untimed warm-up on GPU."""
        if gpu:
            fn()
        with PeakMemory(args.device) as mem:
            sync()
            t = time.perf_counter()
            out = fn()
            sync()
            took = time.perf_counter() - t
        return took, mem.peak_bytes, out

    def context(task, batch_size, limit):
        runner = Runner(
            loaded, out_dir=tmp / task, batch_size=batch_size, progress=False, split="discovery", limit=limit
        )
        ctx = runner.context(task, {})
        ctx.checkpoint_dir = None
        return ctx

    results: dict = {"build_s": build_s, "stages": {}}
    rows_out = []
    vqa = context("vqa", max(args.batch_sizes), n_items)
    engine, td = vqa.engine, vqa.td
    first = td.task.utility_prompts(td.items[0], "metric")
    prompt = td.items[0].prompts[first[0]]
    tokens = int(encode_prompts(loaded, td.images, [prompt]).inputs["attention_mask"].sum())
    results["prompt_tokens"] = tokens
    results["image_tokens"] = int(loaded.model.config.image_seq_length)
    tok = loaded.processor.tokenizer

    def add(stage, b, what, seconds, peak, plain_seconds=None, rows=None, per_instance_rows=None, note=""):
        rows = rows or b
        entry = {
            "batch_size": b,
            "rows": rows,
            "seconds": seconds,
            "s_per_row": seconds / rows,
            "peak_mib": peak / 2**20,
            "plain_seconds": plain_seconds,
            "ratio_to_plain": (seconds / plain_seconds) if plain_seconds else None,
            "instance_rows": per_instance_rows,
            "s_per_instance": (seconds / rows * per_instance_rows) if per_instance_rows else None,
            "note": note,
        }
        results["stages"].setdefault(stage, []).append(entry)
        rows_out.append(
            [
                stage,
                b,
                f"{entry['s_per_row']:.3f}",
                f"{entry['ratio_to_plain']:.3f}" if entry["ratio_to_plain"] else "-",
                f"{entry['s_per_instance']:.1f}" if entry["s_per_instance"] else "-",
                f"{entry['peak_mib']:.0f}",
                what,
            ]
        )
        print(rows_out[-1], flush=True)

    with torch.no_grad():
        for b in args.batch_sizes:
            items = list(range(b))
            prompts = [td.items[i].prompts[td.task.utility_prompts(td.items[i], "metric")[0]] for i in items]
            inputs = {
                k: v.to(engine.device) if torch.is_tensor(v) else v
                for k, v in encode_prompts(loaded, td.images, prompts).inputs.items()
            }
            t_plain, peak, _ = measure(lambda inputs=inputs: model(**inputs))
            if "plain" in stages:
                add("plain", b, "model(**inputs), B rows", t_plain, peak, t_plain)
            # B items under the clean run and one head per layer (head rows are spread evenly
            # over the layers in a real sweep, so s/row scales to an instance's L*H + 1 rows)
            conds = [None, *[(layer, (7 * layer) % H) for layer in range(L)]]
            n_rows = b * len(conds)
            if "vseam-prob" in stages:
                t, peak, _ = measure(
                    lambda conds=conds, b=b: sweep(engine, td, list(range(b)), conds, utility="prob", batch_size=b)
                )
                what = "teacher-forced, B items x (clean + 1 head per layer)"
                add("vseam-prob", b, what, t, peak, t_plain * len(conds), n_rows, L * H + 1)
            if "vseam-gen" in stages:
                eos, pad = tok.eos_token_id, tok.pad_token_id

                def plain_gen(inputs=inputs):
                    return model.generate(
                        **inputs, max_new_tokens=24, do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad
                    )

                t_gen, _, _ = measure(plain_gen)
                t, peak, _ = measure(
                    lambda conds=conds, b=b: sweep(engine, td, list(range(b)), conds, utility="metric", batch_size=b)
                )
                what = "greedy 24 tokens, B items x (clean + 1 head per layer), vs model.generate"
                add("vseam-gen", b, what, t, peak, t_gen * len(conds), n_rows, L * H + 1)
            if "hones" in stages:
                vqa.batch_size = b
                targets = target_tokens(vqa, td.items[:b])
                t, peak, _ = measure(
                    lambda conds=conds, b=b, targets=targets: contributions(vqa, list(range(b)), conds, targets=targets)
                )
                what = "z(T) x W_down^T u_y, B items x (clean + 1 head per layer)"
                add("hones", b, what, t, peak, t_plain * len(conds), n_rows, 1 + k_h)
        if "retrieval" in stages:
            ret = context("retrieval", max(args.batch_sizes), 1)
            rtd = ret.td
            item = rtd.items[0]
            n_cand = len(item.prompts)
            b = args.retrieval_batch
            rconds = [None, (L - 1, 0)]  # the clean run and a head of the last layer
            t_shared, peak, _ = measure(lambda: sweep(ret.engine, rtd, [0], rconds, utility="metric", batch_size=b))
            plain_prompts = item.prompts[: args.plain_candidates]

            def plain_candidates():
                for p in plain_prompts:
                    enc = encode_prompts(loaded, rtd.images, [p])
                    model(**{k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()})

            t_plain_some, _, _ = measure(plain_candidates)
            t_plain_all = t_plain_some / len(plain_prompts) * n_cand * len(rconds)
            note = "" if len(plain_prompts) == n_cand else f"plain: {len(plain_prompts)} candidates timed, x{n_cand}"
            add(
                "retrieval",
                b,
                f"{n_cand} candidates x (clean + a last-layer head): shared prefix vs a forward each",
                t_shared,
                peak,
                t_plain_all,
                len(rconds),
                L * H + 1,
                note,
            )
    C.print_table(rows_out, ["stage", "B", "s/row", "hn / plain", "s/instance", "peak MiB", "what"])
    results["per_instance_rows"] = {"vseam": L * H + 1, "hones": 1 + k_h, "retrieval_conditions": L * H + 1}
    path = C.write_result(
        NAME,
        args,
        {
            "layers": args.layers,
            "device": args.device,
            "dtype": args.dtype,
            "batch_sizes": args.batch_sizes,
            "plain_candidates": args.plain_candidates,
            "retrieval_batch": args.retrieval_batch,
        },
        results,
        [
            {"what": f"{s} B={e['batch_size']}", "ratio": e["ratio_to_plain"], "a_ms": C.ms(e["s_per_row"])}
            for s, entries in results["stages"].items()
            for e in entries
        ],
        machine,
        started,
        notes=[
            f"LLaVA-1.5-7B shape, {args.layers} decoder layers (text and vision), random weights, {args.dtype} "
            f"on {args.device}; {results['image_tokens']} image tokens, {tokens}-token VQA prompt",
            "ratio = hones-nn time / plain HF time on the same rows; s/instance = s/row x rows per instance",
        ],
        model=C.model_info(loaded),
    )
    print(f"wrote {path}")
    finite = all(np.isfinite(e["seconds"]) for entries in results["stages"].values() for e in entries)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
