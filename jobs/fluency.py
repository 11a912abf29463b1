"""How fluent a batch is, measured without the rater: a guard against learning gibberish.

A policy trained on a reward can drift into text that no person would write
(the first real model tried here wrote "Hang claire loria's vies of a vagabid
janibus" by PPO round 3) while a rater, human or simulated, is still asked to
score it. Two measures of each batch, neither of which depends on any rating:

* ``mean_log_likelihood``: the mean per-token log-likelihood (nats) of the
  responses under the frozen base model (the LoRA adapter switched off), at
  temperature 1, given the same rendered prompt. Fluent text the base model
  itself would write scores around -1 to -2; byte noise scores near
  -log(vocabulary size). It falls as the policy moves away from language the
  base model knows, whatever the reward says.
* ``dictionary_share``: the share of the responses' words found in an
  English word list (the ``english-words`` package's web2 + gcide lists, read
  offline), after stripping a possessive or contraction and a plural,
  past-tense, -ing or -ly ending. Invented words ("janibus") lower it.

The generate step writes both to ``rounds/{r}/fluency.json`` before the batch
(``write``); ``observe.py`` reads it for the round awaiting ratings, and the
planner pauses the run (phase Suspended, reason ``FluencyCollapse``) when a
measure is below ``spec.fluency`` 's threshold, before anyone rates the batch.
``status``, the evaluation report and the reward-curve figure show it per round.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from therapy_rlhf.jobs.common import JobError

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
ENDINGS = ("s", "es", "ed", "d", "ing", "ly", "'s")
SCORE_BATCH = 8  # sequences per forward pass when scoring


@functools.lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """The English word list (lower case); JobError naming the package when it is missing."""
    try:
        from english_words import get_english_words_set
    except ImportError:
        raise JobError("the fluency measure needs the english-words package: pip install english-words") from None
    return frozenset(get_english_words_set(["web2", "gcide"], lower=True, alpha=True))


def known(word: str, words: frozenset[str]) -> bool:
    base = word.split("'", 1)[0]  # "don't" -> "don", "patient's" -> "patient", "i'm" -> "i"
    if base in words:
        return True
    return any(base.endswith(e) and base[: -len(e)] in words for e in ENDINGS if len(base) > len(e) + 1)


def dictionary_share(texts: list[str], words: frozenset[str] | None = None) -> float | None:
    """Share of the words in ``texts`` that are in the word list (None when there are no words)."""
    words = vocabulary() if words is None else words
    tokens = [w for t in texts for w in WORD.findall(t.lower().replace("\u2019", "'"))]
    if not tokens:
        return None
    return sum(known(w, words) for w in tokens) / len(tokens)


def response_log_likelihoods(model: Any, pairs: list[tuple[list[int], list[int]]], device: str, pad_id: int) -> list[float]:
    """Mean per-token log-likelihood of each response under ``model`` with its adapter off (the frozen base)."""
    import contextlib

    import torch

    base = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    out: list[float] = []
    with base, torch.no_grad():
        for start in range(0, len(pairs), SCORE_BATCH):
            chunk = pairs[start : start + SCORE_BATCH]
            width = max(len(p) + len(r) for p, r in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (p, r) in enumerate(chunk):  # right padding: positions stay 0..n-1
                ids[i, : len(p) + len(r)] = torch.tensor(p + r)
                mask[i, : len(p) + len(r)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            for i, (p, r) in enumerate(chunk):
                if not r:
                    out.append(math.nan)
                    continue
                # token t is predicted at position t-1
                out.append(float(logp[i, len(p) - 1 : len(p) + len(r) - 1].mean()))
    return out


def measure(model: Any, tokenizer: Any, records: list[Any], device: str) -> dict[str, Any]:
    """The batch's fluency: mean log-likelihood under the base, dictionary share, and per-response values."""
    pairs = [(list(r.prompt_token_ids), list(r.response_token_ids)) for r in records]
    lls = response_log_likelihoods(model, pairs, device, tokenizer.pad_token_id)
    finite = [x for x in lls if math.isfinite(x)]
    share = dictionary_share([r.response for r in records])
    return {
        "mean_log_likelihood": round(sum(finite) / len(finite), 4) if finite else None,
        "dictionary_share": None if share is None else round(share, 4),
        "responses": len(records),
        "per_response": {r.id: round(x, 4) for r, x in zip(records, lls) if math.isfinite(x)},
    }

