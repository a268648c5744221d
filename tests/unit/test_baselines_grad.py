"""Gradient and patching baselines against hand computation: Grad, QRNCA, group patching.

Reference values are computed WITHOUT nnsight and without the methods' code: plain
PyTorch forwards of the Hugging Face model with torch hooks (``register_forward_pre_hook``
records or edits a module's input) and ``torch.autograd.grad``; the inputs come from the
adapter's encoder (the same one-example encoding a user would build). One CPU thread,
tiny random models only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

from hones_nn.embedded.tiny_random import TINY_ARCHITECTURES  # noqa: E402
from hones_nn.engine.core import Engine  # noqa: E402
from hones_nn.engine.encoding import repeat_inputs  # noqa: E402
from hones_nn.methods.base import METHODS, RunContext, get_method  # noqa: E402
from hones_nn.methods.grad import grad_scores  # noqa: E402
from hones_nn.methods.group_patching import blocks_of, corruption, example_scores  # noqa: E402
from hones_nn.methods.qrnca import cluster_stats, combine, ig_alphas, integrated_gradients  # noqa: E402
from hones_nn.runner.pipeline import Runner  # noqa: E402
from hones_nn.tasks.task_data import prepare_task  # noqa: E402
from tests.helpers import models  # noqa: E402
from tests.helpers.torch_hooks import text_layers, torch_hooks  # noqa: E402

TASKS = ("vqa", "ocr", "caption", "retrieval")

# ======================================================================= plain-torch helpers


def example_prompt(td, item):
    if td.task.name == "retrieval":
        return item.prompts[item.data["positive_index"]]
    return item.prompts[0]


def one_example(loaded, td, item):
    p = example_prompt(td, item)
    return loaded.adapter.encode(loaded.processor, [td.images[p.image_index]], [p.user_text]).inputs


def gold_id(tokenizer, td, item) -> int:
    text = " Yes" if td.task.name == "retrieval" else example_prompt(td, item).answer
    return tokenizer(text, add_special_tokens=False)["input_ids"][0]


def image_token(model) -> int:
    config = model.config
    value = getattr(config, "image_token_id", None)
    return value if value is not None else config.image_token_index


# ======================================================================= fixtures

_MODELS: dict = {}


def setup(arch, task="vqa", limit=3, batch_size=8, options=None):
    if arch not in _MODELS:
        loaded = models.tiny_model(arch)  # the session's shared model (the tiny_model fixture)
        _MODELS[arch] = (loaded, Engine(loaded))
    loaded, engine = _MODELS[arch]
    td = prepare_task(loaded, task, split="discovery", limit=limit)
    ctx = RunContext(
        loaded=loaded, engine=engine, td=td, batch_size=batch_size, progress=False, options=dict(options or {})
    )
    return loaded, engine, td, ctx


# ======================================================================= Grad


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_grad_equals_activation_times_gradient(arch):
    loaded, engine, td, ctx = setup(arch, "vqa", limit=3, batch_size=2)  # 2 rows: padding in the first batch
    model = loaded.model
    flags = [p.requires_grad for p in model.parameters()]
    scores = grad_scores(ctx, [0, 1, 2])
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    layers = text_layers(model)
    for k, item in enumerate(td.items):
        inputs = one_example(loaded, td, item)
        zs = {}
        with torch_hooks() as handles:
            for i, layer in enumerate(layers):
                handles.append(
                    layer.mlp.down_proj.register_forward_pre_hook(lambda mod, args, i=i: zs.__setitem__(i, args[0]))
                )
            logits = model(**inputs).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)[gold_id(engine.tokenizer, td, item)]
        grads = torch.autograd.grad(logp, [zs[i] for i in range(len(layers))])
        image = inputs["input_ids"][0] == image_token(model)
        expected = torch.stack([(zs[i][0] * grads[i][0])[image].amax(0) for i in range(len(layers))]).double()
        scale = expected.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(scores[k], expected.detach(), atol=1e-5 * scale, rtol=1e-4)


# ======================================================================= QRNCA


def ig_by_hand(model, inputs, layer: int, y: int, alphas: torch.Tensor) -> torch.Tensor:
    """z_l(T) * mean_k dp(y)/dz_l(T) at alpha_k z_l(T): one plain forward/backward per step."""
    down = text_layers(model)[layer].mlp.down_proj
    captured = {}
    with torch_hooks() as handles, torch.no_grad():
        handles.append(
            down.register_forward_pre_hook(lambda mod, args: captured.__setitem__("z", args[0][0, -1].clone()))
        )
        model(**inputs)
    z = captured["z"]
    total = torch.zeros_like(z)
    for alpha in alphas:
        leaf = (alpha * z).clone().requires_grad_(True)

        def put(mod, args, leaf=leaf):
            x = args[0].clone()
            x[:, -1] = leaf
            return (x,)

        with torch_hooks() as handles:
            handles.append(down.register_forward_pre_hook(put))
            p = torch.softmax(model(**inputs).logits[0, -1].float(), -1)[y]
        total += torch.autograd.grad(p, leaf)[0]
    return (z * total / len(alphas)).double()


@pytest.mark.parametrize("arch", ["llava", "qwen2.5-vl"])
@pytest.mark.parametrize("rule", ["right", "midpoint"])
def test_qrnca_ig_equals_plain_riemann_sum(arch, rule):
    steps = 6
    for batch_size in (steps, 2 * steps):  # one layer per forward, then both layers in one forward
        loaded, engine, td, ctx = setup(arch, "vqa", limit=1, batch_size=batch_size)
        item = td.items[0]
        ig = integrated_gradients(ctx, item, steps=steps, rule=rule)
        inputs = one_example(loaded, td, item)
        y = gold_id(engine.tokenizer, td, item)
        for layer in range(ctx.sizes.num_layers):
            expected = ig_by_hand(loaded.model, inputs, layer, y, ig_alphas(steps, rule))
            scale = expected.abs().max().item()
            torch.testing.assert_close(ig[layer], expected, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llava-next", "qwen2-vl"])
def test_qrnca_completeness(arch):
    """Many steps: sum_i IG_{l,i} = p(y | z) - p(y | z_l(T) = 0), the IG completeness axiom."""
    loaded, engine, td, ctx = setup(arch, "ocr", limit=1, batch_size=64)
    item = td.items[0]
    ig = integrated_gradients(ctx, item, steps=64, rule="midpoint")
    inputs = one_example(loaded, td, item)
    y = gold_id(engine.tokenizer, td, item)
    model = loaded.model
    with torch.no_grad():
        p = torch.softmax(model(**inputs).logits[0, -1].float(), -1)[y].item()
        for layer in range(ctx.sizes.num_layers):

            def zero(mod, args):
                x = args[0].clone()
                x[:, -1] = 0
                return (x,)

            with torch_hooks() as handles:
                handles.append(text_layers(model)[layer].mlp.down_proj.register_forward_pre_hook(zero))
                p0 = torch.softmax(model(**inputs).logits[0, -1].float(), -1)[y].item()
            assert abs(p - p0) > 1e-7
            assert ig[layer].sum().item() == pytest.approx(p - p0, rel=2e-3, abs=1e-8)


def test_qrnca_clusters_and_inverse_cluster_attribution():
    rng = np.random.default_rng(0)
    n, shape = 10, (2, 6)
    igs = [torch.from_numpy(rng.normal(size=shape)) for _ in range(n)]
    igs[3] = -igs[3].abs()  # no neuron raises p(y): empty cluster
    na_sum, occ = np.zeros(shape), np.zeros(shape)
    for ig in igs:
        na, member = cluster_stats(ig, 0.2)
        top = ig.max().item()
        expect_member = (ig.numpy() > 0.2 * top) if top > 0 else np.zeros(shape, bool)
        np.testing.assert_array_equal(member.astype(bool), expect_member)
        if expect_member.any():
            vals = np.where(expect_member, ig.numpy(), 0.0)
            np.testing.assert_allclose(na, vals / vals.sum())
        else:
            assert not na.any()
        na_sum, occ = na_sum + na, occ + member
    scores, common = combine(na_sum, occ, n, 0.3)
    for layer in range(shape[0]):
        for i in range(shape[1]):
            o = occ[layer, i]
            if o == 0 or o > 3:  # never clustered, or common to more than 30% of 10 examples
                assert scores[layer, i] == 0.0
            else:
                assert scores[layer, i] == pytest.approx(math.log(n / (o + 1)) * na_sum[layer, i] / n)
    np.testing.assert_array_equal(common, occ > 3)


def test_qrnca_options_are_checked():
    with pytest.raises(ValueError, match="Riemann rule"):
        ig_alphas(4, "left")
    with pytest.raises(ValueError, match="at least 1"):
        ig_alphas(0)
    assert ig_alphas(4).tolist() == [0.25, 0.5, 0.75, 1.0]
    assert ig_alphas(2, "midpoint").tolist() == [0.25, 0.75]


# ======================================================================= group patching


def manual_metric(model, inputs, noise, patch, clean_z, y, t_star):
    """logit_y - logit_t* at T of the noised run, z_l(T)[idx] <- clean (plain hooks)."""
    layers = text_layers(model)
    with torch_hooks() as handles, torch.no_grad():
        if noise is not None:
            handles.append(
                layers[0].register_forward_pre_hook(
                    lambda mod, args, kwargs: ((args[0] + noise,) + args[1:], kwargs), with_kwargs=True
                )
            )
        if patch is not None:
            layer, idx = patch

            def put(mod, args):
                x = args[0].clone()
                x[0, -1, idx] = clean_z[layer][idx]
                return (x,)

            handles.append(layers[layer].mlp.down_proj.register_forward_pre_hook(put))
        logits = model(**inputs).logits[0, -1].float()
    return (logits[y] - logits[t_star]).item(), logits


@pytest.mark.parametrize(
    "arch,task", [("llava", "vqa"), ("llava-next", "retrieval"), ("qwen2-vl", "caption"), ("qwen2.5-vl", "ocr")]
)
def test_group_patching_matches_manual_patch(arch, task):
    loaded, engine, td, ctx = setup(arch, task, limit=1, batch_size=5)
    model, item = loaded.model, td.items[0]
    block = 48  # d_ff 128: blocks of 48, 48, 32 per layer
    result = example_scores(ctx, item, block=block, refine=2, beam=2, unrefined="zero")
    assert result is not None
    inputs = one_example(loaded, td, item)
    # the clean run, by hand: layer 0's input (merged embeddings) and z(T) of every layer
    layers, seen = text_layers(model), {}
    with torch_hooks() as handles, torch.no_grad():
        handles.append(
            layers[0].register_forward_pre_hook(
                lambda mod, args, kwargs: seen.__setitem__("h0", args[0][0].clone()), with_kwargs=True
            )
        )
        for i, layer in enumerate(layers):
            handles.append(
                layer.mlp.down_proj.register_forward_pre_hook(
                    lambda mod, args, i=i: seen.__setitem__(i, args[0][0, -1].clone())
                )
            )
        clean_logits = model(**inputs).logits[0, -1].float()
    clean_z = [seen[i] for i in range(len(layers))]
    _, noise = corruption(ctx, item, seen["h0"], {k: v for k, v in inputs.items()})
    image = inputs["input_ids"][0] == image_token(model)
    sigma = seen["h0"][image].float().std().item()
    assert not noise[~image].any() and noise[image].std().item() == pytest.approx(3 * sigma, rel=0.15)
    y = gold_id(engine.tokenizer, td, item)
    _, corrupt_logits = manual_metric(model, inputs, noise, None, clean_z, y, 0)
    order = torch.argsort(corrupt_logits, descending=True, stable=True)
    t_star = int(order[0]) if int(order[0]) != y else int(order[1])
    m_clean = (clean_logits[y] - clean_logits[t_star]).item()
    m_corrupt = (corrupt_logits[y] - corrupt_logits[t_star]).item()
    assert result["m_clean"] == pytest.approx(m_clean, abs=1e-4)
    assert result["m_corrupt"] == pytest.approx(m_corrupt, abs=1e-4)
    blocks = blocks_of(len(layers), ctx.sizes.d_ff, block)
    expected = [
        (manual_metric(model, inputs, noise, b, clean_z, y, t_star)[0] - m_corrupt) / (m_clean - m_corrupt)
        for b in blocks
    ]
    np.testing.assert_allclose(result["blocks"].numpy(), expected, atol=1e-3 * max(1.0, max(map(abs, expected))))
    # single neurons reached by the halving keep their own recovery ("zero": nothing else scores)
    singles = torch.nonzero(result["neurons"]).tolist()
    assert 0 < len(singles) < 2 * block  # only the halving's single neurons, a few per refined block
    for layer, i in singles[:3]:
        m, _ = manual_metric(model, inputs, noise, (layer, torch.tensor([i])), clean_z, y, t_star)
        assert result["neurons"][layer, i].item() == pytest.approx((m - m_corrupt) / (m_clean - m_corrupt), abs=1e-3)


def test_group_patching_share_rule_and_counterfactual():
    loaded, engine, td, ctx = setup("llava", "vqa", limit=1, batch_size=16)
    item = td.items[0]
    result = example_scores(ctx, item, block=64, refine=1, beam=1, unrefined="share")
    blocks = blocks_of(ctx.sizes.num_layers, ctx.sizes.d_ff, 64)
    top = int(torch.argmax(result["blocks"]))
    for b, (layer, idx) in enumerate(blocks):
        if b != top:  # never refined: the block's recovery shared over its neurons
            torch.testing.assert_close(
                result["neurons"][layer, idx],
                torch.full((len(idx),), result["blocks"][b].item() / len(idx), dtype=torch.float64),
            )
    # a counterfactual image instead of noise
    gray = Image.new("RGB", (64, 64), (128, 128, 128))
    ctx.options["counterfactual"] = gray
    other = example_scores(ctx, item, block=64, refine=1, beam=1)
    assert other is not None and np.isfinite(other["neurons"].numpy()).all()
    assert other["m_corrupt"] != pytest.approx(result["m_corrupt"])


def test_group_patching_without_effect_is_an_error(tmp_path, tiny_model):
    runner = Runner(loaded=tiny_model("llava"), out_dir=tmp_path, limit=2, progress=False)
    with pytest.raises(ValueError, match="counterfactual"):
        runner.rank("vqa", "group-patching", options={"noise_scale": 0.0, "block": 64})


def test_repeat_inputs_matches_processor_batching():
    loaded, engine, td, ctx = setup("qwen2.5-vl", "vqa", limit=1)
    item = td.items[0]
    p = item.prompts[0]
    one = loaded.adapter.encode(loaded.processor, [td.images[p.image_index]], [p.user_text]).inputs
    three = loaded.adapter.encode(loaded.processor, [td.images[p.image_index]] * 3, [p.user_text] * 3).inputs
    rep = repeat_inputs(one, 3)
    assert set(rep) == set(three)
    for key in three:
        torch.testing.assert_close(rep[key], three[key])


# ======================================================================= the runner, every architecture


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize(
    "method,options",
    [
        ("grad", {}),
        ("qrnca", {"steps": 4}),
        ("group-patching", {"block": 64, "refine": 2, "beam": 2}),
    ],
)
def test_runner_rank_every_architecture(tmp_path, tiny_model, arch, method, options):
    # every method sees every task over the four architectures
    task = TASKS[(TINY_ARCHITECTURES.index(arch) + ["grad", "qrnca", "group-patching"].index(method)) % 4]
    runner = Runner(loaded=tiny_model(arch), out_dir=tmp_path, limit=2, batch_size=8, progress=False)
    if method == "qrnca":  # 2 examples: every cluster neuron is common to > 30% of them
        with pytest.warns(UserWarning, match="kept no neuron"):
            table = runner.rank(task, method, options=options)
    else:
        table = runner.rank(task, method, options=options)
    sizes = runner.loaded.adapter.sizes(runner.loaded.model)
    assert table.kind == "neurons" and table.shape == (sizes.num_layers, sizes.d_ff)
    matrix = table.matrix()
    assert np.isfinite(matrix).all()
    assert table.meta["method"] == method and table.meta["task"] == task
    if method != "qrnca":
        assert np.abs(matrix).max() > 0
    assert not list((tmp_path / ".checkpoints").glob("*/shard-*"))  # checkpoints removed after the table


def test_qrnca_keeps_neurons_with_enough_examples(tmp_path, tiny_model):
    runner = Runner(loaded=tiny_model("qwen2-vl"), out_dir=tmp_path, limit=6, batch_size=8, progress=False)
    table = runner.rank("vqa", "qrnca", options={"steps": 4})
    matrix = table.matrix()
    assert table.meta["n_kept"] > 0 and (matrix > 0).sum() == table.meta["n_kept"]
    assert (matrix >= 0).all()


def test_registered_with_costs():
    for name in ("grad", "qrnca", "group-patching"):
        cls = get_method(name)
        assert METHODS[name] is cls and cls.cost and cls.summary and cls.kind == "neurons"
