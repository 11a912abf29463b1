"""A reward model fitted to a run's gated expert ratings: feature sets chosen by held-out skill, a
bootstrap ensemble, per-rater offsets. numpy only: the jobs pass in what needs torch.

Public API (what the selection, the jobs and the benchmarks call)::

    from therapy_rlhf.feedback import reward_model as rm

    source = rm.TextFeatures(tokenize=tok_fn, embed=encoder.embed)   # or rm.MatrixFeatures(texts, {name: X})
    model = rm.fit_reward_model(texts, scores, source, raters=None, ensemble=5, seed=0)
    mean, spread = model.predict(new_texts)        # or a {name: matrix} dict, or the chosen set's matrix
    model.feature_set, model.cv                    # the chosen set; {set: {"skill": s, "ridge": r}} held out
    rm.skill_score(mean, truth)                    # 1 - MSE(pred)/MSE(mean of the same ratings)
    rm.rank_correlation_within_batches(mean, truth, batch_labels)   # Spearman inside each batch, averaged
    rm.skill_interval(mean, truth, confidence=0.8) # (skill, bootstrap lower bound): the drift rule's test
    model.member_skills(x, truth)                  # each bootstrap member's skill on fresh ratings

``features`` may also be a plain ``{name: matrix}`` dict with rows in the order of ``texts``;
the model then predicts from a dict or a matrix, not from texts.

* **Feature sets** (``rm_features``): ``hashed`` words and character n-grams
  (always), ``tokens`` (a bag of the policy tokenizer's ids) and ``embedding``
  (sentence embeddings of the bundled all-MiniLM-L6-v2, ``jobs/encoder.py``),
  each offered when the caller can compute it.
* **Chosen by held-out skill**: every offered set, at every penalty of
  ``RIDGES``, is scored by ``folds``-fold cross-validation grouped by response
  text (the same text rated twice never sits on both sides), pooling the
  out-of-fold predictions into one skill score; the best (set, penalty) wins,
  earlier sets winning ties. The table is kept (``model.cv``), so a run's
  selection.json can say which set it used and why.
* **Per-rater offsets**: every rater has a column of their own, shrunk by the
  same ridge penalty, so a rater who scores everything 0.2 lower moves their
  offset rather than the text weights. Predictions are for the panel's
  average rater (offsets weighted by how many ratings each gave).
* **Ensemble and uncertainty**: ``ensemble`` ridge regressions on bootstrap
  resamples of the ratings. The uncertainty of a prediction combines the
  members' spread with the Bayesian-ridge predictive term
  ``s^2 x^T (Z^T Z + lambda I)^-1 x``, which stays large for inputs unlike any
  rated so far (bootstrap members alone all give a never-seen feature weight 0
  and so agree, confidently, about text they know nothing of).

Deterministic: the same ratings, features and seed give the same model, bit
for bit, so a retried job selects the same responses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from therapy_rlhf.feedback.rm_features import (  # noqa: F401  (re-exported: one import for callers)
    EMBEDDING,
    FEATURE_DIM,
    FEATURE_SETS,
    HASH_DIM,
    HASHED,
    STAT_NAMES,
    TOKENS,
    FeatureSource,
    MatrixFeatures,
    TextFeatures,
    feature_matrix,
    features,
)
from therapy_rlhf.feedback.rm_skill import rank_correlation_within_batches, skill_interval, skill_score, spearman  # noqa: F401

RIDGES = (0.1, 1.0, 10.0)  # penalties tried by cross-validation
FOLDS = 5


@dataclass(frozen=True)
class Example:
    """One expert rating: the response text, who rated it and the reward their rating gives."""

    response: str
    rater: str
    reward: float


@dataclass
class RewardModel:
    feature_set: str
    raters: list[str]
    weights: np.ndarray  # (members, dim + raters)
    intercepts: np.ndarray  # (members,)
    basis: np.ndarray  # (k, dim + raters): right singular vectors of the centred full-data design
    singular: np.ndarray  # (k,): its singular values
    centre: np.ndarray  # (dim + raters,): the training design's column means
    ridge: float
    noise: float  # residual variance of the full-data fit
    rater_mix: np.ndarray  # (raters,): share of the ratings each rater gave
    trained_on: int
    bounds: tuple[float, float] | None  # predictions are clipped to the ratings' range when it is 0..1
    cv: dict[str, dict[str, float | None]] = field(default_factory=dict)
    source: Any = field(default=None, repr=False)  # the FeatureSource it was fitted with (None: a dict)
    digest: str = field(default="")

    @property
    def cv_skill(self) -> float | None:
        """Held-out skill of the chosen set (None when there were too few texts to cross-validate)."""
        return (self.cv.get(self.feature_set) or {}).get("skill")

    def _matrix(self, x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        if isinstance(x, Mapping):
            return np.asarray(x[self.feature_set], dtype=float)
        if self.source is None:
            raise ValueError("this model was fitted from precomputed matrices: predict from a matrix or a dict")
        texts = list(x)
        return self.source.matrix(self.feature_set, texts) if texts else np.zeros((0, self.centre.size - len(self.raters)))

    def _design(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, np.broadcast_to(self.rater_mix, (x.shape[0], len(self.raters)))], axis=1)

    def members(self, x: Any) -> np.ndarray:
        """(n, members): every bootstrap member's prediction (unclipped)."""
        return self._design(self._matrix(x)) @ self.weights.T + self.intercepts

    def predict(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """(predicted reward for the panel's average rater, uncertainty), one each per response.

        ``x``: texts (with a FeatureSource), a ``{set: matrix}`` dict, or the chosen set's matrix."""
        m = self._matrix(x)
        if m.shape[0] == 0:
            return np.zeros(0), np.zeros(0)
        z = self._design(m)
        per_member = z @ self.weights.T + self.intercepts
        mean = per_member.mean(axis=1)
        zc = z - self.centre
        proj = zc @ self.basis.T
        inside = (proj**2 / (self.singular**2 + self.ridge)).sum(axis=1)
        outside = np.maximum((zc**2).sum(axis=1) - (proj**2).sum(axis=1), 0.0) / self.ridge
        epistemic = self.noise * (inside + outside)
        if self.bounds is not None:
            mean = np.clip(mean, *self.bounds)
        return mean, np.sqrt(per_member.var(axis=1) + np.maximum(epistemic, 0.0))

    def member_skills(self, x: Any, truth: Sequence[float]) -> list[float | None]:
        """Each bootstrap member's skill score on ``truth`` (ratings of the responses ``x``)."""
        per_member = self.members(x)
        if self.bounds is not None:
            per_member = np.clip(per_member, *self.bounds)
        return [skill_score(per_member[:, j], truth) for j in range(per_member.shape[1])]

    def rater_offsets(self) -> dict[str, float]:
        """Each rater's learned offset from the panel average (mean over the members)."""
        cols = self.weights[:, self.weights.shape[1] - len(self.raters):].mean(axis=0)
        centre = float(cols @ self.rater_mix)
        return {r: round(float(c) - centre, 4) for r, c in zip(self.raters, cols)}


def _centred_svd(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    zm = z.mean(axis=0)
    u, s, vt = np.linalg.svd(z - zm, full_matrices=False)
    return zm, u, s, vt


def _ridge_weights(u, s, vt, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Weights and intercept of a ridge fit (unpenalised intercept) from the centred design's SVD."""
    ym = float(y.mean())
    w = vt.T @ ((s / (s**2 + lam)) * (u.T @ (y - ym)))
    return w, ym


def _ridge(z: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    zm, u, s, vt = _centred_svd(z)
    w, ym = _ridge_weights(u, s, vt, y, lam)
    return w, ym - float(zm @ w)


def _folds(texts: Sequence[str], folds: int, seed: int) -> np.ndarray | None:
    """Fold of each row, grouped by text; None with fewer than 4 distinct texts (nothing to hold out)."""
    distinct = sorted(set(texts))
    if len(distinct) < 4:
        return None
    k = min(folds, len(distinct))
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of = {distinct[i]: j % k for j, i in enumerate(order)}
    return np.array([fold_of[t] for t in texts])


def _cross_validate(z: np.ndarray, y: np.ndarray, fold: np.ndarray, ridges: Sequence[float], clip) -> dict[float, float | None]:
    """Pooled out-of-fold skill of each penalty."""
    oof = {lam: np.zeros(len(y)) for lam in ridges}
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        zm, u, s, vt = _centred_svd(z[train])
        for lam in ridges:
            w, ym = _ridge_weights(u, s, vt, y[train], lam)
            oof[lam][test] = (z[test] - zm) @ w + ym
    return {lam: skill_score(np.clip(p, *clip) if clip else p, y) for lam, p in oof.items()}


def _as_source(texts: Sequence[str], features: FeatureSource | Mapping[str, np.ndarray]) -> tuple[Any, list[str]]:
    if isinstance(features, Mapping):
        return None, list(features)
    return features, features.names()


def fit_reward_model(
    texts: Sequence[str],
    scores: Sequence[float],
    features: FeatureSource | Mapping[str, np.ndarray],
    *,
    raters: Sequence[str] | None = None,
    ensemble: int = 5,
    ridges: Sequence[float] = RIDGES,
    folds: int = FOLDS,
    seed: int = 0,
) -> RewardModel:
    """Fit the reward model to ``scores`` (one per row of ``texts``, by ``raters``: one id each, default one
    rater), choosing the feature set and penalty by held-out skill. ValueError with fewer than 2 ratings."""
    y = np.asarray(scores, dtype=float)
    if len(y) < 2:
        raise ValueError(f"a reward model needs at least 2 expert ratings, got {len(y)}")
    if len(texts) != len(y) or (raters is not None and len(raters) != len(y)):
        raise ValueError(f"{len(texts)} texts, {len(y)} scores and {len(raters or texts)} raters: one of each per rating")
    rater_of = list(raters) if raters is not None else ["rater"] * len(y)
    names = sorted(set(rater_of))
    onehot = np.zeros((len(y), len(names)))
    onehot[np.arange(len(y)), [names.index(r) for r in rater_of]] = 1.0
    source, offered = _as_source(texts, features)
    if not offered:
        raise ValueError("no feature set offered")
    matrices = {n: (np.asarray(features[n], dtype=float) if source is None else source.matrix(n, list(texts))) for n in offered}  # type: ignore[index]
    clip = (0.0, 1.0) if y.min() >= 0.0 and y.max() <= 1.0 else None
    fold = _folds(texts, folds, seed)
    cv: dict[str, dict[str, float | None]] = {}
    best: tuple[float, str, float] | None = None
    for n in offered:
        if fold is None:
            cv[n] = {"skill": None, "ridge": float(ridges[0])}
            continue
        table = _cross_validate(np.concatenate([matrices[n], onehot], axis=1), y, fold, ridges, clip)
        lam, skill = max(table.items(), key=lambda kv: (kv[1] if kv[1] is not None else -np.inf))
        cv[n] = {"skill": None if skill is None else round(skill, 6), "ridge": float(lam)}
        if skill is not None and (best is None or skill > best[0]):
            best = (skill, n, float(lam))
    chosen, lam = (best[1], best[2]) if best else (offered[0], float(ridges[0]))
    z = np.concatenate([matrices[chosen], onehot], axis=1)
    zm, u, s, vt = _centred_svd(z)
    w_full, ym = _ridge_weights(u, s, vt, y, lam)
    residual = y - ((z - zm) @ w_full + ym)
    rng = np.random.default_rng(seed)
    weights, intercepts = [], []
    for _ in range(ensemble):
        take = rng.integers(0, len(y), len(y))
        w, b = _ridge(z[take], y[take], lam)
        weights.append(w)
        intercepts.append(b)
    model = RewardModel(
        feature_set=chosen, raters=names, weights=np.stack(weights), intercepts=np.array(intercepts),
        basis=vt, singular=s, centre=zm, ridge=lam, noise=float(max(residual.var(), 1e-4)),
        rater_mix=onehot.mean(axis=0), trained_on=len(y), bounds=clip, cv=cv, source=source,
    )
    digest = hashlib.sha256(f"{chosen}/{lam!r}/".encode())
    for part in (model.weights, model.intercepts, model.rater_mix):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update(",".join(names).encode())
    model.digest = digest.hexdigest()
    return model


def fit(
    examples: list[Example], *, members: int = 5, ridge: float | Sequence[float] = 1.0, seed: int = 0,
    source: FeatureSource | None = None,
) -> RewardModel:
    """``fit_reward_model`` over ``Example`` ratings (``source`` default: the ``hashed`` set alone)."""
    if len(examples) < 2:
        raise ValueError(f"a reward model needs at least 2 expert ratings, got {len(examples)}")
    ridges = (ridge,) if isinstance(ridge, (int, float)) else tuple(ridge)
    return fit_reward_model(
        [e.response for e in examples], [e.reward for e in examples], source or TextFeatures(),
        raters=[e.rater for e in examples], ensemble=members, ridges=ridges, seed=seed,
    )
