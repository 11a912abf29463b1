"""A reward model fitted to a run's gated expert ratings: features, an ensemble, per-rater offsets.

Cheap enough to refit from scratch every round on one CPU core (numpy only, no
torch), and deterministic: the same ratings and seed give the same model, bit
for bit, so a retried job selects the same responses.

* **Features** (``features``): signed feature hashing of the response's words,
  word bigrams and character trigrams of the raw text (every character, so
  form -- punctuation, stray symbols, broken words -- is visible as well as
  word choice), plus length and repetition
  statistics, each block scaled to unit norm. They depend on the text alone,
  so a rating from round 1 means the same thing to the model in round 50
  (a policy's hidden states would move as its adapter trains). Why not the
  BERTScore MiniLM: see docs/active-learning.md.
* **Per-rater offsets**: every rater has a column of its own, shrunk by the
  same ridge penalty, so a rater who scores everything 0.2 lower moves their
  offset rather than the text weights. Predictions are for the panel's
  average rater (offsets weighted by how many ratings each gave).
* **Ensemble and uncertainty**: ``members`` ridge regressions on bootstrap
  resamples of the ratings. The uncertainty of a prediction combines the
  members' spread with the Bayesian-ridge predictive term
  ``s^2 x^T (X^T X + lambda I)^-1 x``, which stays large for text unlike any
  rated so far (bootstrap members alone all give a never-seen feature weight 0
  and so agree, confidently, about text they know nothing of).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field

import numpy as np

HASH_DIM = 512  # per block (words and word pairs; character trigrams)
_TOKEN = re.compile(r"[a-z']+|[?!.,]")
STAT_NAMES = ("words/16", "distinct share", "has ?", "has !", "empty")
FEATURE_DIM = 2 * HASH_DIM + len(STAT_NAMES)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _hash_into(vec: np.ndarray, items: list[str]) -> None:
    for item in items:
        h = zlib.crc32(item.encode("utf-8"))
        vec[h % HASH_DIM] += 1.0 if (h >> 31) & 1 else -1.0


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def features(response: str) -> np.ndarray:
    """The feature vector of one response (length ``FEATURE_DIM``): words, then characters, then statistics."""
    toks = _tokens(response)
    words = [t for t in toks if t[0].isalpha() or t[0] == "'"]
    lexical = np.zeros(HASH_DIM)
    _hash_into(lexical, ["w:" + t for t in toks])
    _hash_into(lexical, ["b:" + a + " " + b for a, b in zip(toks, toks[1:])])
    form = np.zeros(HASH_DIM)
    text = " " + " ".join(response.lower().split()) + " "  # every character, so form shows as well as words
    _hash_into(form, ["c:" + text[i : i + 3] for i in range(max(0, len(text) - 2))])
    stats = np.array(
        [
            min(len(words), 64) / 16.0,
            len(set(words)) / len(words) if words else 0.0,
            float("?" in response),
            float("!" in response),
            float(not response.strip()),
        ]
    )
    return np.concatenate([_unit(lexical), _unit(form), stats])


def feature_matrix(responses: list[str]) -> np.ndarray:
    return np.stack([features(r) for r in responses]) if responses else np.zeros((0, FEATURE_DIM))


@dataclass(frozen=True)
class Example:
    """One expert rating: the response text, who rated it and the reward their rating gives."""

    response: str
    rater: str
    reward: float


@dataclass
class RewardModel:
    raters: list[str]
    weights: np.ndarray  # (members, FEATURE_DIM + raters)
    intercepts: np.ndarray  # (members,)
    precision_inv: np.ndarray  # (dim, dim): (Zc^T Zc + lambda I)^-1 of the full-data fit (Zc centred)
    centre: np.ndarray  # (dim,): the training design's column means
    noise: float  # residual variance of the full-data fit
    rater_mix: np.ndarray  # (raters,): share of the ratings each rater gave
    trained_on: int
    digest: str = field(default="")

    def _design(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, np.broadcast_to(self.rater_mix, (x.shape[0], len(self.raters)))], axis=1)

    def predict(self, responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(predicted reward for the panel's average rater, uncertainty), one each per response."""
        if not responses:
            return np.zeros(0), np.zeros(0)
        z = self._design(feature_matrix(responses))
        per_member = z @ self.weights.T + self.intercepts  # (n, members)
        mean = per_member.mean(axis=1)
        spread_sq = per_member.var(axis=1)
        zc = z - self.centre
        epistemic = self.noise * np.einsum("ij,jk,ik->i", zc, self.precision_inv, zc)
        return np.clip(mean, 0.0, 1.0), np.sqrt(spread_sq + np.maximum(epistemic, 0.0))

    def rater_offsets(self) -> dict[str, float]:
        """Each rater's learned offset from the panel average (full-data fit of the first member's design)."""
        cols = self.weights[:, FEATURE_DIM:].mean(axis=0)
        centre = float(cols @ self.rater_mix)
        return {r: round(float(c) - centre, 4) for r, c in zip(self.raters, cols)}


def _ridge(z: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Weights, intercept and (Z^T Z + lambda I)^-1 of a ridge fit with an unpenalised intercept."""
    zm, ym = z.mean(axis=0), float(y.mean())
    zc = z - zm
    precision = zc.T @ zc + lam * np.eye(z.shape[1])
    inv = np.linalg.inv(precision)
    w = inv @ (zc.T @ (y - ym))
    return w, ym - float(zm @ w), inv


def fit(examples: list[Example], *, members: int = 5, ridge: float = 1.0, seed: int = 0) -> RewardModel:
    """Fit the ensemble to ``examples`` (at least two; ValueError otherwise)."""
    if len(examples) < 2:
        raise ValueError(f"a reward model needs at least 2 expert ratings, got {len(examples)}")
    raters = sorted({e.rater for e in examples})
    index = {r: i for i, r in enumerate(raters)}
    x = feature_matrix([e.response for e in examples])
    onehot = np.zeros((len(examples), len(raters)))
    onehot[np.arange(len(examples)), [index[e.rater] for e in examples]] = 1.0
    z = np.concatenate([x, onehot], axis=1)
    y = np.array([e.reward for e in examples], dtype=float)
    w_full, b_full, inv = _ridge(z, y, ridge)
    residual = y - (z @ w_full + b_full)
    noise = float(max(residual.var(), 1e-4))
    rng = np.random.default_rng(seed)
    weights, intercepts = [], []
    for _ in range(members):
        take = rng.integers(0, len(examples), len(examples))
        w, b, _ = _ridge(z[take], y[take], ridge)
        weights.append(w)
        intercepts.append(b)
    model = RewardModel(
        raters=raters,
        weights=np.stack(weights),
        intercepts=np.array(intercepts),
        precision_inv=inv,
        centre=z.mean(axis=0),
        noise=noise,
        rater_mix=onehot.mean(axis=0),
        trained_on=len(examples),
    )
    digest = hashlib.sha256()
    for part in (model.weights, model.intercepts, model.rater_mix):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update(",".join(raters).encode())
    model.digest = digest.hexdigest()
    return model
