"""Three SIMULATED experts of different kinds for the expert-time benchmarks (issue 21): never a clinician.

Each scores a response text in 0..1 by a fixed, written-down rule, so a benchmark knows the true
reward of every response and can ask how fast a reward model learns a rule of that kind:

* ``word``: the project's simulated rater's rule without its jitter (``feedback/simrater.py``): the
  mean of the empathy-word share (saturating at 25 %) and the guidance-word share (saturating at 15 %).
  A word list: the kind of rule hashed word features learn fastest.
* ``form``: a rule about shape, not words: 0.3 x length (words/25, capped at 1) + 0.3 x asks a question
  + 0.2 x ends on a finished sentence + 0.2 x plain prose (no line breaks, list markers, quotes of the
  prompt, markup or special tokens).
* ``semantic``: how close the response is in meaning to what counsellors said: the mean cosine
  similarity of its all-MiniLM-L6-v2 embedding to its ``TOP_K`` nearest reference responses (supporter
  replies of ESConv's *training* split, FailedESConv.json split by conversation as the sft job splits
  it), mapped linearly from ``SEMANTIC_RANGE`` to 0..1. The reward model's ``embedding`` features come
  from the same encoder, so this rule is within reach of them by construction (a nonlinear function of
  the embedding): it shows what embeddings can learn, not that they would match a psychologist.

``noisy(scores, ids, expert, sd)``: the scores as an expert would give them, with seeded Gaussian noise
per (expert, response); benchmarks train on those and measure against the noise-free rule.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from therapy_rlhf.feedback import simrater

EXPERTS = ("word", "form", "semantic")
FORM_LENGTH_WORDS = 25
TOP_K = 5
SEMANTIC_RANGE = (0.25, 0.6)  # mean top-5 cosine that maps to 0 and to 1
REFERENCE_LIMIT = 600  # reference replies (spread over the training conversations)
REFERENCE_MIN_WORDS = 6
_FINISHED = re.compile(r"[.?!][\"')\]]*$")
_NOT_PLAIN = re.compile(r"\n|^\s*(?:[-*•]|\d+[.)])\s|<\|?[a-z_]+\|?>|\[/?[A-Z]+\]|[#*]{2,}|\"", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z']+")


def word_rule(text: str) -> float:
    empathy = min(1.0, simrater.lexicon_share(text, simrater.EMPATHY_WORDS) / simrater.EMPATHY_SATURATION)
    guidance = min(1.0, simrater.lexicon_share(text, simrater.GUIDANCE_WORDS) / simrater.GUIDANCE_SATURATION)
    return round((empathy + guidance) / 2, 6)


def form_rule(text: str) -> float:
    stripped = text.strip()
    length = min(1.0, len(_WORD.findall(stripped)) / FORM_LENGTH_WORDS)
    question = float("?" in stripped)
    finished = float(bool(_FINISHED.search(stripped)))
    plain = float(bool(stripped) and not _NOT_PLAIN.search(stripped))
    return round(0.3 * length + 0.3 * question + 0.2 * finished + 0.2 * plain, 6)


def semantic_scores(embeddings: np.ndarray, references: np.ndarray) -> np.ndarray:
    """The semantic rule for unit-length ``embeddings`` (n, d) against unit-length ``references`` (m, d)."""
    sims = embeddings @ references.T
    k = min(TOP_K, references.shape[0])
    top = np.sort(sims, axis=1)[:, -k:].mean(axis=1)
    lo, hi = SEMANTIC_RANGE
    return np.round(np.clip((top - lo) / (hi - lo), 0.0, 1.0), 6)


def reference_replies(path: str, limit: int = REFERENCE_LIMIT, seed: int = 0) -> list[str]:
    """Supporter replies of the training split of an ESConv JSON file (at least ``REFERENCE_MIN_WORDS``
    words), spread over its conversations, at most ``limit``."""
    from therapy_rlhf.contracts.training_spec import DatasetSpec
    from therapy_rlhf.jobs import data

    train = data.load_split(DatasetSpec(path=path), "train").examples
    long_enough = [e for e in train if len(_WORD.findall(e.response)) >= REFERENCE_MIN_WORDS]
    return [e.response for e in data.spread(long_enough, limit, seed)]


def embedder(cache: Path | None = None) -> Callable[[Sequence[str]], np.ndarray]:
    """The bundled MiniLM (``jobs/encoder.py``), cached per text in the model cache (or ``cache``)."""
    from therapy_rlhf.jobs.common import cache_dir
    from therapy_rlhf.jobs.encoder import EmbeddingCache

    return EmbeddingCache(cache or cache_dir() / "embeddings").embed


def score_all(texts: Sequence[str], embeddings: np.ndarray | None, references: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every expert's score of every text ({expert: (n,)}); ``semantic`` only with embeddings and references."""
    out = {"word": np.array([word_rule(t) for t in texts]), "form": np.array([form_rule(t) for t in texts])}
    if embeddings is not None and references is not None:
        out["semantic"] = semantic_scores(embeddings, references)
    return out


def noisy(scores: np.ndarray, ids: Sequence[str], expert: str, sd: float) -> np.ndarray:
    """``scores`` with the expert's own seeded noise per response (clipped to 0..1); sd 0: unchanged."""
    if sd <= 0:
        return np.asarray(scores, dtype=float)
    draws = np.array([
        np.random.default_rng(int.from_bytes(hashlib.sha256(f"{expert}/{i}".encode()).digest()[:8], "big")).normal()
        for i in ids
    ])
    return np.clip(np.asarray(scores, dtype=float) + sd * draws, 0.0, 1.0)
