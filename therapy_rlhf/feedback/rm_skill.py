"""How good a reward model's predictions are, measured against the experts (numpy only).

* ``skill_score(pred, truth)``: ``1 - MSE(pred) / MSE(mean of truth)``. 1 is
  perfect; 0 is no better than predicting the mean *of the same ratings* (a
  bar the model cannot see, so it is a hard one); below 0 is worse. The
  absolute error a model reaches says little on its own (raters who give
  everything 0.8 make any model's error small); the skill score says what it
  adds over the mean.
* ``rank_correlation_within_batches(pred, truth, batches)``: Spearman's rho
  between predictions and ratings inside each batch (round), averaged over
  batches: PPO whitens its advantages within a batch, so the order inside a
  batch is what a reward model's scores feed into the update.
* ``skill_interval(pred, truth, ...)``: the skill score with a bootstrap over
  responses -- (point, lower bound at ``confidence``); ``pooled_skill_interval``
  the same over several rounds, each against its own mean: what the drift
  rule judges.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def skill_score(pred: Sequence[float], truth: Sequence[float]) -> float | None:
    """1 - MSE(pred)/MSE(mean of truth); None when the ratings do not vary (no baseline to beat)."""
    p, t = np.asarray(pred, dtype=float), np.asarray(truth, dtype=float)
    if p.shape != t.shape:
        raise ValueError(f"{p.shape[0] if p.ndim else 0} predictions for {t.shape[0] if t.ndim else 0} ratings")
    if t.size < 2:
        return None
    base = float(((t - t.mean()) ** 2).mean())
    if base <= 1e-12:
        return None
    return 1.0 - float(((p - t) ** 2).mean()) / base


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        tied = x == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(pred: Sequence[float], truth: Sequence[float]) -> float | None:
    """Spearman's rho; None with fewer than 3 items or when either side is constant."""
    p, t = np.asarray(pred, dtype=float), np.asarray(truth, dtype=float)
    if p.size < 3 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return None
    return float(np.corrcoef(_ranks(p), _ranks(t))[0, 1])


def rank_correlation_within_batches(
    pred: Sequence[float], truth: Sequence[float], batches: Sequence[object]
) -> float | None:
    """Spearman's rho inside each batch (items sharing a ``batches`` label), averaged over the batches where
    it is defined (3+ items, neither side constant); None when it is defined in none."""
    p, t = np.asarray(pred, dtype=float), np.asarray(truth, dtype=float)
    labels = list(batches)
    if not (len(labels) == p.size == t.size):
        raise ValueError(f"{p.size} predictions, {t.size} ratings and {len(labels)} batch labels")
    groups: dict[object, list[int]] = {}
    for i, b in enumerate(labels):
        groups.setdefault(b, []).append(i)
    rhos = [r for idx in groups.values() if (r := spearman(p[idx], t[idx])) is not None]
    return float(np.mean(rhos)) if rhos else None


def skill_interval(
    pred: Sequence[float], truth: Sequence[float], *, confidence: float = 0.8, resamples: int = 1000, seed: int = 0
) -> tuple[float | None, float | None]:
    """(skill score, its one-sided lower bound at ``confidence`` from a bootstrap over responses).

    Resamples whose ratings do not vary have no skill score and are skipped; the bound is None when
    too few resamples are left (fewer than half) or the point is None."""
    p, t = np.asarray(pred, dtype=float), np.asarray(truth, dtype=float)
    point = skill_score(p, t)
    if point is None:
        return None, None
    rng = np.random.default_rng(seed)
    take = rng.integers(0, t.size, (resamples, t.size))
    tp, tt = p[take], t[take]
    base = ((tt - tt.mean(axis=1, keepdims=True)) ** 2).mean(axis=1)
    ok = base > 1e-12
    if ok.sum() < resamples / 2:
        return point, None
    skills = 1.0 - ((tp - tt) ** 2).mean(axis=1)[ok] / base[ok]
    return point, float(np.quantile(skills, 1.0 - confidence))


def _within(groups: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(sum of squared errors, sum of squares of each group's ratings about the group's own mean)."""
    sse = sum(float(((p - t) ** 2).sum()) for p, t in groups)
    base = sum(float(((t - t.mean()) ** 2).sum()) for _, t in groups if t.size)
    return sse, base


def pooled_skill_interval(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]], *, confidence: float = 0.8, resamples: int = 1000, seed: int = 0
) -> tuple[float | None, float | None]:
    """``skill_interval`` over several batches (rounds) at once: the baseline is each batch's own mean (what the
    model must beat inside a batch), and the bootstrap resamples responses within each batch."""
    arrays = [(np.asarray(p, dtype=float), np.asarray(t, dtype=float)) for p, t in groups if len(t)]
    if not arrays:
        return None, None
    sse, base = _within(arrays)
    if base <= 1e-12:
        return None, None
    point = 1.0 - sse / base
    rng = np.random.default_rng(seed)
    skills = []
    for _ in range(resamples):
        sample = []
        for p, t in arrays:
            take = rng.integers(0, t.size, t.size)
            sample.append((p[take], t[take]))
        s_sse, s_base = _within(sample)
        if s_base > 1e-12:
            skills.append(1.0 - s_sse / s_base)
    if len(skills) < resamples / 2:
        return point, None
    return point, float(np.quantile(skills, 1.0 - confidence))
