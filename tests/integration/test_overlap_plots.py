"""Cross-task neuron groups (`hones-nn overlap`), the MLP logit lens (`hones-nn lens`) and
the figures (`hones-nn plot ...`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hones_nn.cli.main import cli
from hones_nn.engine.tables import write_head_table, write_neuron_table
from hones_nn.evaluation.overlap import (
    dominant_groups,
    find_group,
    load_task_tables,
    membership_groups,
    overlap_evaluation,
    task_sets,
    write_overlap,
)

TASKS = ("vqa", "ocr", "caption", "retrieval")
META = {"model_id": "toy", "weights_hash": "abc123", "method": "hones"}


def _table_with_top(path, task, top, shape=(4, 100), meta=None, seed=0):
    """A neuron table whose top len(top) neurons are exactly ``top`` (scores 10.., others below 1)."""
    scores = np.random.default_rng(seed).random(shape)
    for k, (layer, i) in enumerate(top):
        scores[layer, i] = 10.0 + k
    return write_neuron_table(path, scores, {**META, **(meta or {}), "task": task})


# ------------------------------------------------------------------ groups


def test_groups_partition_the_union_with_known_overlaps(tmp_path):
    a, b, c, d, e, f, g, h = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 50), (1, 60), (2, 70), (3, 80)]
    wanted = {"vqa": [a, b, c, d], "ocr": [a, b, e, f], "caption": [a, c, e, g], "retrieval": [a, b, c, h]}
    # shape 4 x 100: the top 1% is 4 neurons per task
    paths = [_table_with_top(tmp_path / f"{t}.parquet", t, wanted[t], seed=k) for k, t in enumerate(TASKS)]
    tables = load_task_tables(list(reversed(paths)))  # any order in, the paper's order out
    assert list(tables) == list(TASKS)
    sets = task_sets(tables, 0.01)
    assert {t: set(s) for t, s in sets.items()} == {t: set(v) for t, v in wanted.items()}
    groups = membership_groups(sets)
    assert len(groups) == 15
    assert [g.name for g in groups] == [
        "VQA-specific",
        "OCR-specific",
        "Caption-specific",
        "Retrieval-specific",
        "VQA+OCR",
        "VQA+Caption",
        "VQA+Retrieval",
        "OCR+Caption",
        "OCR+Retrieval",
        "Caption+Retrieval",
        "VQA+OCR+Caption",
        "VQA+OCR+Retrieval",
        "VQA+Caption+Retrieval",
        "OCR+Caption+Retrieval",
        "GENERAL",
    ]
    assert [g.kind for g in groups] == ["specific"] * 4 + ["pair"] * 6 + ["triple"] * 4 + ["general"]
    by_name = {g.name: g.neurons for g in groups}
    expected = {
        "GENERAL": [a],
        "VQA+OCR+Retrieval": [b],
        "VQA+Caption+Retrieval": [c],
        "VQA-specific": [d],
        "OCR+Caption": [e],
        "OCR-specific": [f],
        "Caption-specific": [g],
        "Retrieval-specific": [h],
    }
    for name, neurons in by_name.items():
        assert neurons == expected.get(name, []), name
    # partition: exclusive and covering the union
    members = [n for g in groups for n in g.neurons]
    assert len(members) == len(set(members)) == 8
    assert set(members) == set().union(*map(set, sets.values()))
    assert find_group(groups, "vqa+ocr+retrieval").neurons == [b]
    assert find_group(groups, "Retrieval&OCR&VQA").neurons == [b]
    assert find_group(groups, "general").neurons == [a]
    assert find_group(groups, "OCR-specific").neurons == [f]
    with pytest.raises(ValueError, match="no neuron group"):
        find_group(groups, "vqa+segmentation")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groups_are_exclusive_membership_classes_of_random_sets(seed):
    rng = np.random.default_rng(seed)
    universe = [(int(x // 50), int(x % 50)) for x in range(200)]
    sets = {t: [universe[i] for i in rng.choice(200, size=int(rng.integers(20, 80)), replace=False)] for t in TASKS}
    groups = membership_groups(sets)
    assert len(groups) == 15
    seen = {}
    for group in groups:
        for neuron in group.neurons:
            assert neuron not in seen, f"{neuron} in {seen.get(neuron)} and {group.key}"
            seen[neuron] = group.key
            # in exactly the group's tasks' sets
            assert {t for t in TASKS if neuron in sets[t]} == set(group.tasks)
    assert set(seen) == set().union(*map(set, sets.values()))


def test_tables_of_different_models_or_duplicate_tasks_are_refused(tmp_path):
    p1 = _table_with_top(tmp_path / "vqa.parquet", "vqa", [(0, 1)])
    p2 = _table_with_top(tmp_path / "ocr.parquet", "ocr", [(0, 1)], meta={"model_id": "other", "weights_hash": "zzz"})
    with pytest.raises(ValueError, match="different models") as err:
        load_task_tables([p1, p2])
    assert "vqa.parquet" in str(err.value) and "ocr.parquet" in str(err.value) and "'other'" in str(err.value)
    p3 = _table_with_top(tmp_path / "vqa2.parquet", "vqa", [(0, 2)])
    with pytest.raises(ValueError, match="two tables for task 'vqa'"):
        load_task_tables([p1, p3])
    with pytest.raises(ValueError, match="at least two"):
        load_task_tables([p1])
    heads = write_head_table(tmp_path / "h.parquet", np.zeros((2, 2)), 1.0, np.ones((2, 2)), {**META, "task": "ocr"})
    with pytest.raises(ValueError, match="heads table"):
        load_task_tables([p1, heads])
    result = CliRunner().invoke(cli, ["overlap", "--scores", str(p1), str(p2)])
    assert result.exit_code == 2 and "different models" in result.output


# ------------------------------------------------------------------ masking protocol, with a fake engine


class _Recorder:
    """Stands in for evaluate(): metric = 1 - 0.01 * (masked neurons in layer 0) - 0.001 * (masked neurons)."""

    def __init__(self):
        self.calls = []

    def __call__(self, engine, td, intervention=None, batch_size=32, progress=True, desc=None):
        neurons = [] if intervention is None else list(intervention.neurons)
        self.calls.append((td.task.name, neurons))
        return SimpleNamespace(metric=1.0 - 0.01 * sum(1 for layer, _ in neurons if layer == 0) - 0.001 * len(neurons))


def _fake_engine(num_layers=4, d_ff=100):
    sizes = SimpleNamespace(num_layers=num_layers, d_ff=d_ff)
    return SimpleNamespace(adapter=SimpleNamespace(sizes=lambda model: sizes), model=None)


def _fake_data(tasks=TASKS):
    names = {"vqa": "vqa_accuracy", "ocr": "anls", "caption": "bleu4", "retrieval": "ndcg@5"}
    return {t: SimpleNamespace(task=SimpleNamespace(name=t, metric_name=names[t]), n=3) for t in tasks}


def _known_groups():
    sets = {
        "vqa": [(0, 1), (0, 2), (0, 4), (0, 3), (0, 5), (0, 6), (0, 7), (1, 9)],
        "ocr": [(0, 1), (0, 2), (0, 4), (2, 5)],
        "caption": [(3, 3)],
        "retrieval": [(0, 1), (1, 7), (1, 8)],
    }
    return membership_groups(sets)


def test_random_control_has_the_group_size_and_empty_groups_are_not_masked(monkeypatch):
    import hones_nn.evaluation.evaluate as ev

    recorder = _Recorder()
    monkeypatch.setattr(ev, "evaluate", recorder)
    groups = _known_groups()
    result = overlap_evaluation(_fake_engine(), _fake_data(), groups, draws=4, seed=7, progress=False)
    assert len(result.rows) == 15 * 4
    non_empty = {g.key: g for g in groups if not g.empty}
    assert set(non_empty) == {"vqa", "ocr", "caption", "retrieval", "vqa+ocr", "vqa+ocr+retrieval"}
    masked_sets = [sorted(n) for _, n in recorder.calls]
    for row in result.rows:
        group = find_group(groups, row["group"])
        if group.empty:
            assert row["status"] == "empty" and row["size"] == 0 and np.isnan(row["relative_drop"])
            continue
        assert row["status"] == "masked" and row["random_draws"] == 4
        assert sorted(group.neurons) in masked_sets
    # never an empty mask; every random draw has the size of a masked group, without duplicates
    sizes = {g.size for g in non_empty.values()}
    group_sets = [sorted(g.neurons) for g in non_empty.values()]
    random_calls = [(t, n) for t, n in recorder.calls if n and sorted(n) not in group_sets]
    assert all(len(n) in sizes and len(set(n)) == len(n) for _, n in random_calls)
    for task in TASKS:
        for k in sizes:
            draws = [tuple(sorted(n)) for t, n in random_calls if t == task and len(n) == k]
            assert len(draws) == 4  # shared by the groups of that size, drawn once per task
            assert len(set(draws)) == 4  # different seeds, different sets
    # the drops follow the fake metric
    row = next(r for r in result.rows if r["group"] == "vqa+ocr" and r["task"] == "ocr")
    assert row["size"] == 2 and row["relative_drop"] == pytest.approx(0.022) and row["base"] == 1.0
    # dominant: the shared group containing the task with the largest drop (specific groups excluded)
    assert result.dominant["vqa"]["group"] == "vqa+ocr"
    assert result.dominant["ocr"]["group"] == "vqa+ocr"
    assert result.dominant["retrieval"]["group"] == "vqa+ocr+retrieval"
    assert result.dominant["caption"] is None  # no shared group holds caption
    assert result.dominant["vqa"]["relative_drop"] == pytest.approx(0.022)
    assert result.dominant["vqa"]["largest_any"]["group"] == "vqa"  # the specific group drops more (0.045)


def test_members_only_cells_and_dominant_random(monkeypatch):
    import hones_nn.evaluation.evaluate as ev

    recorder = _Recorder()
    monkeypatch.setattr(ev, "evaluate", recorder)
    result = overlap_evaluation(
        _fake_engine(), _fake_data(), _known_groups(), draws=3, random_for="dominant", cells="members", progress=False
    )
    cell = {(r["group"], r["task"]): r for r in result.rows}
    assert cell[("vqa+ocr", "caption")]["status"] == "skipped"
    assert cell[("vqa+ocr", "ocr")]["status"] == "masked"
    assert cell[("caption", "vqa")]["status"] == "masked"  # specific groups: every task, as the paper
    with_random = [r for r in result.rows if r["random_draws"]]
    assert {(r["group"], r["task"]) for r in with_random} == {
        ("vqa+ocr", "vqa"),
        ("vqa+ocr", "ocr"),
        ("vqa+ocr+retrieval", "retrieval"),
    }
    assert dominant_groups(result.rows, TASKS) == result.dominant


# ------------------------------------------------------------------ logit lens on the embedded model


def test_logit_lens_equals_a_hand_computation_with_hooks(embedded, embedded_engine):
    from hones_nn.engine.encoding import encode_prompts
    from hones_nn.evaluation.logit_lens import logit_lens
    from hones_nn.tasks.task_data import prepare_task

    torch.manual_seed(0)
    td = prepare_task(embedded, "vqa", split="test", limit=3)
    group = [(0, 5), (0, 17), (1, 200), (2, 100), (2, 3), (2, 999)]
    layer = 2
    model, adapter = embedded.model, embedded.adapter
    enc = encode_prompts(embedded, td.images, [td.task.attribution_prompt(it) for it in td.items])
    targets = [td.task.gold_token_ids(embedded_engine.tokenizer, it)[0] for it in td.items]
    norm, lm_head = adapter.final_norm(model), adapter.lm_head(model)

    def run(masked: bool):
        saved = {}
        handles = [
            adapter.mlp(model, layer).register_forward_hook(
                lambda m, i, o: saved.__setitem__("mlp", o[:, -1].detach().clone())
            )
        ]
        handles.append(norm.register_forward_hook(lambda m, i, o: saved.__setitem__("h", i[0][:, -1].detach().clone())))
        if masked:
            for lay in {l for l, _ in group}:
                idx = torch.tensor([i for l, i in group if l == lay])

                def zero(module, args, idx=idx):
                    z = args[0].clone()
                    z[..., idx] = 0
                    return (z,)

                handles.append(adapter.down_proj(model, lay).register_forward_pre_hook(zero))
        try:
            with torch.no_grad():
                model(**enc.inputs)
        finally:
            for hd in handles:
                hd.remove()
        return saved

    clean, masked = run(False), run(True)
    with torch.no_grad():
        final_clean = lm_head(norm(clean["mlp"])).double()
        final_masked = lm_head(norm(masked["mlp"])).double()
        sigma = torch.sqrt(clean["h"].double().pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        frozen_clean = (clean["mlp"].double() * norm.weight.double() / sigma) @ lm_head.weight.double().T
        frozen_masked = (masked["mlp"].double() * norm.weight.double() / sigma) @ lm_head.weight.double().T
    rows = torch.arange(len(targets))
    hands = {"final": (final_clean, final_masked), "frozen": (frozen_clean, frozen_masked)}
    for which, (hand_c, hand_m) in hands.items():
        report = logit_lens(embedded_engine, td, {"g": group}, norm=which, batch_size=2, progress=False)
        assert report.base.shape == (4, 152)
        np.testing.assert_allclose(report.base[layer], hand_c.mean(0).numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(report.groups["g"].masked[layer], hand_m.mean(0).numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(report.delta("g")[layer], (hand_c - hand_m).mean(0).numpy(), rtol=1e-4, atol=1e-4)
        hand_target = (hand_c[rows, targets] - hand_m[rows, targets]).mean().item()
        assert report.target_delta("g")[layer] == pytest.approx(hand_target, abs=1e-4)
        tops = report.top_tokens("g", 3)[layer]
        hand_delta = (hand_c - hand_m).mean(0)
        assert [t["token_id"] for t in tops] == torch.argsort(-hand_delta, stable=True)[:3].tolist()
        assert all(t["delta"] > 0 for t in tops)
        # layer 3 follows the masked layers; no neuron of layer 3 itself is masked but its input changed
        assert np.abs(report.delta("g")[3]).max() > 0
    with pytest.raises(ValueError, match="empty"):
        logit_lens(embedded_engine, td, {"e": []}, progress=False)


# ------------------------------------------------------------------ plots


def _png_ok(path: Path, width: int, height: int) -> None:
    from hones_nn.plots import png_stats

    assert path.exists() and path.stat().st_size > 0
    stats = png_stats(path)
    assert (stats["width"], stats["height"]) == (width, height)
    assert stats["std"] > 0 and stats["colours"] > 2, stats


def _svg_ok(path: Path, width_in: float, height_in: float) -> None:
    import xml.etree.ElementTree as ET

    assert path.exists() and path.stat().st_size > 0
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert float(root.get("width").removesuffix("pt")) == pytest.approx(72 * width_in)
    assert float(root.get("height").removesuffix("pt")) == pytest.approx(72 * height_in)
    assert len(list(root.iter())) > 50  # drawn elements, not an empty canvas


def _plot(args, tmp_path, name, size=(6, 4), dpi=100):
    prefix = tmp_path / name
    result = CliRunner().invoke(
        cli,
        [
            "plot",
            *args,
            "--out",
            str(prefix),
            "--format",
            "png,svg",
            "--size",
            f"{size[0]}x{size[1]}",
            "--dpi",
            str(dpi),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert files == [f"{prefix}.png", f"{prefix}.svg"]
    _png_ok(Path(files[0]), size[0] * dpi, size[1] * dpi)
    _svg_ok(Path(files[1]), *size)
    return files


@pytest.fixture()
def neuron_tables(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k, task in enumerate(TASKS):
        scores = rng.random((6, 200)) + np.linspace(0, 1, 6)[:, None] * (k + 1) * 0.3
        paths.append(write_neuron_table(tmp_path / f"{task}.parquet", scores, {**META, "task": task}))
    return paths


def test_plot_layers(neuron_tables, tmp_path):
    _plot(["layers", *map(str, neuron_tables), "--top-ratio", "0.05"], tmp_path, "layers")
    _plot(
        ["layers", *map(str, neuron_tables[:2]), "--style", "line", "--percent"],
        tmp_path,
        "layers_line",
        size=(5, 3),
        dpi=80,
    )


def test_plot_heads(tmp_path):
    rng = np.random.default_rng(1)
    paths = [
        write_head_table(
            tmp_path / f"{t}.heads.parquet", rng.normal(0, 0.05, (4, 8)), 0.5, rng.random((4, 8)), {**META, "task": t}
        )
        for t in ("vqa", "ocr")
    ]
    _plot(["heads", *map(str, paths), "--mark-top", "5"], tmp_path, "heads", size=(8, 3))
    _plot(["heads", *map(str, paths), "--shared-scale"], tmp_path, "heads_shared", size=(8, 3))
    result = CliRunner().invoke(cli, ["plot", "heads", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_plot_groups(monkeypatch, tmp_path):
    import hones_nn.evaluation.evaluate as ev

    monkeypatch.setattr(ev, "evaluate", _Recorder())
    result = overlap_evaluation(_fake_engine(), _fake_data(), _known_groups(), draws=2, progress=False)
    files = write_overlap(tmp_path / "ov", result, {"model_id": "toy", "top_ratio": 0.01})
    _plot(["groups", str(files["parquet"])], tmp_path, "groups", size=(8, 4))
    _plot(["groups", str(files["json"]), "--mode", "full"], tmp_path, "groups_full", size=(9, 7))
    bad = CliRunner().invoke(cli, ["plot", "groups", str(tmp_path / "ocr.parquet"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2


def test_plot_steering(tmp_path):
    report = {
        "tasks": {
            "vqa": [
                {"name": "Base", "metric": 0.652, "metric_name": "accuracy"},
                {"name": "Fixed-Amp", "metric": 0.661},
                {"name": "Ours", "metric": 0.673, "ci": [0.668, 0.679]},
            ],
            "ocr": [{"name": "Base", "metric": 0.576}, {"name": "Ours", "metric": 0.602, "std": 0.003}],
        }
    }
    path = tmp_path / "steer.json"
    path.write_text(json.dumps(report))
    _plot(["steering", str(path)], tmp_path, "steering", size=(7, 3.5))
    flat = [
        {"task": "caption", "method": "Base", "value": 0.1285},
        {"task": "caption", "method": "Ours", "value": 0.14},
    ]
    path.write_text(json.dumps(flat))
    _plot(["steering", str(path)], tmp_path, "steering_flat")
    # the report.json of `hones-nn steer`, one per task, merged
    for task, base in (("vqa", 0.65), ("retrieval", 0.93)):
        conditions = [
            {"condition": c, "metric": base + d, "gain": d, "relative_gain": d / base}
            for c, d in (
                ("base", 0),
                ("fixed-amp", 0.01),
                ("grid", 0.012),
                ("rand-neuron", -0.002),
                ("no-kl", 0.005),
                ("ours", 0.02),
            )
        ]
        (tmp_path / f"{task}.report.json").write_text(
            json.dumps({"task": task, "metric_name": "m", "conditions": conditions, "bootstrap": {"comparisons": []}})
        )
    from hones_nn.plots import read_steering_report

    merged = read_steering_report([tmp_path / "vqa.report.json", tmp_path / "retrieval.report.json"])
    assert list(merged) == ["vqa", "retrieval"]
    assert [e["name"] for e in merged["vqa"]] == [
        "Base",
        "Fixed-Amp",
        "Grid-Search",
        "RandNeuron",
        "Ours w/o KL",
        "Ours",
    ]
    _plot(
        ["steering", str(tmp_path / "vqa.report.json"), str(tmp_path / "retrieval.report.json")],
        tmp_path,
        "steering_reports",
        size=(8, 6),
    )
    path.write_text(json.dumps([{"task": "vqa", "metric": 1.0}]))
    bad = CliRunner().invoke(cli, ["plot", "steering", str(path), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "needs a name" in bad.output


def test_plot_head_budget(tmp_path):
    curves = {
        "vqa": ([1, 2, 4, 8, 16, 32], [0.1, 0.3, 0.5, 0.55, 0.56, 0.6]),
        "ocr": ([1, 2, 4, 8, 16, 32], [0.0, 0.05, 0.1, 0.5, 0.7, 0.72]),
        "caption": ([1, 2, 4, 8, 16, 32], [0.01, 0.02, 0.04, 0.08, 0.16, 0.32]),  # linear: no elbow
    }
    from hones_nn.methods.head_budget import elbow

    paths = []
    for task, (budgets, drops) in curves.items():
        path = tmp_path / f"{task}.head-budget.json"
        path.write_text(
            json.dumps({"task": task, "budgets": budgets, "relative_drops": drops, "elbow": elbow(budgets, drops)})
        )
        paths.append(str(path))
    _plot(["head-budget", *paths], tmp_path, "budget")
    result = CliRunner().invoke(cli, ["plot", "head-budget", *paths, "--out", str(tmp_path / "b2"), "--json"])
    payload = json.loads(result.stdout)
    assert payload["elbows"] == {"vqa": 4, "ocr": 16, "caption": None}
    assert payload["unified"] == 16
    text = CliRunner().invoke(cli, ["plot", "head-budget", *paths, "--out", str(tmp_path / "b3")])
    assert "caption: elbow K = none" in text.output and "--top-heads 16" in text.output
    (tmp_path / "bad.json").write_text(json.dumps({"task": "vqa"}))
    bad = CliRunner().invoke(cli, ["plot", "head-budget", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "missing budgets, relative_drops, elbow" in bad.output


def test_plot_formats_and_missing_matplotlib(neuron_tables, tmp_path, monkeypatch):
    bad = CliRunner().invoke(
        cli, ["plot", "layers", str(neuron_tables[0]), "--out", str(tmp_path / "x"), "--format", "png,gif"]
    )
    assert bad.exit_code == 2 and "gif" in bad.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    result = CliRunner().invoke(cli, ["plot", "layers", str(neuron_tables[0]), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2
    assert "pip install hones-nn[plot]" in result.output
    assert not (tmp_path / "y.png").exists()


# ------------------------------------------------------------------ end to end on the embedded model


def test_overlap_and_lens_end_to_end(tmp_path):
    runner = CliRunner()
    tables = []
    for task in TASKS:
        out = tmp_path / f"{task}.parquet"
        result = runner.invoke(
            cli,
            [
                "rank",
                "--method",
                "hones-nohead",
                "--task",
                task,
                "--limit",
                "8",
                "--out",
                str(out),
                "--out-dir",
                str(tmp_path / "runs"),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        tables.append(str(out))
    out_dir = tmp_path / "overlap"
    result = runner.invoke(
        cli,
        [
            "overlap",
            "--scores",
            *tables,
            "--limit",
            "4",
            "--random-draws",
            "1",
            "--batch-size",
            "64",
            "--out-dir",
            str(out_dir),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tasks"] == list(TASKS) and summary["n"] == dict.fromkeys(TASKS, 4)
    k = summary["k"]["vqa"]
    assert k == round(4 * 1024 * 0.01) and set(summary["k"].values()) == {k}

    import pyarrow.parquet as pq

    rows = pq.read_table(out_dir / "overlap.parquet").to_pylist()
    assert len(rows) == 15 * 4
    for column in ("group", "tasks", "size", "task", "base", "masked", "relative_drop", "random_drop"):
        assert column in rows[0]
    doc = json.loads((out_dir / "overlap.json").read_text())
    groups = doc["groups"]
    assert len(groups) == 15
    members = [tuple(n) for g in groups for n in g["neurons"]]
    assert len(members) == len(set(members)) == summary["union"]
    for g in groups:
        assert g["size"] == len(g["neurons"])
        cells = [r for r in rows if r["group"] == g["key"]]
        assert len(cells) == 4
        for r in cells:
            if g["size"] == 0:
                assert r["status"] == "empty" and r["masked"] != r["masked"]  # NaN
            else:
                assert r["status"] == "masked" and r["masked"] >= 0 and r["random_draws"] == 1
                assert (out_dir / "groups" / f"{g['key']}.json").exists()
    for task, dom in doc["dominant"].items():
        if dom is not None:
            assert task in dom["group"].split("+") and "+" in dom["group"]
    assert sum(g["size"] for g in groups if len(g["tasks"]) == 1) > 0

    # the logit lens of one non-empty group, from its neuron file and by name
    group = next(g for g in groups if g["size"] and "vqa" in g["tasks"])
    result = runner.invoke(
        cli,
        [
            "lens",
            "--task",
            "vqa",
            "--group",
            str(out_dir / "groups" / f"{group['key']}.json"),
            "--groups",
            str(out_dir / "overlap.json"),
            "--group",
            group["name"],
            "--limit",
            "2",
            "--top-k",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    lens = json.loads(result.stdout)
    assert len(lens["groups"]) == 2 and lens["n"] == 2 and lens["norm"] == "final"
    assert lens["groups"][0]["target_delta"] == pytest.approx(lens["groups"][1]["target_delta"])
    assert len(lens["groups"][0]["layers"]) == 4
    result = runner.invoke(
        cli,
        [
            "lens",
            "--task",
            "vqa",
            "--group",
            "vqa+ocr+caption+retrieval+x",
            "--groups",
            str(out_dir / "overlap.json"),
            "--limit",
            "1",
        ],
    )
    assert result.exit_code == 2 and "no neuron group" in result.output

    # and its figure
    _plot(["groups", str(out_dir / "overlap.parquet")], tmp_path, "e2e_groups", size=(8, 4))
    _plot(["layers", *tables], tmp_path, "e2e_layers", size=(6, 4))
