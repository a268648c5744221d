"""VQA modulation with fuzzy sets (Wang et al. section 5) and the suppression check.

Per example, with X_e the visual sets of the example's concepts and Q_e the interrogative
set of its question's interrogative word:

    a(l, i) <- a(l, i) * (1 + lambda_x mu_x(l, i) + lambda_q mu_q(l, i))

at every position and generation step (a = z, the input of ``down_proj``; scaling g
instead is identical since z = g * up_proj(x)). mu_x(l, i) = max over X_e of the
membership (the fuzzy union; 0 outside every set), mu_q the membership in Q_e. The -Fix
settings use mu = 0.5 for every member instead of its membership.

The example's concepts (``concept_source``):

* ``image`` (default, the paper's setting: "the multimodal neuron sets corresponding to
  the image semantics", from the image's annotations): every colour and kind of the
  image's objects, and ``text`` when it has a text box. This reads ground truth of the
  test image (as the paper's COCO annotations do): an oracle of what is in the image.
* ``question``: only the concept words the question names (no ground truth read).

Settings (the paper's Table 4): Baseline, X, Q, X+Q, X-Fix, Q-Fix, X+Q-Fix; per
question type accuracy (the data's ``vqa.question_type``) and overall, in %.

Suppression (section 5, last paragraph): zero the example's X_e and Q_e members (factor
0) against, per example, the same number of neurons drawn uniformly over all L * d_ff
(seeded per example and seed), mean over seeds.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import torch

from hones_nn.concepts.catalog import image_concepts
from hones_nn.concepts.fuzzy import FuzzySets, interrogative_of, q_set_name
from hones_nn.evaluation.evaluate import evaluate
from hones_nn.interventions.rows import RowNeuronFactor

SETTINGS = ("Baseline", "X", "Q", "X+Q", "X-Fix", "Q-Fix", "X+Q-Fix")
CONCEPT_SOURCES = ("image", "question")
FIX_MEMBERSHIP = 0.5


def setting_lambdas(setting: str, lambda_x: float, lambda_q: float) -> tuple[float, float, bool]:
    """(lambda_x, lambda_q, fixed) of a named setting."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; settings: {', '.join(SETTINGS)}")
    base = setting.removesuffix("-Fix")
    lx = lambda_x if "X" in base else 0.0
    lq = lambda_q if "Q" in base else 0.0
    return lx, lq, setting.endswith("-Fix")


class ExampleSets:
    """Which sets apply to each VQA item of a TaskData, and their dense memberships."""

    def __init__(self, sets: FuzzySets, td, num_layers: int, d_ff: int, concept_source: str = "image"):
        from hones_nn.data.dataset import load_split

        if concept_source not in CONCEPT_SOURCES:
            raise ValueError(f"unknown concept source {concept_source!r}; choose {', '.join(CONCEPT_SOURCES)}")
        if not td.task.asks_questions:
            raise ValueError(f"fuzzy-set modulation is for a question-answering task (vqa), not {td.task.name!r}")
        self.sets, self.L, self.F = sets, num_layers, d_ff
        visual, interrogative = set(sets.visual()), set(sets.interrogative())
        if not visual and not interrogative:
            raise ValueError(f"{sets.path} holds no set; rebuild with `hones-nn fuzzy build`")
        records = load_split(td.data_dir, td.split).with_format(None)
        columns = [c for c in ("objects", "ocr", "vqa") if c in records.column_names]
        records = records.select_columns(columns)
        self.x_names: list[list[str]] = []
        self.q_names: list[str | None] = []
        for item in td.items:
            record = records[item.row]
            question = (record.get("vqa") or {}).get("question") or ""
            if concept_source == "image":
                names = image_concepts(record)
            else:
                words = set(re.findall(r"[a-z]+", question.lower()))
                names = [n for n in sorted(visual) if n in words]
            self.x_names.append(sorted({n for n in names if n in visual}))
            word = interrogative_of(question)
            self.q_names.append(q_set_name(word) if word and q_set_name(word) in interrogative else None)
        self._cache: dict = {}

    def _dense(self, name: str, fixed: float | None) -> np.ndarray:
        key = (name, fixed)
        if key not in self._cache:
            self._cache[key] = self.sets.dense(name, self.L, self.F, fixed)
        return self._cache[key]

    def mu_x(self, k: int, fixed: float | None = None) -> np.ndarray:
        out = np.zeros((self.L, self.F))
        for name in self.x_names[k]:
            out = np.maximum(out, self._dense(name, fixed))
        return out

    def mu_q(self, k: int, fixed: float | None = None) -> np.ndarray:
        name = self.q_names[k]
        return self._dense(name, fixed) if name else np.zeros((self.L, self.F))

    def factors(self, k: int, lambda_x: float, lambda_q: float, fixed: bool = False) -> np.ndarray:
        f = FIX_MEMBERSHIP if fixed else None
        out = np.ones((self.L, self.F))
        if lambda_x:
            out += lambda_x * self.mu_x(k, f)
        if lambda_q:
            out += lambda_q * self.mu_q(k, f)
        return out

    def members(self, k: int) -> np.ndarray:
        """bool [L, d_ff]: neurons of the item's X and Q sets."""
        return (self.mu_x(k, 1.0) > 0) | (self.mu_q(k, 1.0) > 0)

    def coverage(self) -> dict:
        return {
            "items": len(self.x_names),
            "with_x": sum(bool(x) for x in self.x_names),
            "with_q": sum(q is not None for q in self.q_names),
        }


def modulation(example_sets: ExampleSets, lambda_x: float, lambda_q: float, fixed: bool = False):
    """intervention_for(batch) of the engine: per-row factors of the batch's items."""

    def make(batch):
        rows = [example_sets.factors(k, lambda_x, lambda_q, fixed) for k in batch.owners]
        return RowNeuronFactor(torch.from_numpy(np.stack(rows)).float())

    return make


def suppression(example_sets: ExampleSets, random_seed: int | None = None):
    """Zero the item's set members, or (``random_seed``) as many uniformly drawn neurons."""
    L, F = example_sets.L, example_sets.F

    def make(batch):
        rows = []
        for k in batch.owners:
            members = example_sets.members(k)
            if random_seed is not None:
                rng = np.random.default_rng(zlib.crc32(repr((random_seed, k)).encode()))
                flat = np.zeros(L * F, dtype=bool)
                flat[rng.choice(L * F, size=int(members.sum()), replace=False)] = True
                members = flat.reshape(L, F)
            rows.append(np.where(members, 0.0, 1.0))
        return RowNeuronFactor(torch.from_numpy(np.stack(rows)).float())

    return make


def per_type(td, utilities: list[float]) -> dict[str, float]:
    """Accuracy (%) per question type, and 'overall'."""
    groups: dict[str, list[float]] = {}
    for item, u in zip(td.items, utilities):
        groups.setdefault(item.data.get("question_type") or "other", []).append(u)
    out = {t: 100.0 * float(np.mean(v)) for t, v in sorted(groups.items())}
    out["overall"] = 100.0 * float(np.mean(utilities))
    return out


def run_setting(engine, td, example_sets, lambda_x, lambda_q, fixed=False, batch_size=32, progress=True, desc=None):
    intervention = modulation(example_sets, lambda_x, lambda_q, fixed) if (lambda_x or lambda_q) else None
    result = evaluate(engine, td, intervention, batch_size=batch_size, progress=progress, desc=desc)
    return {
        "lambda_x": lambda_x,
        "lambda_q": lambda_q,
        "fixed": fixed,
        "metric": result.metric,
        "per_type": per_type(td, result.utilities),
        "n": result.n,
    }


def modulation_table(
    engine,
    td,
    example_sets,
    lambda_x: float,
    lambda_q: float,
    settings=SETTINGS,
    batch_size: int = 32,
    progress: bool = True,
) -> list[dict]:
    rows = []
    for setting in settings:
        lx, lq, fixed = setting_lambdas(setting, lambda_x, lambda_q)
        row = run_setting(engine, td, example_sets, lx, lq, fixed, batch_size, progress, desc=f"vqa {setting}")
        rows.append({"setting": setting, **row})
    return rows


def suppression_check(
    engine, td, example_sets, seeds: int = 3, batch_size: int = 32, progress: bool = True, base: float | None = None
) -> dict:
    if base is None:
        base = evaluate(engine, td, batch_size=batch_size, progress=progress, desc="vqa base").metric
    sizes = [int(example_sets.members(k).sum()) for k in range(len(td.items))]
    sets_result = evaluate(
        engine, td, suppression(example_sets), batch_size=batch_size, progress=progress, desc="vqa sets zeroed"
    )
    randoms = [
        evaluate(
            engine,
            td,
            suppression(example_sets, seed),
            batch_size=batch_size,
            progress=progress,
            desc=f"vqa random zeroed (seed {seed})",
        ).metric
        for seed in range(seeds)
    ]

    def drop(m):
        return (base - m) / base if base else float("nan")

    total = example_sets.L * example_sets.F
    return {
        "base": base,
        "mean_neurons_zeroed": float(np.mean(sizes)),
        "mean_fraction_zeroed": float(np.mean(sizes)) / total,
        "sets_zeroed": sets_result.metric,
        "sets_relative_drop": drop(sets_result.metric),
        "sets_per_type": per_type(td, sets_result.utilities),
        "random_zeroed": randoms,
        "random_mean": float(np.mean(randoms)),
        "random_relative_drop": drop(float(np.mean(randoms))),
        "random_seeds": seeds,
    }
