"""Wang et al.'s fuzzy sets: patch noise placement, membership formula, modulation factor, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import GenerationConfig

from hones_nn.cli.main import cli
from hones_nn.concepts.catalog import concept_images
from hones_nn.concepts.fuzzy import declarative, fuzzy_membership, read_sets, write_sets
from hones_nn.concepts.modulate import ExampleSets, setting_lambdas
from hones_nn.concepts.perturb import PatchNoise, generate_recording, patch_grid, patch_mask
from hones_nn.engine.encoding import encode_prompts
from hones_nn.interventions.base import apply_edits
from hones_nn.interventions.rows import RowNeuronFactor
from hones_nn.tasks.base import ImageSource, Prompt
from hones_nn.tasks.prompts import instruction
from hones_nn.tasks.task_data import prepare_task
from tests.helpers.torch_hooks import text_layers, torch_hooks


@pytest.fixture(scope="module")
def discovery(benchmark_dir):
    from hones_nn.data.dataset import load_split

    return load_split(benchmark_dir, "discovery")


# ------------------------------------------------------------------ patch noise


def test_patch_mask_pools_pixels_onto_the_grid(embedded):
    grid = patch_grid(embedded)
    assert (grid.rows, grid.cols) == (6, 6) and grid.has_cls
    pixels = np.zeros((48, 48), dtype=bool)
    pixels[8:16, 16:24] = True  # exactly patch (1, 2)
    pixels[47, 47] = True  # one pixel of patch (5, 5)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1, 2] = expected[5, 5] = True
    assert torch.equal(patch_mask(pixels, grid, 0.0), expected)
    expected[5, 5] = False  # 1/64 of the patch is under a 0.5 threshold
    assert torch.equal(patch_mask(pixels, grid, 0.5), expected)


def test_patch_noise_lands_exactly_on_the_masked_patches(embedded, embedded_engine, discovery):
    grid = patch_grid(embedded)
    chosen = concept_images(discovery, "red", limit=2, split="discovery")
    masks = torch.stack([patch_mask(ci.mask, grid) for ci in chosen])
    assert masks.any() and not masks.all()
    images = ImageSource(discovery)
    prompts = [Prompt(ci.image_id, ci.row, instruction("llava", "caption"), None) for ci in chosen]
    enc = encode_prompts(embedded, images, prompts)
    hidden = embedded.model.config.vision_config.hidden_size
    noise = PatchNoise(masks, [11, 12], hidden)
    envoy = embedded_engine.envoy
    clean = generate_recording(embedded, envoy, enc.inputs, max_new_tokens=4, keep_patch_embeddings=True)
    noisy = generate_recording(embedded, envoy, enc.inputs, noise, max_new_tokens=4, keep_patch_embeddings=True)
    before, after = clean.patch_embeddings, noisy.patch_embeddings  # [B, D, rows, cols]
    changed = (before != after).any(dim=1)  # [B, rows, cols]
    assert torch.equal(changed, masks)  # every masked patch changed, no other patch touched
    sigma = before.std(dim=(1, 2, 3), keepdim=True)
    expected = noise.unit * sigma
    m = masks.unsqueeze(1).expand_as(after)
    torch.testing.assert_close(after[m], expected[m], rtol=1e-5, atol=1e-6)

    # an independent reference: the same replacement by a plain forward hook, greedy generate
    def hook(_module, _args, out):
        s = out.std(dim=(1, 2, 3), keepdim=True)
        return torch.where(masks.unsqueeze(1), noise.unit * s, out)

    conv = embedded.model.model.vision_tower.embeddings.patch_embedding
    with torch_hooks() as handles, torch.no_grad():
        handles.append(conv.register_forward_hook(hook))
        tok = embedded.tokenizer
        config = GenerationConfig(
            max_new_tokens=4,
            do_sample=False,
            num_beams=1,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
        ids = embedded.model.generate(**enc.inputs, generation_config=config)
    reference = ids[:, enc.input_ids.shape[1] :].tolist()
    eos = embedded.tokenizer.eos_token_id
    reference = [r[: r.index(eos)] if eos in r else r for r in reference]
    assert noisy.tokens == reference


# ------------------------------------------------------------------ membership


def test_membership_matches_a_hand_computation():
    # 3 images x 6 neurons, top 2 per image
    deltas = np.array(
        [
            [4.0, 1.0, 9.0, 0.0, 0.5, 0.2],  # top: 2 (9), 0 (4)
            [1.0, 0.0, 4.0, 6.0, 0.1, 0.0],  # top: 3 (6), 2 (4)
            [0.0, 0.0, 1.0, 0.0, 0.0, 2.0],  # top: 5 (2), 2 (1)
        ]
    )
    m = fuzzy_membership(deltas, top_n=2, keep_ratio=0.5)
    assert m.neurons.tolist() == [0, 2, 3, 5]
    c = {0: 1 / 3, 2: 1.0, 3: 1 / 3, 5: 1 / 3}
    s = {0: math.sqrt(4.0), 2: math.sqrt((9 + 4 + 1) / 3), 3: math.sqrt(6.0), 5: math.sqrt(2.0)}
    product = {u: c[u] * s[u] for u in c}
    low, high = min(product.values()), max(product.values())
    mu = {u: (product[u] - low) / (high - low) for u in c}
    np.testing.assert_allclose(m.stability, [c[u] for u in m.neurons])
    np.testing.assert_allclose(m.mean_delta, [s[u] for u in m.neurons])
    np.testing.assert_allclose(m.membership, [mu[u] for u in m.neurons])
    # top 50% of 4 = the 2 largest memberships: neuron 2 (mu 1) and neuron 3 (sqrt 6 / 3 > 2 / 3 > sqrt 2 / 3)
    assert m.neurons[m.in_set].tolist() == [2, 3]
    assert m.theta == pytest.approx(mu[3])


def test_membership_rejects_bad_input():
    with pytest.raises(ValueError, match="keep_ratio"):
        fuzzy_membership(np.ones((2, 4)), keep_ratio=0)
    with pytest.raises(ValueError, match="n_images"):
        fuzzy_membership(np.ones((0, 4)))


def test_declaratives_of_the_synthetic_templates():
    assert declarative("What color is the circle?", "red") == ("what", "the circle is red.")
    assert declarative("What shape is the red object?", "square") == ("what", "the red object is a square.")
    assert declarative("How many shapes are there?", "2") == ("how many", "there are 2 shapes.")
    assert declarative("Is there a red circle?", "yes") == ("is", "there is a red circle.")
    assert declarative("Is there an orange cross?", "no") == ("is", "there is no orange cross.")
    assert declarative("Why is it red?", "because") is None


# ------------------------------------------------------------------ modulation


def _fake_sets(tmp_path, d_ff, L):
    from hones_nn.concepts.fuzzy import Membership

    rng = np.random.default_rng(0)

    def member(flat):
        flat = np.array(sorted(flat))
        mu = rng.uniform(0.2, 1.0, size=flat.size)
        return Membership(flat, mu, mu, mu, np.ones(flat.size, dtype=bool), 0.2, 1)

    sets = {}
    for name in ("red", "green", "yellow", "purple", "orange", "circle", "square", "triangle", "cross", "text"):
        sets[name] = ("visual", member(rng.choice(L * d_ff, size=12, replace=False)))
    for word in ("what", "how many", "is"):
        sets[f"q:{word}"] = ("interrogative", member(rng.choice(L * d_ff, size=12, replace=False)))
    write_sets(tmp_path / "fuzzy_sets.parquet", sets, d_ff, {"shape": [L, d_ff]})
    return read_sets(tmp_path)


def test_modulation_applies_exactly_the_stated_factor(embedded, embedded_engine, benchmark_dir, tmp_path):
    sizes = embedded.sizes
    sets = _fake_sets(tmp_path, sizes.d_ff, sizes.num_layers)
    td = prepare_task(embedded, "vqa", split="dev", limit=4)
    example_sets = ExampleSets(sets, td, sizes.num_layers, sizes.d_ff, "image")
    lx, lq = 0.7, 0.3
    factors = np.stack([example_sets.factors(k, lx, lq) for k in range(td.n)])
    # the factor by hand for item 0: max membership over its concepts, its interrogative set
    k = 0
    mu_x = np.zeros((sizes.num_layers, sizes.d_ff))
    for name in example_sets.x_names[k]:
        rows = sets.members(name)
        dense = np.zeros_like(mu_x)
        dense[rows["layer"], rows["neuron"]] = rows["membership"]
        mu_x = np.maximum(mu_x, dense)
    mu_q = np.zeros_like(mu_x)
    rows = sets.members(example_sets.q_names[k])
    mu_q[rows["layer"], rows["neuron"]] = rows["membership"]
    assert example_sets.x_names[k] and example_sets.q_names[k]
    np.testing.assert_allclose(factors[k], 1 + lx * mu_x + lq * mu_q)
    fixed = example_sets.factors(k, lx, lq, fixed=True)
    np.testing.assert_allclose(fixed, 1 + lx * 0.5 * (mu_x > 0) + lq * 0.5 * (mu_q > 0))

    enc = encode_prompts(embedded, td.images, [i.prompts[0] for i in td.items], with_answers=True)
    f = torch.from_numpy(factors).float()
    envoy = embedded_engine.envoy
    with torch.no_grad(), envoy.trace(**enc.inputs):
        apply_edits(envoy, embedded.adapter, RowNeuronFactor(f).edits(td.n))
        ours = embedded.adapter.lm_head(envoy).output.save()
    with torch_hooks() as handles, torch.no_grad():
        for layer, block in enumerate(text_layers(embedded.model)):

            def hook(_m, args, layer=layer):
                return (args[0] * f[:, layer].unsqueeze(1),)

            handles.append(block.mlp.down_proj.register_forward_pre_hook(hook))
        reference = embedded.model(**enc.inputs).logits
    with torch.no_grad():
        clean = embedded.model(**enc.inputs).logits
    assert not torch.allclose(clean, reference)  # the factor matters
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_settings():
    assert setting_lambdas("Baseline", 0.5, 0.25) == (0.0, 0.0, False)
    assert setting_lambdas("X+Q-Fix", 0.5, 0.25) == (0.5, 0.25, True)
    assert setting_lambdas("Q", 0.5, 0.25) == (0.0, 0.25, False)
    with pytest.raises(ValueError, match="unknown setting"):
        setting_lambdas("Y", 1, 1)


# ------------------------------------------------------------------ CLI


def test_cli_build_table_analyze_and_evaluate(tmp_path, benchmark_dir):
    out = tmp_path / "sets"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "fuzzy",
            "build",
            "--concepts",
            "red,circle",
            "--limit",
            "3",
            "--q-limit",
            "3",
            "--no-random-control",
            "--max-new-tokens",
            "12",
            "--out-dir",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["perturbation"]) == {"red", "circle"}
    sets = read_sets(out)
    assert set(sets.visual()) == {"red", "circle"} and "q:what" in sets.interrogative()
    frame = sets.frame
    assert list(frame.columns[:4]) == ["concept", "kind", "layer", "neuron"] and "membership" in frame
    assert frame["membership"].between(0, 1).all()
    for name in sets.names:  # the set is the top 20% of U_x by membership
        rows = frame[frame["concept"] == name]
        assert rows["in_set"].sum() == math.ceil(0.2 * len(rows)) or rows["membership"].duplicated().any()
        assert rows.loc[rows["in_set"], "membership"].min() >= rows.loc[~rows["in_set"], "membership"].max()

    result = runner.invoke(cli, ["fuzzy", "table", "--sets", str(out), "--limit", "6", "--seeds", "1", "--json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert [r["setting"] for r in table["settings"]] == ["Baseline", "X", "Q", "X+Q", "X-Fix", "Q-Fix", "X+Q-Fix"]
    assert table["suppression"]["mean_neurons_zeroed"] > 0

    result = runner.invoke(cli, ["fuzzy", "analyze", "--sets", str(out), "--json"])
    assert result.exit_code == 0, result.output
    analysis = json.loads(result.stdout)
    assert (out / "spearman.png").exists() and (out / "layers.png").exists()
    rho = np.array(analysis["spearman"]["rho"])
    np.testing.assert_allclose(np.diag(rho), 1.0)

    result = runner.invoke(
        cli,
        [
            "evaluate",
            "--task",
            "vqa",
            "--limit",
            "6",
            "--modulate",
            str(out),
            "--lambda-x",
            "0.5",
            "--lambda-q",
            "0.25",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["setting"] for r in data["settings"]] == ["Baseline", "X+Q"]
    assert data["settings"][0]["metric"] == pytest.approx(table["settings"][0]["metric"])  # same 6 test questions


def test_concept_without_mask_is_an_error_that_says_so(discovery):
    from hones_nn.concepts.catalog import parse_concepts

    def drop_masks(record):
        record["objects"] = [{**o, "mask": b""} if o["color"] == "red" else o for o in record["objects"]]
        return record

    rows = discovery.select(range(30)).map(drop_masks)
    with pytest.raises(ValueError, match="'red'.*no mask"):
        parse_concepts("red", rows, "discovery")
    assert "red" not in parse_concepts("all", rows, "discovery")
    with pytest.raises(ValueError, match="unknown concept.*'unicorn'"):
        parse_concepts("circle,unicorn", rows, "discovery")


def test_interrogative_word_of_other_questions():
    from hones_nn.concepts.fuzzy import interrogative_of

    assert interrogative_of("How many shapes are there?") == "how many"
    assert interrogative_of("Where is the dog?") == "where"
    assert interrogative_of("How big is it?") == "how"
    assert interrogative_of("Name the colour.") is None


def test_cli_errors_name_the_item_and_the_fix(tmp_path, benchmark_dir):
    runner = CliRunner()
    result = runner.invoke(cli, ["fuzzy", "build", "--concepts", "red,unicorn", "--out-dir", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unicorn" in result.output and "known" in result.output
    result = runner.invoke(cli, ["fuzzy", "table", "--sets", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "fuzzy build" in result.output
    result = runner.invoke(cli, ["evaluate", "--task", "ocr", "--limit", "2", "--modulate", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "--task vqa" in result.output
    result = runner.invoke(cli, ["evaluate", "--task", "vqa", "--limit", "2", "--modulate", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "fuzzy build" in result.output
