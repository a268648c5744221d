"""The paper's central claims on the shipped model (tiny-llava), each against an independent
computation: HONES's top 1% hurts VQA more than random neurons, and V-SEAM's corpus-BLEU
caption head scores (``--reference-compat``) are the drop of NLTK corpus BLEU computed by hand.
(The Gaussian ablation's noise: tests/unit/test_gaussian_ablation.py; the steering KL's
direction: tests/integration/test_steering.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hones_nn.engine.sweep import generated_texts
from hones_nn.evaluation.evaluate import evaluate, masked_evaluation
from hones_nn.runner.pipeline import Runner
from hones_nn.tasks.task_data import prepare_task


def _runner(loaded, engine, out_dir, **kwargs) -> Runner:
    return Runner(loaded=loaded, out_dir=Path(out_dir), progress=False, _engine=engine, **kwargs)


def test_hones_top_1pct_hurts_vqa_more_than_random_neurons(embedded, embedded_engine, benchmark_dir, tmp_path):
    runner = _runner(embedded, embedded_engine, tmp_path, limit=60)
    heads = runner.heads("vqa", utility="logprob")
    table = runner.rank("vqa", "hones", heads=heads)
    neurons = table.top_ratio(0.01)
    td = prepare_task(embedded, "vqa", split="test", limit=80)
    base = evaluate(embedded_engine, td, batch_size=32, progress=False)
    hones = masked_evaluation(embedded_engine, td, neurons, batch_size=32, progress=False, base=base)
    sizes = embedded.sizes
    rng = np.random.default_rng(12345)
    random_drops = []
    for _ in range(5):
        flat = rng.choice(sizes.num_layers * sizes.d_ff, size=len(neurons), replace=False)
        draw = [(int(f) // sizes.d_ff, int(f) % sizes.d_ff) for f in flat]
        random_drops.append(
            masked_evaluation(embedded_engine, td, draw, batch_size=32, progress=False, base=base)["relative_drop"]
        )
    assert hones["relative_drop"] > float(np.mean(random_drops)), (hones["relative_drop"], random_drops)


def test_compat_caption_head_scores_are_the_drop_of_nltk_corpus_bleu(
    embedded, embedded_engine, benchmark_dir, tmp_path
):
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    runner = _runner(embedded, embedded_engine, tmp_path, limit=4, reference_compat=True)
    table = runner.heads("caption")
    assert table.meta["caption_corpus"] is True
    td = prepare_task(embedded, "caption", split="discovery", limit=4, reference_compat=True)
    L, H = table.shape
    some = [(0, 0), (L - 1, H - 1), (L // 2, 1)]
    texts = generated_texts(embedded_engine, td, list(range(td.n)), [None, *some], batch_size=32)

    def bleu(condition: int) -> float:  # the reference code's metric, by NLTK itself
        return nltk_bleu.corpus_bleu(
            [[r.lower().split() for r in item.data["references"] if r.strip()] for item in td.items],
            [texts[i][condition].lower().split() for i in range(td.n)],
            weights=(0.25, 0.25, 0.25, 0.25),
            smoothing_function=nltk_bleu.SmoothingFunction().method1,
        )

    matrix = table.matrix()
    assert table.table.column("base_utility")[0].as_py() == pytest.approx(bleu(0), abs=1e-12)
    for c, (layer, head) in enumerate(some, start=1):
        assert matrix[layer, head] == pytest.approx(bleu(0) - bleu(c), abs=1e-12), (layer, head)
