"""The attribution-patching head pre-screen (``hones-nn heads --screen atp``).

* the screen's estimate equals the exact first-order term of the mean replacement,
  computed independently with plain torch autograd (hooks on ``o_proj``, no nnsight), on
  the four tiny architectures, and a brute-force central finite difference;
* verified heads carry exactly the V-SEAM scores; unverified heads rank below them;
* screened and exact tables share the schema; the CLI runs both ways.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.embedded.tiny_random import TINY_ARCHITECTURES, build_tiny_random
from hones_nn.methods.atp_screen import atp_scores, head_estimates, top_heads_by
from hones_nn.methods.hones import positive_tolerance
from hones_nn.runner.pipeline import Runner
from hones_nn.tasks.retrieval import decision_token_ids
from tests.helpers.torch_hooks import text_layers, torch_hooks


def _runner(loaded, out, engine=None, **kwargs) -> Runner:
    return Runner(loaded=loaded, out_dir=Path(out), progress=False, _engine=engine, **kwargs)


def _inputs(loaded, image, prompt, with_answer: bool):
    enc = loaded.adapter.encode(
        loaded.processor, [image], [prompt.user_text], answers=[prompt.answer] if with_answer else None
    )
    return enc.inputs, enc


def _delta_hook(eps_row: torch.Tensor, num_heads: int, scale: float = 1.0):
    """o_proj pre-hook: x + scale * sum_h eps[h] * Delta_h(x), Delta_h = mean of the other
    heads' slices - head h's slice (slice h only), Delta computed from the detached input."""

    def hook(module, args):
        (x,) = args
        b, s, width = x.shape
        d = width // num_heads
        xv = x.detach().reshape(b, s, num_heads, d)
        delta = (xv.sum(2, keepdim=True) - xv) / (num_heads - 1) - xv  # [b, s, H, d]
        return (x + scale * (eps_row[None, None, :, None] * delta).reshape(b, s, width),)

    return hook


def _utility(loaded, logits, enc, task_name, prompt_weights=None):
    if task_name == "retrieval":
        yes, no = decision_token_ids(loaded.processor.tokenizer)
        return logits[0, -1, yes] - logits[0, -1, no]
    ids = enc.inputs["input_ids"][0]
    n_answer = len(enc.answer_ids[0])  # answer tokens + EOS at the end of the row
    width = ids.shape[0]
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    return sum(logp[width - n_answer - 1 + j, ids[width - n_answer + j]] for j in range(n_answer - 1))


def autograd_first_order(loaded, td, item, scale: float | None = None):
    """-dU/d eps at eps = 0 for every (layer, head) [L, H] by plain autograd; with ``scale``,
    instead the central finite difference (U(-scale) - U(+scale)) / (2 scale), head by head."""
    sizes = loaded.sizes
    L, H = sizes.num_layers, sizes.num_heads
    layers = text_layers(loaded.model)
    task = td.task
    if task.name == "retrieval":
        pos = item.data["positive_index"]
        n_neg = len(item.prompts) - 1
        prompts = [(p, 1.0 if k == pos else -1.0 / n_neg) for k, p in enumerate(item.prompts)]
    else:
        prompts = [(item.prompts[0], 1.0)]
    encoded = [(_inputs(loaded, td.images[p.image_index], p, task.name != "retrieval"), w) for p, w in prompts]

    def total_u(eps, s=1.0):
        u = 0.0
        for (inputs, enc), w in encoded:
            with torch_hooks() as handles:
                for layer in range(L):
                    handles.append(
                        layers[layer].self_attn.o_proj.register_forward_pre_hook(_delta_hook(eps[layer], H, s))
                    )
                logits = loaded.model(**inputs).logits
            u = u + w * _utility(loaded, logits, enc, task.name)
        return u

    if scale is None:
        eps = torch.zeros(L, H, requires_grad=True)
        total_u(eps).backward()
        return -eps.grad.double().numpy()
    out = np.zeros((L, H))
    with torch.no_grad():
        for layer in range(L):
            for h in range(H):
                e = torch.zeros(L, H)
                e[layer, h] = 1.0
                out[layer, h] = float(total_u(e, -scale) - total_u(e, scale)) / (2 * scale)
    return out


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_screen_equals_plain_autograd_first_order_term(arch, benchmark_dir, tmp_path):
    loaded = build_tiny_random(arch)  # its own model, not tiny_model: .backward() fills parameter .grad
    ctx = _runner(loaded, tmp_path, limit=2, batch_size=2).context("vqa", {})
    est, clean = atp_scores(ctx, [0, 1])
    for i, item in enumerate(ctx.td.items):
        ref = autograd_first_order(loaded, ctx.td, item)
        assert np.abs(ref).max() > 1e-4  # heads matter: the check is not 0 == 0
        np.testing.assert_allclose(est[i], ref, rtol=1e-3, atol=1e-5 * np.abs(ref).max())
    assert np.isfinite(clean).all() and (clean < 0).all()  # log-probs


def test_screen_equals_finite_difference_and_handles_retrieval(benchmark_dir, tmp_path):
    loaded = build_tiny_random("llava")  # its own model, not tiny_model: .backward() fills parameter .grad
    runner = _runner(loaded, tmp_path, limit=1, batch_size=64)
    ctx = runner.context("vqa", {})
    est, _ = atp_scores(ctx, [0])
    fd = autograd_first_order(loaded, ctx.td, ctx.td.items[0], scale=1e-2)
    np.testing.assert_allclose(est[0], fd, rtol=2e-2, atol=2e-2 * np.abs(fd).max())
    # retrieval: the Yes-No logit-diff margin over all candidates, rows weighted +1 / -1/n_neg
    # (one row per forward, as the reference runs each candidate unpadded)
    ctx = _runner(loaded, tmp_path, limit=1, batch_size=1).context("retrieval", {})
    est, clean = atp_scores(ctx, [0])
    ref = autograd_first_order(loaded, ctx.td, ctx.td.items[0])
    np.testing.assert_allclose(est[0], ref, rtol=1e-3, atol=1e-5 * np.abs(ref).max())
    assert np.abs(ref).max() > 1e-4


def test_head_estimates_by_hand():
    torch.manual_seed(0)
    x, g = torch.randn(2, 3, 4 * 5), torch.randn(2, 3, 4 * 5)
    out = head_estimates(x, g, 4)
    xv, gv = x.view(2, 3, 4, 5), g.view(2, 3, 4, 5)
    for b in range(2):
        for h in range(4):
            other = torch.stack([xv[b, :, k] for k in range(4) if k != h]).mean(0)
            assert float(out[b, h]) == pytest.approx(float(((xv[b, :, h] - other) * gv[b, :, h]).sum()), rel=1e-5)


def test_top_heads_by_breaks_ties_by_layer_then_head():
    s = np.array([[1.0, 3.0], [3.0, 2.0]])
    assert top_heads_by(s, 3) == [(0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("utility", ["logprob", "metric"])
def test_verified_heads_carry_exact_vseam_scores(embedded, embedded_engine, benchmark_dir, tmp_path, utility):
    runner = _runner(embedded, tmp_path, embedded_engine, limit=4, batch_size=48)
    exact = runner.heads("vqa", utility=utility)
    n = 6
    screened = runner.heads("vqa", utility=utility, screen="atp", verify_top=n)
    L, H = exact.shape
    assert screened.shape == exact.shape
    # same columns, same types: the tables are interchangeable
    assert screened.table.schema.remove_metadata() == exact.table.schema.remove_metadata()
    meta = screened.meta
    assert meta["method"] == "atp-screen" and meta["screen"] == "atp" and meta["verify_top"] == n
    assert exact.meta["screen"] is None
    screen = np.asarray(meta["screen_scores"])
    verified = [tuple(h) for h in meta["verified_heads"]]
    assert verified == top_heads_by(screen, n)
    df = screened.table.to_pandas().set_index(["layer", "head"])
    ex = exact.table.to_pandas().set_index(["layer", "head"])
    for h in verified:
        assert df.loc[h, "score"] == pytest.approx(ex.loc[h, "score"], abs=1e-5)
        assert df.loc[h, "intervened_utility"] == pytest.approx(ex.loc[h, "intervened_utility"], abs=1e-5)
        assert df.loc[h, "rank"] <= n
    assert df["base_utility"].iloc[0] == pytest.approx(ex["base_utility"].iloc[0], abs=1e-5)
    rest = [(layer, h) for layer in range(L) for h in range(H) if (layer, h) not in verified]
    for h in rest:
        assert df.loc[h, "score"] == pytest.approx(screen[h], abs=1e-12)
        assert np.isnan(df.loc[h, "intervened_utility"]) and df.loc[h, "rank"] > n
    assert sorted(screened.rank.tolist()) == list(range(1, L * H + 1))
    # verified heads in exact-score order, the rest in screen order
    top = [screened.top(L * H)[k] for k in range(L * H)]
    assert [df.loc[h, "score"] for h in top[:n]] == sorted((df.loc[h, "score"] for h in top[:n]), reverse=True)
    assert [screen[h] for h in top[n:]] == sorted((screen[h] for h in top[n:]), reverse=True)
    # HONES runs on a screened table (its K_h <= N heads are verified)
    table = runner.rank("vqa", "hones", heads=screened, top_heads=3)
    # the top 3 by rank, less those whose score is not positive (dropped before the passes, issue 14)
    tol = positive_tolerance(screened.score)
    assert table.meta["heads"] == [list(h) for h in top[:3] if df.loc[h, "score"] > tol]
    with pytest.raises(ValueError, match="verify-top"):  # K_h > N would mix exact scores and estimates
        runner.rank("vqa", "hones", heads=screened, top_heads=n + 1)


def test_screen_only_table(embedded, embedded_engine, benchmark_dir, tmp_path):
    runner = _runner(embedded, tmp_path, embedded_engine, limit=3, batch_size=48)
    t = runner.heads("vqa", utility="logprob", screen="atp", verify_top=0)
    screen = np.asarray(t.meta["screen_scores"])
    np.testing.assert_allclose(t.matrix(), screen, atol=1e-12)
    df = t.table.to_pandas()
    np.testing.assert_allclose(df["base_utility"] - df["intervened_utility"], df["score"], atol=1e-9)
    assert t.meta["verified_heads"] == [] and t.top(1) == top_heads_by(screen, 1)
    assert t.path.name == "vqa.heads-atp.parquet"


def test_cli_screen_smoke(benchmark_dir, tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        cli,
        [
            "heads",
            "--task",
            "ocr",
            "--limit",
            "2",
            "--utility",
            "logprob",
            "--screen",
            "atp",
            "--verify-top",
            "3",
            "--out-dir",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["screen"] == "atp" and len(payload["verified_heads"]) == 3
    assert [r["rank"] for r in payload["top"]][:3] == [1, 2, 3]
    assert all(r["intervened_utility"] is None for r in payload["top"][3:])  # NaN -> null: valid JSON
    result = CliRunner().invoke(
        cli, ["heads", "--task", "ocr", "--limit", "2", "--screen", "atp", "--verify-top", "0", "--out-dir", str(out)]
    )
    assert result.exit_code == 0, result.output and "AtP screen" in result.output
    result = CliRunner().invoke(cli, ["heads", "--task", "ocr", "--limit", "2", "--verify-top", "3"])
    assert result.exit_code == 2 and "--screen atp" in result.output
    result = CliRunner().invoke(cli, ["methods"])
    assert result.exit_code == 0 and "atp-screen is approximate: first-order" in result.output
    result = CliRunner().invoke(cli, ["methods", "--json"])
    row = next(r for r in json.loads(result.stdout) if r["method"] == "atp-screen")
    assert "first-order" in row["summary"] or "first order" in row["summary"]


# ======================================================================= throughput optimisation


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_encode_rows_equals_encoding_every_row(arch, tiny_model, benchmark_dir, tmp_path):
    """The sweep encodes each distinct prompt once and repeats its rows: the tensors must be
    exactly those of encoding every row (so scores cannot move)."""
    from hones_nn.engine.encoding import encode_prompts, encode_rows

    loaded = tiny_model(arch)
    td = _runner(loaded, tmp_path, limit=3).context("vqa", {}).td
    p = [item.prompts[0] for item in td.items]
    rows = [p[1], p[0], p[1], p[2], p[0], p[1]]
    for with_answers in (False, True):
        a = encode_rows(loaded, td.images, rows, with_answers=with_answers)
        b = encode_prompts(loaded, td.images, rows, with_answers=with_answers)
        assert a.inputs.keys() == b.inputs.keys()
        for key in b.inputs:
            assert torch.equal(a.inputs[key], b.inputs[key]), key
        assert torch.equal(a.last_prompt_index, b.last_prompt_index) and a.answer_ids == b.answer_ids
        if with_answers:
            assert torch.equal(a.answer_mask, b.answer_mask)


def test_sweep_scores_unchanged_by_encoding_once(embedded, embedded_engine, benchmark_dir, tmp_path, monkeypatch):
    import hones_nn.engine.sweep as sweep_module
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.engine.sweep import all_heads, sweep

    td = _runner(embedded, tmp_path, embedded_engine, limit=2).context("vqa", {}).td
    conditions = [None] + all_heads(4, 8)[::3]
    fast = sweep(embedded_engine, td, [0, 1], conditions, utility="logprob", batch_size=16)
    fast_b4 = sweep(embedded_engine, td, [0, 1], conditions, utility="logprob", batch_size=4)  # cache reused
    monkeypatch.setattr(
        sweep_module,
        "encode_rows",
        lambda loaded, images, prompts, cache=None, **kw: encode_prompts(loaded, images, prompts, **kw),
    )
    slow = sweep(embedded_engine, td, [0, 1], conditions, utility="logprob", batch_size=16)
    slow_b4 = sweep(embedded_engine, td, [0, 1], conditions, utility="logprob", batch_size=4)
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast_b4, slow_b4)


def test_encode_rows_cache_reuses_only_the_same_batch(embedded, benchmark_dir, tmp_path):
    from hones_nn.engine.encoding import encode_rows

    td = _runner(embedded, tmp_path, limit=2).context("vqa", {}).td
    a, b = td.items[0].prompts[0], td.items[1].prompts[0]
    cache: dict = {}
    first = encode_rows(embedded, td.images, [a, a], cache=cache)
    assert encode_rows(embedded, td.images, [a, a], cache=cache) is first
    assert encode_rows(embedded, td.images, [a, a], with_answers=True, cache=cache) is not first
    other = encode_rows(embedded, td.images, [a, b], cache=cache)
    assert other is not first and len(cache) == 1
    assert not torch.equal(other.inputs["pixel_values"][1], first.inputs["pixel_values"][1])
