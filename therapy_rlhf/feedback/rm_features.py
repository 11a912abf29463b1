"""The reward model's feature sets: what a response looks like to it (numpy only).

Three sets, each a matrix with one row per response text:

* ``hashed`` -- signed feature hashing of the response's words, word bigrams
  and character trigrams of the raw text (every character, so form --
  punctuation, stray symbols, broken words -- shows as well as word choice),
  plus length and repetition statistics, each block scaled to unit norm.
  Always available: it needs nothing but the text.
* ``tokens`` -- a bag of the *policy tokenizer's* ids (hashed into
  ``TOKEN_DIM`` signed buckets, unit norm, plus the log length): what the
  policy itself emits, so sub-word pieces and control tokens count. The
  tokenizer lives in the jobs floor (transformers), so it is passed in: the
  token ids, or a callable ``text -> ids``.
* ``embedding`` -- sentence embeddings of a trained encoder (the bundled
  all-MiniLM-L6-v2 in the jobs: ``jobs/encoder.py``, cached per text), passed
  in as a callable ``texts -> (n, dim) matrix``.

All of them depend on the text alone, so a rating from round 1 means the same
thing to the model in round 50 (a policy's hidden states would move as its
adapter trains). Which set a run uses is chosen by held-out skill
(``reward_model.fit_reward_model``), not by hand.
"""

from __future__ import annotations

import re
import zlib
from typing import Callable, Protocol, Sequence

import numpy as np

HASHED, TOKENS, EMBEDDING = "hashed", "tokens", "embedding"
FEATURE_SETS = (HASHED, TOKENS, EMBEDDING)

HASH_DIM = 512  # per block (words and word pairs; character trigrams)
TOKEN_DIM = 1024  # buckets of the policy tokenizer's ids
_TOKEN = re.compile(r"[a-z']+|[?!.,]")
STAT_NAMES = ("words/16", "distinct share", "has ?", "has !", "empty")
FEATURE_DIM = 2 * HASH_DIM + len(STAT_NAMES)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _hash_into(vec: np.ndarray, items: list[str]) -> None:
    for item in items:
        h = zlib.crc32(item.encode("utf-8"))
        vec[h % len(vec)] += 1.0 if (h >> 31) & 1 else -1.0


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def features(response: str) -> np.ndarray:
    """The ``hashed`` feature vector of one response (length ``FEATURE_DIM``): words, characters, statistics."""
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


def feature_matrix(responses: Sequence[str]) -> np.ndarray:
    """The ``hashed`` features of many responses, one row each."""
    return np.stack([features(r) for r in responses]) if len(responses) else np.zeros((0, FEATURE_DIM))


def token_bag(ids: Sequence[int]) -> np.ndarray:
    """One response's policy token ids as a signed, hashed bag (unit norm) plus log(1 + length)/5."""
    vec = np.zeros(TOKEN_DIM)
    for i in ids:
        # A multiplicative hash spreads neighbouring ids (a vocabulary's related pieces) over the buckets.
        h = (int(i) * 2654435761) & 0xFFFFFFFF
        vec[h % TOKEN_DIM] += 1.0 if (h >> 31) & 1 else -1.0
    return np.concatenate([_unit(vec), [np.log1p(len(ids)) / 5.0]])


def token_matrix(token_ids: Sequence[Sequence[int]]) -> np.ndarray:
    return np.stack([token_bag(ids) for ids in token_ids]) if len(token_ids) else np.zeros((0, TOKEN_DIM + 1))


class FeatureSource(Protocol):
    """What the reward model reads features from: the sets it offers, and a set's matrix for some texts."""

    def names(self) -> list[str]: ...

    def matrix(self, name: str, texts: Sequence[str]) -> np.ndarray: ...


class TextFeatures:
    """A ``FeatureSource`` over response texts: ``hashed`` always; ``tokens`` with a tokenizer
    (``text -> ids``); ``embedding`` with an encoder (``texts -> (n, dim)``). ``only`` restricts the sets
    offered (a run that pins one)."""

    def __init__(
        self,
        tokenize: Callable[[str], Sequence[int]] | None = None,
        embed: Callable[[Sequence[str]], np.ndarray] | None = None,
        only: Sequence[str] | None = None,
    ):
        self._tokenize, self._embed = tokenize, embed
        offered = [HASHED] + ([TOKENS] if tokenize else []) + ([EMBEDDING] if embed else [])
        self._names = [n for n in offered if only is None or n in only]
        if not self._names:
            raise ValueError(f"no feature set left: asked for {list(only or [])}, available {offered}")

    def names(self) -> list[str]:
        return list(self._names)

    def matrix(self, name: str, texts: Sequence[str]) -> np.ndarray:
        if name not in self._names:
            raise ValueError(f"feature set {name!r} is not offered here (offered: {self._names})")
        if name == HASHED:
            return feature_matrix(texts)
        if name == TOKENS:
            return token_matrix([self._tokenize(t) for t in texts])  # type: ignore[misc]
        out = np.asarray(self._embed(list(texts)), dtype=float)  # type: ignore[misc]
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise ValueError(f"the encoder returned shape {out.shape} for {len(texts)} texts")
        return out


class MatrixFeatures:
    """A ``FeatureSource`` over precomputed matrices (``name -> (n, dim)``, rows in the order of ``texts``):
    for benchmarks that compute every set once for a fixed pool."""

    def __init__(self, texts: Sequence[str], matrices: dict[str, np.ndarray]):
        self._row = {t: i for i, t in enumerate(texts)}
        self._m = {k: np.asarray(v, dtype=float) for k, v in matrices.items()}
        for k, v in self._m.items():
            if v.shape[0] != len(texts):
                raise ValueError(f"feature set {k!r} has {v.shape[0]} rows for {len(texts)} texts")

    def names(self) -> list[str]:
        return list(self._m)

    def matrix(self, name: str, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self._row]
        if missing:
            raise ValueError(f"{len(missing)} texts have no precomputed features (first: {missing[0][:60]!r})")
        return self._m[name][[self._row[t] for t in texts]]
