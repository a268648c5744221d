"""Paired bootstrap of the gain of one condition over another (HONES appendix F.3).

Both conditions are scored on the same test items. A resample draws n item indices with
replacement (the same indices for both conditions: that is the pairing) and computes
the gain = metric(ours on the resample) - metric(baseline on the resample). Over R
resamples (default 1000, seeded) we report:

* ``observed``: the gain on the full set (no resampling);
* ``mean`` and ``sd`` (sample SD, ddof 1) of the resampled gains, and a percentile
  ``ci`` (default 95%);
* ``p_one_sided`` = P(gain <= 0) over the resamples: the share of resamples in which
  ours does not beat the baseline (the issue's definition; 0 when every resample
  improves, 1 when none does, e.g. for identical outputs);
* ``p_two_sided`` = min(1, 2 * min(P(gain <= 0), P(gain >= 0))): the paper's "doubling
  the smaller of the two empirical tail probabilities". Identical outputs give 1.

A p-value of 0 means "below 1/R": report it as p < 1/R.

The metric of a resample is computed from per-item *statistics* summed with the
resample's multiplicities, so one matrix product serves all resamples:

* VQA, OCR, retrieval (and caption with ``stat='utility'``): the per-item utility, metric
  = mean (VQA accuracy, ANLS, NDCG@5, sentence BLEU-4);
* caption with ``stat='metric'`` (the default, as the paper): the per-item BLEU sufficient
  statistics of :func:`hones_nn.tasks.metrics.bleu4_stats`, metric = corpus BLEU-4 of the
  resampled multiset, so the bootstrap tests the metric the table reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

STATS = ("metric", "utility")


@dataclass
class BootstrapResult:
    observed: float
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p_one_sided: float
    p_two_sided: float
    n_items: int
    n_resamples: int
    seed: int
    confidence: float

    def as_json(self) -> dict:
        return asdict(self)


def mean_metric(sums: np.ndarray, n: int) -> np.ndarray:
    """Mean utility from summed per-item utilities ([..., 1])."""
    return sums[..., 0] / n


def bleu_metric(sums: np.ndarray, n: int) -> np.ndarray:
    """Corpus BLEU-4 from summed bleu4_stats ([..., 10]), vectorised over resamples.

    Same definition as :func:`hones_nn.tasks.metrics.bleu4_from_stats` (no smoothing,
    brevity penalty on the summed closest reference lengths; 0 when any order has no
    match), written with numpy so 1000 resamples cost one pass.
    """
    sums = np.asarray(sums, dtype=np.float64)
    sys_len, ref_len = sums[..., 0], sums[..., 1]
    correct, total = sums[..., 2:6], sums[..., 6:10]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_prec = np.where(
            (correct > 0) & (total > 0),
            np.log(np.where(correct > 0, correct, 1)) - np.log(np.where(total > 0, total, 1)),
            -np.inf,
        )
        geo = np.exp(log_prec.mean(-1))
        short = np.where(sys_len > 0, np.exp(1 - ref_len / np.where(sys_len > 0, sys_len, 1)), 0.0)
        bp = np.where(sys_len < ref_len, short, 1.0)
    score = bp * geo
    return np.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)


def resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[R, n] multiplicity of each item in each resample (n indices drawn with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n), dtype=np.float64)
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)
    return counts


def paired_bootstrap(
    ours,
    baseline,
    metric: Callable[[np.ndarray, int], np.ndarray] = mean_metric,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap of metric(ours) - metric(baseline).

    ``ours``, ``baseline``: per-item statistics, [n] (utilities) or [n, d], aligned by item.
    ``metric(sums, n)``: the set metric from statistics summed over a multiset of n items
    (vectorised: ``sums`` may be [R, d]); :func:`mean_metric` or :func:`bleu_metric`.
    """
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same items: shapes {a.shape} and {b.shape}")
    n = a.shape[0]
    if n == 0:
        raise ValueError("paired bootstrap of an empty set")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired bootstrap: non-finite per-item statistics")
    observed = float(metric(a.sum(0), n) - metric(b.sum(0), n))
    counts = resample_counts(n, n_resamples, seed)
    gains = metric(counts @ a, n) - metric(counts @ b, n)
    # exact ties (identical outputs) must count as "no gain", not as float noise
    gains = np.where(np.abs(gains) < 1e-12, 0.0, gains)
    alpha = (1 - confidence) / 2
    p_le = float(np.mean(gains <= 0))
    p_ge = float(np.mean(gains >= 0))
    return BootstrapResult(
        observed=observed,
        mean=float(gains.mean()),
        sd=float(gains.std(ddof=1)) if n_resamples > 1 else 0.0,
        ci_low=float(np.quantile(gains, alpha)),
        ci_high=float(np.quantile(gains, 1 - alpha)),
        p_one_sided=p_le,
        p_two_sided=min(1.0, 2 * min(p_le, p_ge)),
        n_items=n,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )


def item_statistics(td, outputs: list[list], utilities: list[float], stat: str = "metric"):
    """(per-item statistics, metric function) of one condition's test outputs."""
    if stat not in STATS:
        raise ValueError(f"unknown bootstrap statistic {stat!r}; choose one of {', '.join(STATS)}")
    if td.task.corpus_level_metric and stat == "metric":
        rows = [td.task.metric_stats(item, out) for item, out in zip(td.items, outputs)]
        return np.asarray(rows, dtype=np.float64), bleu_metric
    return np.asarray(utilities, dtype=np.float64)[:, None], mean_metric


def significance_stars(p: float) -> str:
    """'***' p < 0.001, '**' < 0.01, '*' < 0.05, 'n.s.' otherwise (p = 0 means p < 1/R)."""
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    if p < 0.05:
        return "*"
    return "n.s."
