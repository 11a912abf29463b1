"""The reward model's ``embedding`` features (jobs/encoder.py): the bundled all-MiniLM-L6-v2, loaded
offline, each response text embedded once and kept in a cache directory."""

from __future__ import annotations

import numpy as np

from therapy_rlhf.contracts.signing import text_sha256
from therapy_rlhf.jobs import encoder


def test_embeddings_are_offline_cached_per_text_and_mean_something(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cache = encoder.EmbeddingCache(tmp_path / "emb")
    texts = [
        "I'm so sorry you're going through this; it sounds exhausting.",
        "That sounds really hard, and I'm sorry you are dealing with it.",
        "The quarterly revenue report is due on Friday.",
        "I'm so sorry you're going through this; it sounds exhausting.",  # the same text again
    ]
    vecs = cache.embed(texts)
    assert vecs.shape == (4, encoder.DIM)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert cache.computed == 3  # the repeated text once
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    # Real trained weights: two consoling sentences are closer to each other than to a business memo.
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3
    files = sorted(p.name for p in (tmp_path / "emb").rglob("*.npy"))
    assert files == sorted(f"{text_sha256(t)}.npy" for t in set(texts))
    # A fresh object (the next round's job) reads them back without embedding anything.
    again = encoder.EmbeddingCache(tmp_path / "emb")
    assert np.array_equal(again.embed(texts[:3]), vecs[:3]) and again.computed == 0
    assert again._model is None  # the encoder was not even loaded
