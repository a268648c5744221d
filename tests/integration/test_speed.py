"""Speed-ups equal the plain path: shared-prefix retrieval scores against one plain
Hugging Face forward per candidate (torch hooks, no nnsight, no library intervention
code) and against the sweep's plain path; HONES runs no pass for heads it will drop.

One CPU thread, tiny models only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from hones_nn.engine.core import Engine  # noqa: E402
from hones_nn.engine.sweep import _run_rows, sweep  # noqa: E402
from hones_nn.tasks.retrieval import decision_token_ids  # noqa: E402
from hones_nn.tasks.task_data import prepare_task  # noqa: E402
from tests.helpers.torch_hooks import text_layers, torch_hooks  # noqa: E402


def _mean_replace(head: int, num_heads: int):
    def hook(module, args):
        x = args[0]
        b, s, w = x.shape
        v = x.reshape(b, s, num_heads, w // num_heads).clone()
        others = [k for k in range(num_heads) if k != head]
        v[:, :, head] = v[:, :, others].mean(dim=2)
        return (v.reshape(b, s, w),) + tuple(args[1:])

    return hook


def _hand_scores(loaded, td, item, condition) -> list[float]:
    """logit(" Yes") - logit(" No") at T of each candidate, one unpadded HF forward each."""
    model, adapter = loaded.model, loaded.adapter
    yes, no = decision_token_ids(loaded.processor.tokenizer)
    num_heads = loaded.sizes.num_heads
    out = []
    with torch_hooks() as handles, torch.no_grad():
        if condition is not None:
            layer, head = condition
            o_proj = text_layers(model)[layer].self_attn.o_proj
            handles.append(o_proj.register_forward_pre_hook(_mean_replace(head, num_heads)))
        for prompt in item.prompts:
            enc = adapter.encode(loaded.processor, [td.images[prompt.image_index]], [prompt.user_text])
            logits = model(**enc.inputs).logits[0, -1]
            out.append(float(logits[yes] - logits[no]))
    return out


@pytest.mark.parametrize("arch", ["tiny-llava", "qwen2.5-vl", "llava-next"])
def test_shared_prefix_retrieval_scores_equal_one_forward_per_candidate(arch, embedded, tiny_model, benchmark_dir):
    loaded = embedded if arch == "tiny-llava" else tiny_model(arch)
    engine = Engine(loaded)
    td = prepare_task(loaded, "retrieval", limit=2)
    L, H = loaded.sizes.num_layers, loaded.sizes.num_heads
    conditions = [None, (0, 1), (L - 1, H - 1)]
    items = td.items[:2]
    # batch 16 < 50 candidates: suffix rows of one condition span several batches
    _, shared = _run_rows(engine, td, items, conditions, "logprob", 16, "mean", 0, share_prefix=True)
    _, plain = _run_rows(engine, td, items, conditions, "logprob", 16, "mean", 0, share_prefix=False)
    assert shared.keys() == plain.keys() and len(shared) == 2 * 50 * 3
    keys = sorted(plain)
    a = np.array([shared[k] for k in keys])
    b = np.array([plain[k] for k in keys])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # against plain HF forwards, one unpadded candidate at a time
    for c, condition in enumerate(conditions):
        hand = _hand_scores(loaded, td, items[1], condition)
        got = [shared[(1, p, c)] for p in range(len(items[1].prompts))]
        np.testing.assert_allclose(got, hand, rtol=1e-5, atol=1e-5)
    # the conditions do move the scores (the test would be empty otherwise)
    assert not np.allclose([shared[(1, p, 0)] for p in range(50)], [shared[(1, p, 1)] for p in range(50)])


def test_shared_prefix_sweep_utilities_equal_the_plain_sweep(embedded, benchmark_dir):
    engine = Engine(embedded)
    td = prepare_task(embedded, "retrieval", limit=2)
    conditions = [None, (1, 3), (2, 5)]
    for utility in ("metric", "logprob", "prob"):
        shared = sweep(engine, td, [0, 1], conditions, utility=utility, batch_size=64, share_prefix=True)
        plain = sweep(engine, td, [0, 1], conditions, utility=utility, batch_size=64, share_prefix=False)
        np.testing.assert_allclose(shared, plain, rtol=1e-5, atol=1e-5, err_msg=utility)


@pytest.mark.parametrize("compat", [False, True])
def test_hones_runs_no_pass_for_dropped_heads(embedded, embedded_engine, benchmark_dir, tmp_path, monkeypatch, compat):
    """Heads with S_h <= 0 get no forwards; the table equals the one computed with a pass
    for every top head (the plain path: contributions of all K_h + 1 conditions)."""
    import hones_nn.methods.hones as hones
    from hones_nn.engine.tables import write_head_table
    from hones_nn.runner.pipeline import Runner

    entries = {(2, 5): 0.5, (0, 2): 0.3, (3, 1): 0.1, (1, 4): 0.0, (1, 6): -0.2}
    scores = -np.ones((4, 8))
    for (layer, head), s in entries.items():
        scores[layer, head] = s
    heads_path = write_head_table(
        tmp_path / "heads.parquet", scores, 0.0, -scores, {"method": "vseam", "task": "vqa", "model_id": "tiny-llava"}
    )
    seen: list[list] = []
    original = hones.contributions

    def counted(ctx, item_ids, conditions, **kwargs):
        seen.append(list(conditions))
        return original(ctx, item_ids, conditions, **kwargs)

    monkeypatch.setattr(hones, "contributions", counted)
    runner = Runner(
        loaded=embedded,
        out_dir=tmp_path,
        progress=False,
        _engine=embedded_engine,
        limit=4,
        batch_size=8,
        reference_compat=compat,
    )
    table = runner.rank("vqa", "hones", heads=heads_path, top_heads=5)
    assert seen and all(c == [None, (2, 5), (0, 2), (3, 1)] for c in seen)  # not (1, 4) (0.0) nor (1, 6) (-0.2)
    # the plain path: every top head run, combined by the same rule
    ctx = runner.context("vqa", {})
    method = hones.Hones()
    heads = [(2, 5), (0, 2), (3, 1), (1, 4), (1, 6)]
    weights = [entries[h] for h in heads]
    targets = hones.target_tokens(ctx, ctx.td.items, ctx.td.task.direction_context(ctx.engine.tokenizer, ctx.td.items))
    conditions = [None, *heads]
    c = original(ctx, list(range(ctx.td.n)), conditions, targets=targets)
    part = hones._accumulate(c, conditions)
    want, _ = method.combine(part["c_sum"] / ctx.td.n, part["positive_sum"] / ctx.td.n, heads, weights, compat)
    scale = np.abs(want).max()
    assert scale > 0
    # batches group other rows (other left padding): float noise only
    np.testing.assert_allclose(table.matrix(), want, rtol=1e-4, atol=1e-5 * scale)


def test_heads_skip_the_clean_layers_below_them(embedded, benchmark_dir):
    """A head in layer 3 runs layers 3 and up only (layer 0's MLP runs for the clean
    condition alone), with the same scores as running every layer."""
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.engine.prefix import SharedPrefix, prefix_decision_scores

    engine = Engine(embedded)
    td = prepare_task(embedded, "retrieval", limit=1)
    item = td.items[0]
    split = SharedPrefix(embedded, encode_prompts(embedded, td.images, item.prompts))
    conditions = [None, (3, 0), (3, 5), (2, 7)]
    calls = {"n": 0}

    def count(module, args, output):
        calls["n"] += 1

    runs = {}
    for skip in (True, False):
        calls["n"] = 0
        with torch_hooks() as handles:
            handles.append(text_layers(embedded.model)[0].mlp.register_forward_hook(count))
            runs[skip] = prefix_decision_scores(engine, split, conditions, batch_size=32, skip_clean_layers=skip)
        runs[f"calls-{skip}"] = calls["n"]
    batches = 2  # 50 candidates, 32 per suffix batch
    assert runs["calls-True"] == 1 + batches  # the clean prefix + its suffix batches
    assert runs["calls-False"] == len(conditions) * (1 + batches)
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(runs[True][:, 0], runs[True][:, 1])


def _masked_hand_scores(loaded, td, item, neurons) -> list[float]:
    """Candidates' decision scores with z_i = 0 at the given neurons: one HF forward each."""
    model, adapter = loaded.model, loaded.adapter
    yes, no = decision_token_ids(loaded.processor.tokenizer)
    out = []

    def zero(idx):
        def hook(module, args):
            z = args[0].clone()
            z[..., idx] = 0
            return (z,)

        return hook

    with torch_hooks() as handles, torch.no_grad():
        for layer, neuron in neurons:
            down = text_layers(model)[layer].mlp.down_proj
            handles.append(down.register_forward_pre_hook(zero(neuron)))
        for prompt in item.prompts:
            enc = adapter.encode(loaded.processor, [td.images[prompt.image_index]], [prompt.user_text])
            logits = model(**enc.inputs).logits[0, -1]
            out.append(float(logits[yes] - logits[no]))
    return out


@pytest.mark.parametrize("arch", ["tiny-llava", "qwen2.5-vl"])
def test_evaluation_shares_each_querys_prefix_with_the_same_scores(arch, embedded, tiny_model, benchmark_dir):
    """run_task (evaluate, masking, steering reports) scores a query's candidates on one
    prefix: equal to one whole-prompt HF forward per candidate, clean and masked; a
    per-batch intervention factory keeps the plain path."""
    from hones_nn.interventions.neurons import NeuronMask
    from hones_nn.interventions.rows import RowNeuronFactor

    loaded = embedded if arch == "tiny-llava" else tiny_model(arch)
    engine = Engine(loaded)
    td = prepare_task(loaded, "retrieval", limit=2)
    L, d_ff = loaded.sizes.num_layers, loaded.sizes.d_ff
    neurons = [(0, 3), (L - 1, d_ff - 1), (L // 2, 7)]
    traces = {"n": 0}

    def count(module, args, output):
        traces["n"] += 1

    with torch_hooks() as handles:
        handles.append(text_layers(loaded.model)[0].register_forward_hook(count))
        clean = engine.run_task(td.task, td.items, td.images, batch_size=32, progress=False)
    assert traces["n"] == 2 * (1 + 2)  # per query: its prefix + 2 suffix batches of <= 32 candidates
    masked = engine.run_task(
        td.task, td.items, td.images, batch_size=32, intervention_for=NeuronMask(neurons), progress=False
    )
    for k, item in enumerate(td.items):
        np.testing.assert_allclose(clean[k], _masked_hand_scores(loaded, td, item, []), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(masked[k], _masked_hand_scores(loaded, td, item, neurons), rtol=1e-4, atol=1e-4)
    assert max(abs(a - b) for ra, rb in zip(clean, masked) for a, b in zip(ra, rb)) > 1e-3  # the mask acts

    # per-row factors (one row per prompt of the batch) cannot share a prefix: whole prompts
    def ones(batch):
        return RowNeuronFactor(torch.ones(len(batch.prompts), L, d_ff))

    traces["n"] = 0
    with torch_hooks() as handles:
        handles.append(text_layers(loaded.model)[0].register_forward_hook(count))
        plain = engine.run_task(td.task, td.items, td.images, batch_size=32, intervention_for=ones, progress=False)
    n_prompts = sum(len(item.prompts) for item in td.items)
    assert traces["n"] == -(-n_prompts // 32)
    np.testing.assert_allclose(np.array(plain), np.array(clean), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["tiny-llava", "qwen2.5-vl"])
def test_teacher_forced_heads_skip_the_clean_layers_below_them(arch, embedded, tiny_model, benchmark_dir):
    """A teacher-forced head row in layer l runs layers l and up only (the layers below take
    the clean run's output): the utilities equal the plain sweep's, and the lowest layer
    sees only the clean rows and layer 0's heads."""
    loaded = embedded if arch == "tiny-llava" else tiny_model(arch)
    engine = Engine(loaded)
    td = prepare_task(loaded, "vqa", split="discovery", limit=2)
    L, H = loaded.sizes.num_layers, loaded.sizes.num_heads
    conditions = [None, (0, 1), (1, H - 1), (L - 1, 0), (L - 1, H - 1)]
    seen: dict[int, int] = {}

    def rows_seen(layer):
        def hook(module, args, output):
            seen[layer] = seen.get(layer, 0) + args[0].shape[0]

        return hook

    runs = {}
    for skip in (True, False):
        seen.clear()
        with torch_hooks() as handles:
            for layer in (0, L - 1):
                handles.append(text_layers(loaded.model)[layer].mlp.register_forward_hook(rows_seen(layer)))
            for utility in ("logprob", "prob"):
                runs[skip, utility] = sweep(
                    engine, td, [0, 1], conditions, utility=utility, batch_size=8, skip_clean_layers=skip
                )
        runs[skip, "seen"] = dict(seen)
    for utility in ("logprob", "prob"):
        np.testing.assert_allclose(runs[True, utility], runs[False, utility], rtol=1e-6, atol=1e-7)
        assert not np.allclose(runs[True, utility][:, 0], runs[True, utility][:, 3])  # the heads act
    n_rows = 2 * len(conditions)
    assert runs[False, "seen"] == {0: 2 * n_rows, L - 1: 2 * n_rows}  # two utilities, every layer
    assert runs[True, "seen"] == {0: 2 * (2 + 2), L - 1: 2 * n_rows}  # layer 0: clean + its own head


@pytest.mark.parametrize("arch", ["tiny-llava", "qwen2.5-vl"])
def test_generation_heads_start_their_prefill_at_their_layer(arch, embedded, tiny_model, benchmark_dir):
    """The paper's metric utility: a head row in layer l runs its prefill from layer l (the
    clean prefill's output and keys/values below it), every layer while decoding. Forced
    24-token generations equal the plain path's token for token; the lowest layer's
    prefill sees only the clean rows and layer 0's heads."""
    from hones_nn.engine.sweep import generated_texts

    loaded = embedded if arch == "tiny-llava" else tiny_model(arch)
    engine = Engine(loaded, min_new_tokens=24)  # long outputs: a wrong cache would show
    td = prepare_task(loaded, "vqa", split="discovery", limit=2)
    L, H = loaded.sizes.num_layers, loaded.sizes.num_heads
    conditions = [None, (0, 1), (1, H - 1), (L - 1, 0), (L - 1, H - 1)]
    prefill_rows = {"n": 0}

    def count(module, args, output):
        if args[0].shape[1] > 1:  # a prefill (decoding steps see one position)
            prefill_rows["n"] += args[0].shape[0]

    runs = {}
    for skip in (True, False):
        prefill_rows["n"] = 0
        with torch_hooks() as handles:
            handles.append(text_layers(loaded.model)[0].mlp.register_forward_hook(count))
            runs[skip] = generated_texts(engine, td, [0, 1], conditions, batch_size=8, skip_clean_layers=skip)
        runs[skip, "rows"] = prefill_rows["n"]
    assert runs[True] == runs[False]
    assert all(len(text.split()) >= 3 for texts in runs[True] for text in texts)
    assert any(texts[0] != texts[c] for texts in runs[True] for c in range(1, len(conditions)))  # heads act
    assert runs[False, "rows"] == 2 * len(conditions)
    assert runs[True, "rows"] == 2 + 2  # the clean prefills and layer 0's head


def test_hones_contributions_start_each_head_at_its_layer(embedded, benchmark_dir, monkeypatch, tmp_path):
    """HONES's neuron stage runs a head's rows from its layer (the clean run's output below):
    the contributions equal the plain path's (every layer for every row), and the lowest
    layer runs the clean rows and layer 0's heads only."""
    import hones_nn.methods.hones as hones_module
    from hones_nn.runner.pipeline import Runner

    runner = Runner(embedded, out_dir=tmp_path, batch_size=16, progress=False, split="discovery", limit=3)
    ctx = runner.context("vqa", {})
    ctx.checkpoint_dir = None
    items = ctx.td.items
    targets = hones_module.target_tokens(ctx, items, ctx.td.task.direction_context(ctx.engine.tokenizer, items))
    L, H = embedded.sizes.num_layers, embedded.sizes.num_heads
    conditions = [None, (0, 2), (1, 5), (L - 1, 0), (L - 1, H - 1)]
    rows = {"n": 0}

    def count(module, args, output):
        rows["n"] += args[0].shape[0]

    runs = {}
    for skip in (True, False):
        monkeypatch.setattr(hones_module, "skips_by_default", lambda engine, skip=skip: skip)
        rows["n"] = 0
        with torch_hooks() as handles:
            handles.append(text_layers(embedded.model)[0].mlp.register_forward_hook(count))
            runs[skip] = hones_module.contributions(ctx, [0, 1, 2], conditions, targets=targets)
        runs[skip, "rows"] = rows["n"]
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(runs[True][:, 0, L - 1], runs[True][:, 3, L - 1])  # the heads act
    assert runs[False, "rows"] == 3 * len(conditions)
    assert runs[True, "rows"] == 3 + 3  # the clean rows and layer 0's head
