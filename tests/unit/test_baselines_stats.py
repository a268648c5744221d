"""The ranking baselines against hand computation on tiny random models.

AP / MA / APE (activation statistics of g = act_fn(gate_proj(x))), DLA, LLM-Knowledge,
Pan et al. ("pan-act") and Random (docs/methods.md, "Baselines").

Every reference value is computed WITHOUT nnsight and without the library's recipes:
plain Hugging Face forwards, one unpadded example at a time, built from the processor
directly, with torch hooks recording g (``act_fn`` output), z (``down_proj`` input), the
residual entering the MLP (``post_attention_layernorm`` input), each MLP's output and
the final residual (the final norm's input); weights read by their transformers paths.
The library runs the same examples batched and left-padded. One CPU thread, tiny models.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from hones_nn.embedded.tiny_random import TINY_ARCHITECTURES, build_tiny_random  # noqa: E402
from hones_nn.methods.base import METHODS, get_method  # noqa: E402
from hones_nn.methods.dla import dla_per_example  # noqa: E402
from hones_nn.methods.llm_knowledge import llm_knowledge_per_example  # noqa: E402
from hones_nn.methods.pan_act import caption_target_ids  # noqa: E402
from hones_nn.runner.pipeline import Runner  # noqa: E402

BASELINES = ("ap", "ma", "ape", "dla", "llm-knowledge", "pan-act", "random")
TASKS = ("vqa", "ocr", "caption", "retrieval")

# ======================================================================= helpers


@pytest.fixture(scope="module")
def tiny():
    """One tiny random model per architecture, its final-norm weight randomised (so gamma matters)."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            loaded = build_tiny_random(arch)
            norm = loaded.model.model.language_model.norm
            gen = torch.Generator().manual_seed(7)
            with torch.no_grad():
                norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=gen))
            cache[arch] = loaded
        return cache[arch]

    return get


def runner_for(loaded, tmp_path, **kwargs) -> Runner:
    kwargs.setdefault("limit", 2)
    return Runner(loaded=loaded, out_dir=Path(tmp_path), progress=False, **kwargs)


def prompt_of(task_name: str, item):
    return item.prompts[item.data["positive_index"]] if task_name == "retrieval" else item.prompts[0]


def hand_inputs(loaded, image, user_text: str) -> dict:
    """One unpadded input from the processor itself (chat template + image)."""
    processor = loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(images=[image], text=[prompt], return_tensors="pt"))


@torch.no_grad()
def hand_record(loaded, inputs) -> dict:
    """Plain forward with hooks: per layer g, z, r (MLP-entry residual), mlp_out [S, *];
    h the final residual [S, hidden]; logits [S, V]; input_ids [S]."""
    model = loaded.model
    lm = model.model.language_model
    rec = {"g": {}, "z": {}, "r": {}, "mlp": {}}
    handles = []
    try:
        for l, block in enumerate(lm.layers):
            handles.append(
                block.mlp.act_fn.register_forward_hook(
                    lambda m, a, o, l=l: rec["g"].__setitem__(l, o[0].detach().double().clone())
                )
            )
            handles.append(
                block.mlp.down_proj.register_forward_pre_hook(
                    lambda m, a, l=l: rec["z"].__setitem__(l, a[0][0].detach().double().clone())
                )
            )
            handles.append(
                block.post_attention_layernorm.register_forward_pre_hook(
                    lambda m, a, l=l: rec["r"].__setitem__(l, a[0][0].detach().double().clone())
                )
            )
            handles.append(
                block.mlp.register_forward_hook(
                    lambda m, a, o, l=l: rec["mlp"].__setitem__(l, o[0].detach().double().clone())
                )
            )
        handles.append(lm.norm.register_forward_pre_hook(lambda m, a: rec.__setitem__("h", a[0][0].double().clone())))
        rec["logits"] = model(**inputs).logits[0].double()
    finally:
        for h in handles:
            h.remove()
    rec["input_ids"] = inputs["input_ids"][0]
    return rec


def hand_records(loaded, td) -> list[dict]:
    out = []
    for item in td.items:
        p = prompt_of(td.task.name, item)
        out.append(hand_record(loaded, hand_inputs(loaded, td.images[p.image_index], p.user_text)))
    return out


def image_token_id(loaded) -> int:
    config = loaded.model.config
    return int(
        getattr(config, "image_token_id", None)
        if getattr(config, "image_token_id", None) is not None
        else config.image_token_index
    )


def hand_position_stats(loaded, rec, positions: str):
    """(fraction of positions with g > 0, mean g) [L, d_ff] over one unpadded example."""
    is_image = rec["input_ids"] == image_token_id(loaded)
    sel = {"all": torch.ones_like(is_image), "image": is_image, "text": ~is_image}[positions]
    assert sel.sum() > 0
    L = len(rec["g"])
    ap = np.stack([(rec["g"][l][sel] > 0).double().mean(0).numpy() for l in range(L)])
    ma = np.stack([rec["g"][l][sel].mean(0).numpy() for l in range(L)])
    return ap, ma


def first_token(tokenizer, text: str) -> int:
    special = set(tokenizer.all_special_ids) | ({tokenizer.unk_token_id} - {None})
    return next(t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t not in special)


def gold_first_token(tokenizer, task_name: str, item) -> int:
    if task_name == "retrieval":
        return first_token(tokenizer, " Yes")
    if task_name == "caption":
        return first_token(tokenizer, item.prompts[0].answer)
    return first_token(tokenizer, item.data["answer"] if task_name == "vqa" else item.data["text"])


def weights(loaded):
    lm = loaded.model.model.language_model
    W_U = loaded.model.lm_head.weight.detach().double()
    gamma = lm.norm.weight.detach().double()
    eps = lm.norm.variance_epsilon
    W_down = [b.mlp.down_proj.weight.detach().double() for b in lm.layers]  # [hidden, d_ff]
    return W_U, gamma, eps, W_down


def rms(v: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt(v.pow(2).mean(-1) + eps)


# ======================================================================= AP / MA


@pytest.mark.parametrize("positions", ["all", "image", "text"])
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_ap_and_ma_match_hook_counts(tiny, tmp_path, arch, positions):
    loaded = tiny(arch)
    runner = runner_for(loaded, tmp_path, batch_size=2)  # two examples of different lengths: padded
    td = runner.context("vqa", {}).td
    hand = [hand_position_stats(loaded, rec, positions) for rec in hand_records(loaded, td)]
    ap = np.mean([a for a, _ in hand], axis=0)
    ma = np.mean([m for _, m in hand], axis=0)
    got_ap = runner.rank("vqa", "ap", options={"positions": positions}).matrix()
    got_ma = runner.rank("vqa", "ma", options={"positions": positions}).matrix()
    np.testing.assert_allclose(got_ap, ap, atol=1e-6)
    np.testing.assert_allclose(got_ma, ma, rtol=1e-4, atol=1e-5)
    assert 0 < ap.mean() < 1


def test_ap_uses_the_positive_candidate_for_retrieval(tiny, tmp_path):
    loaded = tiny("llava")
    runner = runner_for(loaded, tmp_path)
    td = runner.context("retrieval", {}).td
    ap = np.mean([hand_position_stats(loaded, rec, "all")[0] for rec in hand_records(loaded, td)], axis=0)
    np.testing.assert_allclose(runner.rank("retrieval", "ap").matrix(), ap, atol=1e-6)


def test_baselines_read_the_reference_compat_prompt(tiny, tmp_path, monkeypatch):
    from hones_nn.models.adapters import ArchitectureAdapter

    loaded = tiny("llava")
    runner = runner_for(loaded, tmp_path, reference_compat=True)
    # (the tiny WordPiece tokenizer cannot tell the two prompts apart, so record the flag)
    seen = []
    original = ArchitectureAdapter.prompt

    def recording(self, processor, user_text, reference_compat=False, **kwargs):
        seen.append(reference_compat)
        return original(self, processor, user_text, reference_compat, **kwargs)

    monkeypatch.setattr(ArchitectureAdapter, "prompt", recording)
    for method in ("ap", "ape", "dla", "llm-knowledge", "pan-act"):
        runner.rank("ocr", method)
    assert seen and all(seen)
    td = runner.context("vqa", {}).td
    hand = []
    for item in td.items:
        p = item.prompts[0]
        text = f"USER: <image>\n{p.user_text}\nASSISTANT:"  # the reference code's raw LLaVA prompt
        rec = hand_record(
            loaded, dict(loaded.processor(images=[td.images[p.image_index]], text=[text], return_tensors="pt"))
        )
        hand.append(hand_position_stats(loaded, rec, "text")[1])
    got = runner.rank("vqa", "ma", options={"positions": "text"}).matrix()
    np.testing.assert_allclose(got, np.mean(hand, axis=0), rtol=1e-4, atol=1e-5)


# ======================================================================= APE


def hand_ape(rates: np.ndarray):
    """(scores, entropy) by the spec, one neuron at a time."""
    T, L, F = rates.shape
    threshold = np.percentile(rates, 95)
    scores, entropy = np.zeros((L, F)), np.zeros((L, F))
    for l in range(L):
        for i in range(F):
            p = rates[:, l, i]
            if p.max() < threshold or p.sum() == 0:
                entropy[l, i] = math.inf
                scores[l, i] = -(math.log(T) + 1) - (1 - p.max())
            else:
                q = p / p.sum()
                entropy[l, i] = -sum(x * math.log(x) for x in q if x > 0)
                scores[l, i] = -entropy[l, i]
    return scores, entropy


@pytest.mark.parametrize("arch", ["llava", "qwen2.5-vl"])
def test_ape_matches_hand_entropy(tiny, tmp_path, arch):
    loaded = tiny(arch)
    runner = runner_for(loaded, tmp_path)
    rates = []
    for task in TASKS:
        td = runner.context(task, {}).td
        rates.append(np.mean([hand_position_stats(loaded, rec, "all")[0] for rec in hand_records(loaded, td)], axis=0))
    rates = np.stack(rates)
    scores, entropy = hand_ape(rates)
    table = runner.rank("ocr", "ape")
    np.testing.assert_allclose(table.matrix(), scores, atol=1e-6)
    finite = np.isfinite(entropy)
    assert 0 < finite.sum() < entropy.size
    # rank 1 = lowest entropy; every filtered (H = +inf) neuron ranks below every kept one
    flat_rank = table.rank.reshape(entropy.shape)
    best = np.unravel_index(np.argmin(np.where(finite, entropy, np.inf)), entropy.shape)
    assert flat_rank[best] == 1
    assert flat_rank[finite].max() < flat_rank[~finite].min()
    # the default ranking does not depend on the task
    np.testing.assert_allclose(runner.rank("vqa", "ape").matrix(), scores, atol=1e-6)
    # own_task: neurons that fire most on another task go below all others
    own = runner.rank("ocr", "ape", options={"own_task": True}).rank.reshape(entropy.shape)
    mine = rates.argmax(0) == TASKS.index("ocr")
    assert own[mine].max() < own[~mine].min()


def test_ape_bernoulli_variant_by_hand(tiny, tmp_path):
    loaded = tiny("llava")
    runner = runner_for(loaded, tmp_path)
    td = runner.context("caption", {}).td
    p = np.mean([hand_position_stats(loaded, rec, "text")[0] for rec in hand_records(loaded, td)], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        hb = np.nan_to_num(-p * np.log(p)) + np.nan_to_num(-(1 - p) * np.log(1 - p))
    got = runner.rank("caption", "ape", options={"variant": "bernoulli", "positions": "text"}).matrix()
    np.testing.assert_allclose(got, hb, atol=1e-6)


# ======================================================================= DLA


@pytest.mark.parametrize("task", ["vqa", "retrieval"])
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_dla_matches_formula_and_reconstructs_the_logit(tiny, tmp_path, arch, task):
    loaded = tiny(arch)
    runner = runner_for(loaded, tmp_path)
    ctx = runner.context(task, {})
    tokenizer = ctx.engine.tokenizer
    W_U, gamma, eps, W_down = weights(loaded)
    got = dla_per_example(ctx, [0, 1]).numpy()  # batched and left-padded
    for n, (item, rec) in enumerate(zip(ctx.td.items, hand_records(loaded, ctx.td))):
        y = gold_first_token(tokenizer, task, item)
        sigma = rms(rec["h"][-1], eps)
        direction = gamma * W_U[y]
        hand = np.stack([(rec["z"][l][-1] * (direction @ W_down[l]) / sigma).numpy() for l in range(len(W_down))])
        np.testing.assert_allclose(got[n], hand, rtol=1e-4, atol=1e-5)
        # all neurons + the non-MLP residual (embeddings, attention) = the logit, frozen norm, not centred
        rest = rec["h"][-1] - sum(rec["mlp"][l][-1] for l in range(len(W_down)))
        total = got[n].sum() + float(direction @ rest / sigma)
        assert total == pytest.approx(float(rec["logits"][-1, y]), rel=1e-4, abs=1e-4)
    table = runner.rank(task, "dla").matrix()
    np.testing.assert_allclose(table, got.mean(0), rtol=1e-10, atol=1e-12)


def test_dla_contrast_is_a_logit_difference(tiny, tmp_path):
    loaded = tiny("qwen2-vl")
    runner = runner_for(loaded, tmp_path)
    ctx = runner.context("retrieval", {})
    tokenizer = ctx.engine.tokenizer
    yes, no = first_token(tokenizer, " Yes"), first_token(tokenizer, " No")
    W_U, gamma, eps, W_down = weights(loaded)
    rec = hand_record(
        loaded,
        hand_inputs(
            loaded,
            ctx.td.images[prompt_of("retrieval", ctx.td.items[0]).image_index],
            prompt_of("retrieval", ctx.td.items[0]).user_text,
        ),
    )
    got = dla_per_example(ctx, [0], contrast="decision")[0].numpy()
    sigma = rms(rec["h"][-1], eps)
    hand = np.stack(
        [(rec["z"][l][-1] * ((gamma * (W_U[yes] - W_U[no])) @ W_down[l]) / sigma).numpy() for l in range(len(W_down))]
    )
    np.testing.assert_allclose(got, hand, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="retrieval only"):
        runner.rank("vqa", "dla", options={"contrast": "decision"})


# ======================================================================= LLM-Knowledge


@pytest.mark.parametrize("norm_scale", ["final", "residual", "live"])
@pytest.mark.parametrize("arch", ["llava", "qwen2.5-vl"])
def test_llm_knowledge_equals_brute_force_log_prob_difference(tiny, tmp_path, arch, norm_scale):
    loaded = tiny(arch)
    runner = runner_for(loaded, tmp_path)
    ctx = runner.context("vqa", {})
    tokenizer = ctx.engine.tokenizer
    W_U, gamma, eps, W_down = weights(loaded)
    got = llm_knowledge_per_example(ctx, [0, 1], norm_scale=norm_scale, chunk=50).numpy()  # chunks 50, 50, 28
    rng = np.random.default_rng(0)
    for n, (item, rec) in enumerate(zip(ctx.td.items, hand_records(loaded, ctx.td))):
        y = gold_first_token(tokenizer, "vqa", item)
        for l in range(len(W_down)):
            r, z = rec["r"][l][-1], rec["z"][l][-1]
            for i in list(rng.choice(W_down[l].shape[1], 4, replace=False)) + [int(z.abs().argmax())]:
                v = r + z[i] * W_down[l][:, i]
                sig_base = {"final": rms(rec["h"][-1], eps), "residual": rms(r, eps), "live": rms(r, eps)}[norm_scale]
                sig_v = rms(v, eps) if norm_scale == "live" else sig_base
                logp_v = torch.log_softmax(W_U @ (gamma * v) / sig_v, -1)[y]
                logp_r = torch.log_softmax(W_U @ (gamma * r) / sig_base, -1)[y]
                assert got[n, l, i] == pytest.approx(float(logp_v - logp_r), rel=1e-4, abs=1e-6), (n, l, i)
    assert np.abs(got).max() > 0


def test_llm_knowledge_mean_over_caption_target_tokens(tiny, tmp_path):
    loaded = tiny("llava-next")
    runner = runner_for(loaded, tmp_path, limit=1)
    ctx = runner.context("caption", {"target": "mean"})
    tokenizer = ctx.engine.tokenizer
    W_U, gamma, eps, W_down = weights(loaded)
    item = ctx.td.items[0]
    ids = tokenizer(item.prompts[0].answer, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    rec = hand_records(loaded, ctx.td)[0]
    got = runner.rank("caption", "llm-knowledge", options={"target": "mean"}).matrix()
    sigma = rms(rec["h"][-1], eps)
    l, r, z = 1, rec["r"][1][-1], rec["z"][1][-1]
    for i in (0, 17, 99):
        v = r + z[i] * W_down[l][:, i]
        logp_v = torch.log_softmax(W_U @ (gamma * v) / sigma, -1)[ids]
        diff = logp_v - torch.log_softmax(W_U @ (gamma * r) / sigma, -1)[ids]
        assert got[l, i] == pytest.approx(float(diff.mean()), rel=1e-4, abs=1e-6)


# ======================================================================= Pan et al.


@pytest.mark.parametrize("task", ["vqa", "caption", "retrieval"])
@pytest.mark.parametrize("arch", ["llava", "qwen2-vl"])
def test_pan_act_by_hand(tiny, tmp_path, arch, task):
    loaded = tiny(arch)
    runner = runner_for(loaded, tmp_path)
    ctx = runner.context(task, {})
    tokenizer = ctx.engine.tokenizer
    W_U, _, _, W_down = weights(loaded)
    per_example = []
    for item, rec in zip(ctx.td.items, hand_records(loaded, ctx.td)):
        if task == "caption":
            words = [w.strip(".,").lower() for w in item.data["references"][0].split()]
            content = [w for w in words if w not in {"a", "an", "the", "and", "on", "of", "in", "with", "next", "to"}]
            ids = [first_token(tokenizer, w) for w in content]
            assert ids == caption_target_ids(tokenizer, item.data["references"][0])
            u = W_U[ids].mean(0)
        else:
            u = W_U[gold_first_token(tokenizer, task, item)]
        per_example.append(np.stack([(rec["g"][l][-1] * (u @ W_down[l])).numpy() for l in range(len(W_down))]))
    got = runner.rank(task, "pan-act").matrix()
    np.testing.assert_allclose(got, np.mean(per_example, axis=0), rtol=1e-4, atol=1e-6)


# ======================================================================= Random


def test_random_is_seeded_and_deterministic(tiny, tmp_path):
    loaded = tiny("llava")
    L, F = loaded.sizes.num_layers, loaded.sizes.d_ff
    a = runner_for(loaded, tmp_path / "a", seed=3).rank("vqa", "random").matrix()
    b = runner_for(loaded, tmp_path / "b", seed=3).rank("ocr", "random").matrix()
    c = runner_for(loaded, tmp_path / "c", seed=4).rank("vqa", "random").matrix()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sorted(a.reshape(-1).tolist()) == list(range(L * F))
    np.testing.assert_array_equal(a.reshape(-1), np.random.default_rng(3).permutation(L * F))


# ======================================================================= every recipe, every architecture


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_every_baseline_runs_on_every_task_and_tiny_architecture(arch, tmp_path, tiny_model):
    loaded = tiny_model(arch)
    L, F = loaded.sizes.num_layers, loaded.sizes.d_ff
    runner = runner_for(loaded, tmp_path)
    for task in TASKS:
        for method in BASELINES:
            table = runner.rank(task, method)
            assert table.kind == "neurons" and table.shape == (L, F), (task, method)
            assert np.isfinite(table.score).all() and np.abs(table.score).max() > 0, (task, method)
            assert sorted(table.rank.tolist()) == list(range(1, L * F + 1))
            assert table.meta["method"] == method and table.meta["task"] == task
    assert not any((tmp_path / ".checkpoints").glob("*/shard-*"))


def test_registry_names_costs_and_option_errors(tiny, tmp_path):
    for name in BASELINES:
        cls = get_method(name)
        assert METHODS[name] is cls and cls.cost and cls.summary
    runner = runner_for(tiny("llava"), tmp_path, limit=1)
    for method, options, message in [
        ("ap", {"positions": "audio"}, "positions"),
        ("ma", {"positions": "pixels"}, "positions"),
        ("ape", {"variant": "gini"}, "variant"),
        ("dla", {"target": "last"}, "target"),
        ("llm-knowledge", {"norm_scale": "none"}, "norm_scale"),
    ]:
        with pytest.raises(ValueError, match=message):
            runner.rank("vqa", method, options=options)


# ======================================================================= the shared target option


def test_dla_idf_target_is_the_idf_weighted_mean_of_all_references(tiny, tmp_path):
    """--target idf on DLA: W_U[y] becomes HONES's caption target, sum_t idf_t W_U[t] / sum_t
    idf_t over the tokens of the first 5 references, idf over images (by hand here)."""
    import math

    loaded = tiny("llava-next")
    runner = runner_for(loaded, tmp_path, limit=3)
    ctx = runner.context("caption", {"target": "idf"})
    tokenizer = ctx.engine.tokenizer
    special = set(tokenizer.all_special_ids) | {tokenizer.unk_token_id}

    def tokens(text):
        return [t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t not in special]

    docs = [{t for r in item.data["references"] for t in tokens(r)} for item in ctx.td.items]
    n = len(docs)
    W_U, gamma, eps, W_down = weights(loaded)
    got = dla_per_example(ctx, [0, 1, 2], mode="idf", context=ctx.td.task.direction_context(tokenizer, ctx.td.items))
    for k, (item, rec) in enumerate(zip(ctx.td.items, hand_records(loaded, ctx.td))):
        ids = [t for r in item.data["references"][:5] for t in tokens(r)]
        w = torch.tensor([math.log((n + 1) / (sum(t in d for d in docs) + 1)) + 1 for t in ids])
        assert len(set(w.tolist())) > 1  # the weights do differ
        direction = gamma * (W_U[ids] * w[:, None]).sum(0) / w.sum()
        sigma = rms(rec["h"][-1], eps)
        hand = np.stack([(rec["z"][l][-1] * (direction @ W_down[l]) / sigma).numpy() for l in range(len(W_down))])
        np.testing.assert_allclose(got[k].numpy(), hand, rtol=1e-4, atol=1e-5)
    table = runner.rank("caption", "dla", options={"target": "idf"})
    assert table.meta["target"] == "idf"
    np.testing.assert_allclose(table.matrix(), got.numpy().mean(0), rtol=1e-10, atol=1e-12)
    # the old name of "all" still works and is recorded under the new one
    assert runner.rank("caption", "dla", options={"target": "mean"}).meta["target"] == "all"
